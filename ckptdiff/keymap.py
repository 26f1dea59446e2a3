"""Key maps: rules that rename a checkpoint's keys before comparing or loading.

A rule is a small dict, the same in JSON files, in reports and in the Python snippet users
paste into their load code:

- ``{"op": "strip_prefix", "prefix": "module."}``
- ``{"op": "add_prefix", "prefix": "text_branch."}``
- ``{"op": "rename", "pattern": "\\\\.gamma$", "replacement": ".weight"}`` (``re.sub``)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ckptdiff.errors import UsageError
from ckptdiff.types import Finding, Manifest, TensorSpec

__all__ = ["KeyMap", "KEYMAP_SCHEMA"]

KEYMAP_SCHEMA = "ckptdiff.keymap/1"
_OPS = ("strip_prefix", "add_prefix", "rename")


@dataclass(frozen=True)
class _Rule:
    op: str
    prefix: str = ""
    pattern: re.Pattern[str] | None = None
    replacement: str = ""

    def apply(self, key: str) -> str:
        if self.op == "strip_prefix":
            return key[len(self.prefix) :] if key.startswith(self.prefix) else key
        if self.op == "add_prefix":
            return self.prefix + key
        assert self.pattern is not None  # noqa: S101 - constructed only with a pattern
        return self.pattern.sub(self.replacement, key)

    def to_dict(self) -> dict[str, str]:
        if self.op == "rename":
            assert self.pattern is not None  # noqa: S101
            return {"op": "rename", "pattern": self.pattern.pattern, "replacement": self.replacement}
        return {"op": self.op, "prefix": self.prefix}


@dataclass(frozen=True)
class KeyMap:
    """An ordered list of key rules, applied one after the other to every key.

    Example:
        >>> km = KeyMap.from_rules([{"op": "strip_prefix", "prefix": "module."}])
        >>> km.apply("module.fc.weight")
        'fc.weight'
    """

    rules: tuple[_Rule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    @classmethod
    def from_rules(cls, rules: Iterable[Mapping[str, Any]]) -> KeyMap:
        """Build from rule dicts (the JSON form).

        Raises:
            UsageError: an unknown op, a missing field, or a regex that does not compile.
        """
        out = []
        for i, r in enumerate(rules):
            if not isinstance(r, Mapping):
                raise UsageError(f"Key map rule {i + 1} is not an object: {r!r}.")
            op = r.get("op")
            if op not in _OPS:
                raise UsageError(
                    f"Key map rule {i + 1} has op {op!r}; expected one of {', '.join(_OPS)}."
                )
            if op == "rename":
                pattern = r.get("pattern")
                if not isinstance(pattern, str):
                    raise UsageError(f"Key map rule {i + 1} (rename) needs a 'pattern' string.")
                try:
                    compiled = re.compile(pattern)
                except re.error as e:
                    raise UsageError(
                        f"Key map rule {i + 1}: {pattern!r} is not a valid regular expression ({e})."
                    ) from e
                out.append(_Rule("rename", pattern=compiled, replacement=str(r.get("replacement", ""))))
            else:
                prefix = r.get("prefix")
                if not isinstance(prefix, str) or not prefix:
                    raise UsageError(f"Key map rule {i + 1} ({op}) needs a non-empty 'prefix'.")
                out.append(_Rule(op, prefix=prefix))
        return cls(tuple(out))

    @classmethod
    def from_options(
        cls,
        strip_prefix: Sequence[str] = (),
        add_prefix: Sequence[str] = (),
        rename: Sequence[str] = (),
    ) -> KeyMap:
        """Build from CLI options: strips first, then renames (``'REGEX=>REPL'``), then adds.

        Raises:
            UsageError: a rename without ``=>`` or with a bad regex.
        """
        rules: list[dict[str, str]] = [{"op": "strip_prefix", "prefix": p} for p in strip_prefix]
        for text in rename:
            if "=>" not in text:
                raise UsageError(
                    f"--rename {text!r}: expected 'REGEX=>REPLACEMENT', e.g. '\\.gamma$=>.weight'."
                )
            pattern, replacement = text.split("=>", 1)
            rules.append({"op": "rename", "pattern": pattern, "replacement": replacement})
        rules += [{"op": "add_prefix", "prefix": p} for p in add_prefix]
        return cls.from_rules(rules)

    @classmethod
    def from_file(cls, path: str) -> KeyMap:
        """Read a key map JSON file: ``{"schema": "ckptdiff.keymap/1", "rules": [...]}`` or a list.

        Raises:
            UsageError: the file is missing, not JSON, or holds bad rules.
        """
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise UsageError(f"Cannot read key map '{path}': {e.strerror}.") from e
        except ValueError as e:
            raise UsageError(f"Cannot read key map '{path}': not valid JSON ({e}).") from e
        rules = data.get("rules") if isinstance(data, dict) else data
        if not isinstance(rules, list):
            raise UsageError(
                f"Cannot read key map '{path}': expected a list of rules or "
                '{"rules": [...]}.'
            )
        return cls.from_rules(rules)

    def __add__(self, other: KeyMap) -> KeyMap:
        return KeyMap(self.rules + other.rules)

    def apply(self, key: str) -> str:
        """The key after every rule."""
        for rule in self.rules:
            key = rule.apply(key)
        return key

    def to_list(self) -> list[dict[str, str]]:
        """The JSON form of the rules."""
        return [r.to_dict() for r in self.rules]

    def apply_to_manifest(self, manifest: Manifest) -> Manifest:
        """A copy of ``manifest`` with every key mapped.

        Two keys mapped to one name keep the first and add an ``error`` finding
        (``key_map_collision``) naming both.
        """
        if not self.rules:
            return manifest
        tensors: dict[str, TensorSpec] = {}
        collisions: list[str] = []
        origin: dict[str, str] = {}
        for key, spec in manifest.tensors.items():
            new = self.apply(key)
            if new in tensors:
                collisions.append(f"'{origin[new]}' and '{key}' -> '{new}'")
                continue
            origin[new] = key
            tensors[new] = replace(spec, key=new) if new != key else spec
        findings = list(manifest.findings)
        if collisions:
            findings.append(
                Finding(
                    "key_map_collision",
                    f"The key map sends {len(collisions)} pairs of keys to one name: "
                    f"{'; '.join(collisions[:3])}{' ...' if len(collisions) > 3 else ''}.",
                    tuple(collisions),
                    "error",
                )
            )
        aliases = {self.apply(k): self.apply(v) for k, v in manifest.aliases.items()}
        return replace(manifest, tensors=tensors, findings=tuple(findings), aliases=aliases)

    def python_snippet(self) -> str:
        """Python that applies these rules to a ``state_dict`` before ``load_state_dict``."""
        lines = ["import re", "", "def remap(key):"]
        for r in self.rules:
            if r.op == "strip_prefix":
                lines.append(f"    key = key[{len(r.prefix)}:] if key.startswith({r.prefix!r}) else key")
            elif r.op == "add_prefix":
                lines.append(f"    key = {r.prefix!r} + key")
            else:
                assert r.pattern is not None  # noqa: S101
                lines.append(f"    key = re.sub({r.pattern.pattern!r}, {r.replacement!r}, key)")
        lines += [
            "    return key",
            "",
            "state_dict = {remap(k): v for k, v in state_dict.items()}",
            "model.load_state_dict(state_dict)",
        ]
        return "\n".join(lines)
