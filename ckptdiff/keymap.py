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
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ckptdiff.errors import UsageError
from ckptdiff.types import Finding, Manifest, TensorSpec

__all__ = [
    "KEYMAP_SCHEMA",
    "KeyMap",
    "rules_to_options",
]

KEYMAP_SCHEMA = "ckptdiff.keymap/1"
_OPS = ("strip_prefix", "add_prefix", "rename", "transpose", "split", "concat")
_SHAPE_OPS = ("transpose", "split", "concat")


@dataclass(frozen=True)
class _Rule:
    op: str
    prefix: str = ""
    pattern: re.Pattern[str] | None = None
    replacement: str = ""
    into: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    dim: int = 0
    sizes: tuple[int, ...] | None = None

    def apply(self, key: str) -> str:
        if self.op == "strip_prefix":
            return key[len(self.prefix) :] if key.startswith(self.prefix) else key
        if self.op == "add_prefix":
            return self.prefix + key
        if self.op in ("transpose", "split"):
            return key  # the key stays (transpose) or becomes several (split): see the manifest
        assert self.pattern is not None  # noqa: S101 - constructed only with a pattern
        return self.pattern.sub(self.replacement, key)

    def to_dict(self) -> dict[str, Any]:
        pattern = self.pattern.pattern if self.pattern is not None else ""
        if self.op == "rename":
            return {
                "op": "rename",
                "pattern": pattern,
                "replacement": self.replacement,
            }
        if self.op == "transpose":
            return {"op": "transpose", "pattern": pattern}
        if self.op == "split":
            out: dict[str, Any] = {
                "op": "split",
                "pattern": pattern,
                "into": list(self.into),
                "dim": self.dim,
            }
            if self.sizes is not None:
                out["sizes"] = list(self.sizes)
            return out
        if self.op == "concat":
            return {
                "op": "concat",
                "pattern": pattern,
                "parts": list(self.parts),
                "replacement": self.replacement,
                "dim": self.dim,
            }
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
                compiled = _rule_pattern(i, r)
                out.append(
                    _Rule("rename", pattern=compiled, replacement=str(r.get("replacement", "")))
                )
            elif op in _SHAPE_OPS:
                out.append(_shape_rule(i, r))
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
        return any(r.op in _SHAPE_OPS for r in self.rules)

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
            return _apply_with_shapes(self.rules, manifest)
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


def _rule_pattern(i: int, r: Mapping[str, Any]) -> re.Pattern[str]:
    """The compiled ``pattern`` of rule ``i`` (0-based), or a UsageError saying what is wrong."""
    pattern = r.get("pattern")
    if not isinstance(pattern, str):
        raise UsageError(f"Key map rule {i + 1} ({r.get('op')}) needs a 'pattern' string.")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UsageError(
            f"Key map rule {i + 1}: {pattern!r} is not a valid regular expression ({e})."
        ) from e


def _shape_rule(i: int, r: Mapping[str, Any]) -> _Rule:
    """A ``transpose``, ``split`` or ``concat`` rule from its dict."""
    op = str(r["op"])
    compiled = _rule_pattern(i, r)
    dim = r.get("dim", 0)
    if not isinstance(dim, int):
        raise UsageError(f"Key map rule {i + 1} ({op}): 'dim' must be an integer.")
    if op == "transpose":
        return _Rule("transpose", pattern=compiled)
    if op == "split":
        into = r.get("into")
        sizes = r.get("sizes")
        if not isinstance(into, list) or len(into) < 2 or not all(isinstance(x, str) for x in into):
            raise UsageError(
                f"Key map rule {i + 1} (split) needs 'into': a list of 2+ replacements."
            )
        if sizes is not None and (
            not isinstance(sizes, list)
            or len(sizes) != len(into)
            or not all(isinstance(x, int) and x > 0 for x in sizes)
        ):
            raise UsageError(
                f"Key map rule {i + 1} (split): 'sizes' must list one positive size per part."
            )
        return _Rule(
            "split",
            pattern=compiled,
            into=tuple(into),
            dim=dim,
            sizes=tuple(sizes) if sizes is not None else None,
        )
    parts = r.get("parts")
    replacement = r.get("replacement")
    if "part" not in compiled.groupindex:
        raise UsageError(f"Key map rule {i + 1} (concat): the pattern needs a group (?P<part>...).")
    if not isinstance(parts, list) or len(parts) < 2 or not isinstance(replacement, str):
        raise UsageError(
            f"Key map rule {i + 1} (concat) needs 'parts' (2+ names) and a 'replacement'."
        )
    return _Rule(
        "concat",
        pattern=compiled,
        parts=tuple(str(p) for p in parts),
        replacement=replacement,
        dim=dim,
    )


