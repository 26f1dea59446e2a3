"""Key-map rules, one at a time: parsed from their dicts, and applied to a manifest's keys
and shapes (a transpose, a split or a concatenation changes shapes too). Pure; no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ckptdiff.errors import UsageError
from ckptdiff.types import Finding, Manifest, TensorSpec

__all__ = ["OPS", "SHAPE_OPS", "Rule", "apply_with_shapes", "parse_rule"]

OPS = ("strip_prefix", "add_prefix", "rename", "transpose", "split", "concat")
SHAPE_OPS = ("transpose", "split", "concat")


@dataclass(frozen=True)
class Rule:
    """One key rule, compiled: its op and the fields that op takes."""

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


def parse_rule(i: int, r: Any) -> Rule:
    """Rule ``i`` (0-based) from its dict (the JSON form).

    Raises:
        UsageError: not an object, an unknown op, a missing field, or a regex that does not
            compile.
    """
    if not isinstance(r, Mapping):
        raise UsageError(f"Key map rule {i + 1} is not an object: {r!r}.")
    op = r.get("op")
    if op not in OPS:
        raise UsageError(f"Key map rule {i + 1} has op {op!r}; expected one of {', '.join(OPS)}.")
    if op == "rename":
        compiled = _rule_pattern(i, r)
        return Rule("rename", pattern=compiled, replacement=str(r.get("replacement", "")))
    if op in SHAPE_OPS:
        return _shape_rule(i, r)
    prefix = r.get("prefix")
    if not isinstance(prefix, str) or not prefix:
        raise UsageError(f"Key map rule {i + 1} ({op}) needs a non-empty 'prefix'.")
    return Rule(op, prefix=prefix)


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


def _shape_rule(i: int, r: Mapping[str, Any]) -> Rule:
    """A ``transpose``, ``split`` or ``concat`` rule from its dict."""
    op = str(r["op"])
    compiled = _rule_pattern(i, r)
    dim = r.get("dim", 0)
    if not isinstance(dim, int):
        raise UsageError(f"Key map rule {i + 1} ({op}): 'dim' must be an integer.")
    if op == "transpose":
        return Rule("transpose", pattern=compiled)
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
        return Rule(
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
    return Rule(
        "concat",
        pattern=compiled,
        parts=tuple(str(p) for p in parts),
        replacement=replacement,
        dim=dim,
    )


def _split_sizes(rule: Rule, total: int) -> tuple[int, ...] | None:
    if rule.sizes is not None:
        return rule.sizes if sum(rule.sizes) == total else None
    n = len(rule.into)
    return (total // n,) * n if total % n == 0 else None


def apply_with_shapes(rules: tuple[Rule, ...], manifest: Manifest) -> Manifest:
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
