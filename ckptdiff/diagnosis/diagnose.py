"""The diagnosis of a comparison, one way down: align (key maps), explain (causes), then
verify (config values, calls, key maps, each with its status). The use cases
(:mod:`ckptdiff._diff`, :mod:`ckptdiff._check`) call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ckptdiff.diagnosis.alignment import align, alignment_findings, prefix_key_maps
from ckptdiff.diagnosis.causes import causes
from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.conventions import foreign_branches
from ckptdiff.diagnosis.fixes import config_fixes
from ckptdiff.diagnosis.lint import lint
from ckptdiff.diagnosis.verify import verify_key_maps
from ckptdiff.gc_pause import gc_paused
from ckptdiff.keymap import KeyMap
from ckptdiff.naming import CLASS_HEADS, LAYER_INDEX, key_parts
from ckptdiff.types import Finding, Manifest, Report, Suggestion

# --- everything, for diff_manifests ------------------------------------------------------------


@dataclass
class Explanation:
    """What :func:`explain` adds to a report."""

    findings: list[Finding] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    aligned: Report | None = None
    fixed_config: dict[str, Any] | None = None
    fixed_target: Manifest | None = None


def explain(
    report: Report, checkpoint: Manifest, target: Manifest, *, depth: int = 2, suggest: bool = True
) -> Explanation:
    """Align keys, name causes, verify config fixes and lint: the findings and suggestions a
    report gets on top of the prefix rules :func:`diff_manifests` finds.

    Config fixes are inferred only when the target was built by
    :func:`ckptdiff.targets.build_target` (it has a config and can be rebuilt); that step
    imports torch.
    """
    out = Explanation()
    if not report.ok:
        al = align(checkpoint, target, depth=depth)
        if al.foreign is not None:
            out.findings.append(al.foreign)
        f, s = alignment_findings(al)
        out.findings += f
        out.suggestions += s
        aligned = al.after
        if al.key_map:
            out.aligned = replace(aligned, key_map=tuple(al.key_map.to_list()))
        if al.foreign is None:
            branches = foreign_branches(al.checkpoint, target, aligned)
            out.findings += branches
            dots = tuple(b.keys[0] + "." for b in branches)
            out.findings += [
                c
                for c in causes(aligned, al.checkpoint, target)
                if not (dots and c.keys and all(k.startswith(dots) for k in c.keys))
            ]
            heads = new_heads(aligned, al.checkpoint, target)
            out.findings += heads
            explained = {k for h in heads for k in h.keys}
            if dots:
                everywhere = (*al.checkpoint.tensors, *target.tensors)
                explained |= {k for k in everywhere if k.startswith(dots)}
            if suggest and _rebuildable(target) and not aligned.ok:
                fixes = config_fixes(aligned, al.checkpoint, target, ignore=explained, foreign=dots)
                out.findings += fixes.findings
                out.suggestions += fixes.suggestions
                out.fixed_config = fixes.config
                out.fixed_target = fixes.target
    out.findings += lint(checkpoint, target=target)
    return out


def _all_explained(report: Report, explained: set[str]) -> bool:
    """True when every key that keeps the report from loading is already explained."""
    if report.mismatched or report.buffers_missing:
        return False
    return all(t.key in explained for t in report.missing + report.unexpected)


#: Module names of task heads a base checkpoint does not have (a fine-tune starts them fresh).
NEW_HEAD_NAMES = (*CLASS_HEADS, "qa_outputs", "pre_classifier")


def new_heads(report: Report, ck: Manifest, target: Manifest) -> list[Finding]:
    """A task head (``classifier.*``, ``score.*``) the target has and the checkpoint has not:
    the usual start of a fine-tune, not a checkpoint of another model.

    A head is a module named like one (:data:`NEW_HEAD_NAMES`) at the top or one level down,
    all of whose tensors are missing, with no checkpoint key under it.
    """
    missing = {t.key for t in report.missing}
    modules: dict[str, list[str]] = {}
    for key in sorted(missing):
        parts = key_parts(key)
        for i, p in enumerate(parts[:2]):
            if LAYER_INDEX.match(p):
                break
            if p in NEW_HEAD_NAMES and i < len(parts) - 1:
                modules.setdefault(".".join(parts[: i + 1]), []).append(key)
                break
    heads: list[str] = []
    keys: list[str] = []
    for mod, under in modules.items():
        dot = mod + "."
        if any(k.startswith(dot) for k in ck.tensors):
            continue
        if any(k.startswith(dot) and k not in missing for k in target.tensors):
            continue
        heads.append(mod)
        keys += under
    if not heads:
        return []
    shown = ", ".join(f"{h}.*" for h in heads)
    return [
        Finding(
            "new_head",
            f"A new head the checkpoint does not have ({shown}): it starts from its initial "
            "values, as in any fine-tune from this checkpoint.",
            tuple(keys),
            "info",
            {"modules": heads},
        )
    ]


def _rebuildable(target: Manifest) -> bool:
    info = target.metadata.get("target")
    return target.config is not None and isinstance(info, Mapping) and info.get("kind") != "module"


def with_explanation(report: Report, ex: Explanation) -> Report:
    """The report with the explanation's findings and suggestions appended."""
    return replace(
        report,
        findings=report.findings + tuple(ex.findings),
        suggestions=report.suggestions + tuple(ex.suggestions),
    )


_explain = explain  # diff_manifests' own ``explain`` flag shadows the name


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
            (:func:`explain`).
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
    # every pass over 100,000s of keys makes as many small lists and strings, none in a cycle
    with gc_paused():
        return _diff_manifests(checkpoint, target, key_map, depth, explain, suggest)


def _diff_manifests(
    checkpoint: Manifest,
    target: Manifest,
    key_map: KeyMap | None,
    depth: int,
    explain: bool,
    suggest: bool,
) -> Report:
    if key_map:
        checkpoint = key_map.apply_to_manifest(checkpoint)
    report = compare(checkpoint, target, depth=depth)
    findings, suggestions = prefix_key_maps(report, checkpoint, target, depth)
    aligned = None
    fixed = None
    fixed_target = None
    if explain:
        more = _explain(report, checkpoint, target, depth=depth, suggest=suggest)
        findings += more.findings
        suggestions += more.suggestions
        aligned = more.aligned
        fixed = more.fixed_config
        fixed_target = more.fixed_target
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