def _split_sizes(rule: _Rule, total: int) -> tuple[int, ...] | None:
    if rule.sizes is not None:
        return rule.sizes if sum(rule.sizes) == total else None
    n = len(rule.into)
    return (total // n,) * n if total % n == 0 else None


def _apply_with_shapes(rules: tuple[_Rule, ...], manifest: Manifest) -> Manifest:
    """Apply rules one after the other to keys and shapes (see :meth:`KeyMap.apply_to_manifest`)."""
    tensors: dict[str, TensorSpec] = dict(manifest.tensors)
    problems: list[str] = []
    for rule in rules:
        out: dict[str, TensorSpec] = {}
        if rule.op == "concat":
            assert rule.pattern is not None  # noqa: S101
            groups: dict[str, dict[str, TensorSpec]] = {}
            for key, spec in tensors.items():
                m = rule.pattern.search(key)
                if m and m.group("part") in rule.parts:
                    groups.setdefault(rule.pattern.sub(rule.replacement, key), {})[
                        m.group("part")
                    ] = spec
            done: set[str] = set()
            for key, spec in tensors.items():
                m = rule.pattern.search(key)
                if not (m and m.group("part") in rule.parts):
                    out.setdefault(key, spec)
                    continue
                new = rule.pattern.sub(rule.replacement, key)
                group = groups[new]
                shapes = [group[p].shape for p in rule.parts if p in group]
                ok = (
                    len(group) == len(rule.parts)
                    and len({len(s) for s in shapes}) == 1
                    and all(
                        s[: rule.dim] + s[rule.dim + 1 :]
                        == shapes[0][: rule.dim] + shapes[0][rule.dim + 1 :]
                        for s in shapes
                    )
                    and rule.dim < len(shapes[0])
                )
                if not ok:
                    out.setdefault(key, spec)
                    continue
                if new in done:
                    continue
                done.add(new)
                first = group[rule.parts[0]]
                shape = list(first.shape)
                shape[rule.dim] = sum(s[rule.dim] for s in shapes)
                out[new] = replace(first, key=new, shape=tuple(shape), nbytes=None)
        else:
            for key, spec in tensors.items():
                if rule.op == "transpose":
                    assert rule.pattern is not None  # noqa: S101
                    if rule.pattern.search(key) and len(spec.shape) == 2:
                        spec = replace(spec, shape=spec.shape[::-1])
                    out[key] = spec
                    continue
                if rule.op == "split":
                    assert rule.pattern is not None  # noqa: S101
                    sizes = None
                    if rule.pattern.search(key) and rule.dim < len(spec.shape):
                        sizes = _split_sizes(rule, spec.shape[rule.dim])
                    if sizes is None:
                        out.setdefault(key, spec)
                        continue
                    for repl, size in zip(rule.into, sizes, strict=True):
                        new = rule.pattern.sub(repl, key)
                        shape = list(spec.shape)
                        shape[rule.dim] = size
                        out[new] = replace(spec, key=new, shape=tuple(shape), nbytes=None)
                    continue
                new = rule.apply(key)
                if new in out:
                    problems.append(f"'{key}' -> '{new}'")
                    continue
                out[new] = replace(spec, key=new) if new != key else spec
        tensors = out
    findings = list(manifest.findings)
    if problems:
        findings.append(
            Finding(
                "key_map_collision",
                f"The key map sends {len(problems)} keys to a name already taken: "
                f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}.",
                tuple(problems),
                "error",
            )
        )
    aliases = {}
    for k, v in manifest.aliases.items():
        for rule in rules:
            k, v = rule.apply(k), rule.apply(v)
        aliases[k] = v
    return replace(manifest, tensors=tensors, findings=tuple(findings), aliases=aliases)


def _state_dict_snippet(rules: tuple[_Rule, ...], *, with_load: bool = True) -> str:
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
