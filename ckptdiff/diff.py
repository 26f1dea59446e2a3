"""The differ: two manifests in, a :class:`~ckptdiff.types.Report` out. Pure and torch-free.

"missing" means the target has it and the checkpoint lacks it; "unexpected" the reverse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from ckptdiff.align import PrefixMatch, find_prefix_matches, scoped_prefix_rules
from ckptdiff.keymap import KeyMap
from ckptdiff.sorting import natural_key
from ckptdiff.types import (
    Coverage,
    DtypeChange,
    Finding,
    Manifest,
    Mismatch,
    Report,
    Suggestion,
    TensorSpec,
)

__all__ = ["compare", "diff_manifests", "diff_sources", "natural_key", "module_coverage"]


def _patterns(target: Manifest, name: str) -> list[re.Pattern[str]]:
    raw = target.metadata.get(name) or ()
    return [re.compile(p) for p in raw]


def _tied_supplier(key: str, target: Manifest, present: Mapping[str, TensorSpec]) -> str | None:
    """The checkpoint key that supplies ``key`` through tying or aliasing, if any."""
    alias = target.aliases.get(key)
    if alias is not None and alias in present:
        return alias
    for group in target.tied:
        if key in group:
            for other in group:
                if other != key and other in present:
                    return other
    return None


def compare(checkpoint: Manifest, target: Manifest, *, depth: int = 2) -> Report:
    """Classify every key of both sides; no alignment, no suggestions.

    Args:
        checkpoint: the side that is loaded (A).
        target: the side it is loaded into (B, or a model built on meta).
        depth: coverage rows go down to this many key components.
    """
    ck = dict(checkpoint.tensors)
    # tied tensors the checkpoint stored once count as present under every name
    for dropped, kept in checkpoint.aliases.items():
        if dropped not in ck and kept in ck:
            ck[dropped] = replace(ck[kept], key=dropped)
    ignore_missing = _patterns(target, "ignore_missing")
    ignore_unexpected = _patterns(target, "ignore_unexpected")

    missing: list[TensorSpec] = []
    mismatched: list[Mismatch] = []
    dtype_changes: list[DtypeChange] = []
    matched: list[str] = []
    tied: list[str] = []
    buffers_missing: list[TensorSpec] = []
    ignored: list[TensorSpec] = []
    supplied: set[str] = set()
    for key, want in target.tensors.items():
        have = ck.get(key)
        if have is not None:
            if have.shape != want.shape:
                mismatched.append(Mismatch(key, have.shape, want.shape, have.dtype, want.dtype))
                continue
            matched.append(key)
            supplied.add(key)
            if have.dtype != want.dtype:
                dtype_changes.append(DtypeChange(key, want.shape, have.dtype, want.dtype))
        elif _tied_supplier(key, target, ck) is not None:
            tied.append(key)
            supplied.add(key)
        elif any(p.search(key) for p in ignore_missing):
            ignored.append(want)
        elif key in target.buffers:
            buffers_missing.append(want)
        else:
            missing.append(want)

    unexpected: list[TensorSpec] = []
    for key, have in checkpoint.tensors.items():
        if key in target.tensors:
            continue
        if key in target.non_persistent or any(p.search(key) for p in ignore_unexpected):
            ignored.append(have)
        elif _tied_supplier(key, target, target.tensors) is not None:
            tied.append(key)
        else:
            unexpected.append(have)

    by_key = lambda t: natural_key(t.key)  # noqa: E731
    return Report(
        checkpoint=checkpoint.source,
        target=target.source,
        checkpoint_format=checkpoint.format,
        target_format=target.format,
        missing=tuple(sorted(missing, key=by_key)),
        unexpected=tuple(sorted(unexpected, key=by_key)),
        mismatched=tuple(sorted(mismatched, key=by_key)),
        dtype_changes=tuple(sorted(dtype_changes, key=by_key)),
        matched=tuple(sorted(matched, key=natural_key)),
        ignored=tuple(sorted(ignored, key=by_key)),
        tied=tuple(sorted(set(tied), key=natural_key)),
        buffers_missing=tuple(sorted(buffers_missing, key=by_key)),
        coverage=module_coverage(target.tensors.values(), supplied, depth),
        findings=checkpoint.findings + target.findings,
    )


def module_coverage(
    expected: Iterable[TensorSpec], supplied: set[str], depth: int
) -> tuple[Coverage, ...]:
    """Per-module coverage: the whole model, then every module down to ``depth`` components.

    A module is the first n dotted components of a key (n = 1..depth), and only keys with
    more components than n belong to it (``logit_scale`` is not a module).
    """
    rows: dict[str, list[int]] = {}
    for spec in expected:
        parts = spec.key.split(".")
        hit = spec.key in supplied
        for n in range(0, min(depth, len(parts) - 1) + 1):
            name = ".".join(parts[:n])
            row = rows.setdefault(name, [0, 0, 0, 0])
            row[0] += spec.numel
            row[2] += 1
            if hit:
                row[1] += spec.numel
                row[3] += 1
    rows.setdefault("", [0, 0, 0, 0])
    ordered = sorted(rows, key=lambda m: (m != "", natural_key(m)))
    return tuple(Coverage(m, *rows[m]) for m in ordered)


def _coverage_moves(before: Report, after: Report) -> list[dict[str, Any]]:
    """Top-level modules whose coverage a key map changes: ``{"module", "before", "after"}``."""
    b = {c.module: c.share for c in before.coverage if c.module and "." not in c.module}
    return [
        {"module": c.module, "before": round(b.get(c.module, 0.0), 6), "after": round(c.share, 6)}
        for c in after.coverage
        if c.module and "." not in c.module and round(c.share, 6) != round(b.get(c.module, 0.0), 6)
    ]


def _prefix_findings(
    report: Report, checkpoint: Manifest, target: Manifest, depth: int
) -> tuple[list[Finding], list[Suggestion]]:
    matches: list[PrefixMatch] = find_prefix_matches(
        (t.key for t in report.unexpected), (t.key for t in report.missing)
    )
    findings: list[Finding] = []
    suggestions: list[Suggestion] = []
    before = report.coverage[0].share if report.coverage else 0.0
    for m in matches:
        rules = scoped_prefix_rules(m, checkpoint.tensors)
        km = KeyMap.from_rules(rules)
        after_report = compare(km.apply_to_manifest(checkpoint), target, depth=depth)
        explained = [t for _, t in m.pairs]
        now_present = set(after_report.matched) | set(after_report.tied)
        now_mismatched = {x.key for x in after_report.mismatched}
        loads = sum(1 for t in explained if t in now_present)
        paired = sum(1 for t in explained if t in now_present or t in now_mismatched)
        verified = paired == len(explained)
        after = after_report.coverage[0].share if after_report.coverage else 0.0
        what = (
            f"under the wrapper prefix '{m.strip}'"
            if m.is_wrapper and m.strip
            else f"without the prefix '{m.add}'"
            if m.is_wrapper
            else f"under '{m.strip}' instead of '{m.add}'"
            if m.strip and m.add
            else f"under the extra prefix '{m.strip}'"
            if m.strip
            else f"without the prefix '{m.add}' the target has"
        )
        option = m.options()
        shape_note = (
            ""
            if loads == len(explained)
            else f" ({len(explained) - loads} of them then differ in shape)"
        )
        scope = ""
        if rules != m.rules():
            heads = sorted({u[len(m.strip) :].split(".", 1)[0] for u, _ in m.pairs})
            scope = f" (only for keys under {', '.join(h + '.' for h in heads)}: use the rules)"
        message = (
            f"{len(m.pairs)} checkpoint keys are target keys {what}{shape_note}; "
            f"fix with '{option}'{scope}"
        )
        by_module = _coverage_moves(report, after_report)
        data = {
            "option": option,
            "rules": rules,
            "explains": len(m.pairs),
            "coverage_before": round(before, 6),
            "coverage_after": round(after, 6),
            "coverage_by_module": by_module,
        }
        findings.append(
            Finding(
                "wrapper_prefix" if m.is_wrapper else "key_prefix",
                message,
                tuple(u for u, _ in m.pairs[:5]),
                "warning",
                data,
            )
        )
        suggestions.append(
            Suggestion(
                "key_map",
                option,
                None,
                rules,
                verified,
                message,
                tuple(f"{u} -> {t}" for u, t in m.pairs[:5])
                + ((f"... {len(m.pairs) - 5} more",) if len(m.pairs) > 5 else ()),
                {
                    "coverage_before": round(before, 6),
                    "coverage_after": round(after, 6),
                    "coverage_by_module": by_module,
                },
            )
        )
    return findings, suggestions


def diff_manifests(
    checkpoint: Manifest,
    target: Manifest,
    *,
    key_map: KeyMap | None = None,
    depth: int = 2,
    explain: bool = True,
    suggest: bool = True,
) -> Report:
    """Compare a checkpoint with a target, after an optional key map, and explain the result.

    Args:
        checkpoint: the side that is loaded (A).
        target: the side it is loaded into (B, or a built model).
        key_map: rules applied to the checkpoint's keys first.
        depth: coverage depth.
        explain: also align keys beyond prefixes, name causes and lint
            (:func:`ckptdiff.explain.explain`).
        suggest: infer and verify config fixes when the target was built by
            :func:`ckptdiff.targets.build_target` (this rebuilds it on meta, with torch).

    Returns:
        The :class:`Report`, with findings and verified ``key_map`` suggestions for keys that
        only differ by a prefix; with ``explain``, ``cause`` findings, further key maps, and
        verified ``config`` suggestions.

    Example:
        >>> from ckptdiff.types import Manifest, TensorSpec
        >>> a = Manifest("a", "x", {"module.w": TensorSpec("module.w", (2,), "float32")})
        >>> b = Manifest("b", "x", {"w": TensorSpec("w", (2,), "float32")})
        >>> diff_manifests(a, b).findings[0].data["option"]
        '--strip-prefix module.'
    """
    if key_map:
        checkpoint = key_map.apply_to_manifest(checkpoint)
    report = compare(checkpoint, target, depth=depth)
    findings, suggestions = _prefix_findings(report, checkpoint, target, depth)
    aligned = None
    if explain:
        from ckptdiff.explain import explain as explain_report

        more = explain_report(report, checkpoint, target, depth=depth, suggest=suggest)
        findings += more.findings
        suggestions += more.suggestions
        aligned = more.aligned
    return replace(
        report,
        aligned=aligned,
        findings=report.findings + tuple(findings),
        suggestions=report.suggestions + tuple(suggestions),
        key_map=tuple(key_map.to_list()) if key_map else (),
    )


def diff_sources(
    checkpoint: str | Manifest,
    target: str | Manifest,
    *,
    key_map: KeyMap | None = None,
    target_key_map: KeyMap | None = None,
    select: str | None = None,
    target_select: str | None = None,
    depth: int = 2,
) -> Report:
    """Read two sources (or take manifests) and diff them; see :func:`diff_manifests`."""
    from ckptdiff.readers import read

    a = checkpoint if isinstance(checkpoint, Manifest) else read(checkpoint, select=select)
    b = target if isinstance(target, Manifest) else read(target, select=target_select)
    if target_key_map:
        b = target_key_map.apply_to_manifest(b)
    return diff_manifests(a, b, key_map=key_map, depth=depth)
