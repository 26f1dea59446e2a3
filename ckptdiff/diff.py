"""The differ: two manifests in, a :class:`~ckptdiff.types.Report` out. Pure and torch-free.

"missing" means the target has it and the checkpoint lacks it; "unexpected" the reverse.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ckptdiff.align import PrefixMatch, find_prefix_matches, scoped_prefix_rules
from ckptdiff.diagnosis.compare import compare, module_coverage
from ckptdiff.diagnosis.conventions import naming_convention, other_architecture
from ckptdiff.keymap import KeyMap, rules_to_options
from ckptdiff.sorting import natural_key
from ckptdiff.types import (
    Finding,
    Manifest,
    Report,
    Suggestion,
)

__all__ = ["compare", "diff_manifests", "diff_sources", "natural_key", "module_coverage"]


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
    if other_architecture(checkpoint, target) or naming_convention(checkpoint, target, report):
        return [], []  # the explain step says so, once; no key map is safe
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
        loads = sum(1 for t in explained if t in now_present)
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
        option = rules_to_options(rules) or m.options()
        shape_note = (
            ""
            if loads == len(explained)
            else f" ({len(explained) - loads} of them then differ in shape)"
        )
        scope = ""
        if rules != m.rules():
            heads = sorted({u[len(m.strip) :].split(".", 1)[0] for u, _ in m.pairs})
            scope = f" (only the keys under {', '.join(m.strip + h + '.' for h in heads)})"
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
                "unverified",
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
    fixed = None
    fixed_target = None
    if explain:
        from ckptdiff.explain import explain as explain_report

        more = explain_report(report, checkpoint, target, depth=depth, suggest=suggest)
        findings += more.findings
        suggestions += more.suggestions
        aligned = more.aligned
        fixed = more.fixed_config
        fixed_target = more.fixed_target
    from ckptdiff.diagnosis.verify import verify_key_maps

    # the user applies the key map with the fixed config: both are verified together
    suggestions = verify_key_maps(checkpoint, fixed_target or target, report, suggestions)
    return replace(
        report,
        aligned=aligned,
        fixed_config=fixed,
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
