"""Key maps: rules that rename a checkpoint's keys before comparing or loading.

A rule is a small dict, the same in JSON files, in reports and in the Python snippet users
paste into their load code:

- ``{"op": "strip_prefix", "prefix": "module."}``
- ``{"op": "add_prefix", "prefix": "text_branch."}``
- ``{"op": "rename", "pattern": "\\\\.gamma$", "replacement": ".weight"}`` (``re.sub``)

and rules that also change shapes (a fused or transposed layout):

- ``{"op": "transpose", "pattern": "\\\\.c_fc\\\\.weight$"}``: a 2-D tensor becomes ``.t()``;
- ``{"op": "split", "pattern": "in_proj_weight$", "into": ["q_proj.weight", "k_proj.weight",
  "v_proj.weight"], "dim": 0}``: one tensor becomes several (``sizes`` for unequal parts);
- ``{"op": "concat", "pattern": "(?P<part>q|k|v)_proj\\\\.weight$", "parts": ["q", "k", "v"],
  "replacement": "in_proj_weight", "dim": 0}``: the parts, in that order, become one tensor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ckptdiff.errors import UsageError
from ckptdiff.keymap_rules import SHAPE_OPS, Rule, apply_with_shapes, parse_rule
from ckptdiff.types import Finding, Manifest, TensorSpec

__all__ = [
    "KEYMAP_SCHEMA",
    "KeyMap",
    "rules_to_options",
]

KEYMAP_SCHEMA = "ckptdiff.keymap/1"


@dataclass(frozen=True)
class KeyMap:
    """An ordered list of key rules, applied one after the other to every key.

    Example:
        >>> km = KeyMap.from_rules([{"op": "strip_prefix", "prefix": "module."}])
        >>> km.apply("module.fc.weight")
        'fc.weight'
    """

    rules: tuple[Rule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    @classmethod
    def from_rules(cls, rules: Iterable[Mapping[str, Any]]) -> KeyMap:
        """Build from rule dicts (the JSON form).

        Raises:
            UsageError: an unknown op, a missing field, or a regex that does not compile.
        """
        return cls(tuple(parse_rule(i, r) for i, r in enumerate(rules)))

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
    def from_option_string(cls, text: str) -> KeyMap:
        """Parse options as printed and pasted: ``--strip-prefix P``, ``--add-prefix P``,
        ``--rename 'REGEX=>REPL'`` (shell quoting honoured), in the order ``from_options``
        applies them.

        Raises:
            UsageError: an unknown option, or one without its value.

        Example:
            >>> KeyMap.from_option_string("--strip-prefix module.").to_list()
            [{'op': 'strip_prefix', 'prefix': 'module.'}]
        """
        import shlex

        words = shlex.split(text)
        found: dict[str, list[str]] = {"--strip-prefix": [], "--add-prefix": [], "--rename": []}
        for opt, value in zip(words[::2], words[1::2], strict=False):
            if opt not in found:
                raise UsageError(f"Key map options {text!r}: unknown option {opt!r}.")
            found[opt].append(value)
        if len(words) % 2:
            raise UsageError(f"Key map options {text!r}: {words[-1]!r} needs a value.")
        return cls.from_options(found["--strip-prefix"], found["--add-prefix"], found["--rename"])

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
                f"Cannot read key map '{path}': expected a list of rules or {{\"rules\": [...]}}."
            )
        return cls.from_rules(rules)

    @property
    def changes_shapes(self) -> bool:
        """True when a rule transposes, splits or concatenates tensors (not only renames)."""
        return any(r.op in SHAPE_OPS for r in self.rules)

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
        if self.changes_shapes:
            return apply_with_shapes(self.rules, manifest)
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

    def remap_state_dict(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the rules to a real state dict: keys renamed, tensors transposed/split/joined.

        Runs exactly the code :meth:`python_snippet` prints for these rules, so what a report
        suggests and what users paste behave the same.

        Example:
            >>> KeyMap.from_options(strip_prefix=["module."]).remap_state_dict({"module.w": 1})
            {'w': 1}
        """
        namespace: dict[str, Any] = {}
        code = _state_dict_snippet(self.rules, with_load=False)
        exec(compile(code, "<ckptdiff key map>", "exec"), namespace)  # our own generated code
        return dict(namespace["remap"](state_dict))

    def python_snippet(self) -> str:
        """Python that applies these rules to a ``state_dict`` before ``load_state_dict``.

        Key-only rules give a ``remap(key)`` function; rules that transpose, split or
        concatenate tensors give ``remap(state_dict)``, which needs torch.
        """
        if self.changes_shapes:
            return _state_dict_snippet(self.rules)
        lines = ["import re", "", "def remap(key):"]
        for r in self.rules:
            if r.op == "strip_prefix":
                lines.append(
                    f"    key = key[{len(r.prefix)}:] if key.startswith({r.prefix!r}) else key"
                )
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


def _state_dict_snippet(rules: tuple[Rule, ...], *, with_load: bool = True) -> str:
    """``remap(state_dict)``: every rule as a loop over the state dict, in order."""
    lines = [
        "import re",
        "",
        "import torch",
        "",
        "",
        "def remap(state_dict):",
        "    sd = dict(state_dict)",
    ]
    for r in rules:
        pat = r.pattern.pattern if r.pattern is not None else ""
        if r.op == "strip_prefix":
            lines.append(
                f"    sd = {{(k[{len(r.prefix)}:] if k.startswith({r.prefix!r}) else k): v "
                "for k, v in sd.items()}"
            )
        elif r.op == "add_prefix":
            lines.append(f"    sd = {{{r.prefix!r} + k: v for k, v in sd.items()}}")
        elif r.op == "rename":
            lines.append(
                f"    sd = {{re.sub({pat!r}, {r.replacement!r}, k): v for k, v in sd.items()}}"
            )
        elif r.op == "transpose":
            lines.append(
                f"    sd = {{k: (v.t().contiguous() if re.search({pat!r}, k) and v.dim() == 2 "
                "else v) for k, v in sd.items()}"
            )
        elif r.op == "split":
            how = (
                f"torch.split(v, {list(r.sizes)}, dim={r.dim})"
                if r.sizes
                else f"v.chunk({len(r.into)}, dim={r.dim})"
            )
            lines += [
                f"    # split one fused tensor into {len(r.into)} along dim {r.dim}",
                "    out = {}",
                "    for k, v in sd.items():",
                f"        if re.search({pat!r}, k):",
                f"            for repl, part in zip({list(r.into)!r}, {how}):",
                f"                out[re.sub({pat!r}, repl, k)] = part.contiguous()",
                "        else:",
                "            out[k] = v",
                "    sd = out",
            ]
        elif r.op == "concat":
            lines += [
                f"    # concatenate {', '.join(r.parts)} along dim {r.dim}",
                "    out, groups = {}, {}",
                "    for k, v in sd.items():",
                f"        m = re.search({pat!r}, k)",
                f"        if m and m.group('part') in {list(r.parts)!r}:",
                f"            groups.setdefault(re.sub({pat!r}, {r.replacement!r}, k), {{}})"
                "[m.group('part')] = v",
                "        else:",
                "            out[k] = v",
                "    for k, parts in groups.items():",
                f"        out[k] = torch.cat([parts[p] for p in {list(r.parts)!r}], dim={r.dim})",
                "    sd = out",
            ]
    lines.append("    return sd")
    if with_load:
        lines += ["", "", "model.load_state_dict(remap(state_dict))"]
    return "\n".join(lines)


def rules_to_options(rules: Sequence[Mapping[str, Any]], side: str = "") -> str | None:
    """The CLI options that apply exactly ``rules`` (in the order the options apply: strips,
    renames, adds), or None when they cannot be said as options (a transpose, a split, or
    an order the options do not keep): then ``--key-map FILE`` is the way.

    Example:
        >>> rules_to_options([{"op": "rename", "pattern": "^a\\.", "replacement": "b."}])
        "--rename '^a\\.=>b.'"
    """
    import shlex

    order = {"strip_prefix": 0, "rename": 1, "add_prefix": 2}
    ranks = [order.get(str(r.get("op")), -1) for r in rules]
    if not rules or -1 in ranks or ranks != sorted(ranks):
        return None
    parts = []
    for r in rules:
        if r["op"] == "rename":
            text = f"{r['pattern']}=>{r.get('replacement', '')}"
            parts.append(f"--{side}rename {shlex.quote(text)}")
        else:
            option = str(r["op"]).replace("_", "-")
            parts.append(f"--{side}{option} {shlex.quote(str(r['prefix']))}")
    return " ".join(parts)
