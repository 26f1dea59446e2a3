"""Reports (``diff``, ``check``) as text tables, markdown and JSON. Strings only; no printing."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ckptdiff.render.keys import group_keys
from ckptdiff.render.tables import count_label, finding_line, section
from ckptdiff.wording import human, shape_str

if TYPE_CHECKING:
    from ckptdiff.types import Coverage, Finding, Report, Suggestion, TensorSpec

__all__ = ["STATUS_LEGEND", "render_report", "render_report_table"]


def _spec_rows(specs: Sequence[TensorSpec], full: bool) -> list[list[Any]]:
    if full:
        return [[s.key, shape_str(s.shape), s.dtype, ""] for s in specs]
    return [
        [k, shape_str(s.shape), s.dtype, count_label(n)]
        for k, s, n in group_keys(specs, lambda s: s.key, lambda s: (s.shape, s.dtype))
    ]


def _coverage_rows(
    coverage: Sequence[Coverage], as_is: Sequence[Coverage] | None = None
) -> list[list[Any]]:
    """One row per module; with ``as_is`` (the coverage without the key map), its share in a
    last column, marked where the module loads nothing as the files stand."""
    before = {c.module: c for c in as_is or ()}
    rows = []
    for c in coverage:
        mark = "  <-- nothing loads" if c.expected and c.supplied == 0 else ""
        row = [
            c.module or "(whole model)",
            f"{c.supplied_tensors}/{c.expected_tensors}",
            f"{human(c.supplied)}/{human(c.expected)}",
            f"{100 * c.share:.1f}%{mark}",
        ]
        if as_is is not None:
            b = before.get(c.module)
            share = b.share if b is not None else 0.0
            empty = b is None or (b.expected and b.supplied == 0)
            row.append(f"{100 * share:.1f}%" + ("  <-- nothing loads" if empty else ""))
        rows.append(row)
    return rows


#: Findings that say the two sides do not pair by name: the key lists shrink to counts.
_UNPAIRED_FINDINGS = ("naming_convention", "other_architecture")

#: Findings that carry data for machines only.
_HIDDEN_FINDINGS: tuple[str, ...] = ()

#: What each status word in the Suggestions table means (printed under it).
STATUS_LEGEND = {
    "verified": "verified = applied exactly as written (config file, key map, call) and the "
    "whole model compared again:\n  every key it moves matches, nothing that loaded stops",
    "partial": "partial = it helps, but keys it moves still differ (see the findings)",
    "undetermined": "undetermined = the shapes cannot tell this value (other values fit as "
    "well): it makes the model fit; take the real one from the model card",
    "unverified": "unverified = it could not be checked",
}


def _cause_line(f: Finding) -> str:
    return f.message


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _evidence(evidence: Sequence[str]) -> str:
    if not evidence:
        return ""
    extra = len(evidence) - 1
    tail = evidence[-1]
    if tail.startswith("... ") and tail.endswith(" more"):  # "... N more" counts the rest
        extra += int(tail.split()[1]) - 1
    more = f" (+{extra} more)" if extra > 0 else ""
    return _short(evidence[0], 70) + more


def _current(s: Suggestion) -> str:
    if s.current is None:
        return "(unset)" if s.kind == "config" else ""
    return json.dumps(s.current)


_SEVERITY_RANK = {"security": 0, "error": 1, "warning": 2, "info": 3}


def _finding_rank(f: Finding) -> tuple[int, int]:
    """Most important first: security, errors, "another architecture", warnings, info."""
    lead = 0 if f.kind in _UNPAIRED_FINDINGS else 1
    return (_SEVERITY_RANK.get(f.severity, 2) if lead else 1, lead)


def render_report_table(
    report: Report,
    *,
    fmt: str = "table",
    full: bool = False,
    coverage: bool = False,
    emit_via: str | None = None,
) -> str:
    """The report as text (``fmt="table"``) or markdown.

    Args:
        report: what to render.
        fmt: ``table`` or ``markdown``.
        full: list every key instead of collapsing layer-indexed runs.
        coverage: include the per-module coverage table.
        emit_via: the command that has ``--emit-config`` / ``--emit-key-map``, when the
            command rendering this has not (``audit`` names ``ckptdiff check ...``).
    """
    parts: list[str] = []
    head = (
        f"checkpoint: {report.checkpoint} ({report.checkpoint_format})\n"
        f"target:     {report.target} ({report.target_format})\n"
    )
    parts.append(("```\n" + head + "```\n") if fmt == "markdown" else head)
    bullet = "- " if fmt == "markdown" else "  "
    shown = sorted(
        (
            f
            for f in report.findings
            if f.kind not in _HIDDEN_FINDINGS
            and f.kind != "cause"
            and (f.severity != "info" or f.kind != "non_tensor_object")
        ),
        key=_finding_rank,
    )
    if shown:
        parts.append("Findings\n" + "\n".join(bullet + finding_line(f) for f in shown) + "\n")
    causes = [f for f in report.findings if f.kind == "cause"]
    if causes:
        parts.append("Causes\n" + "\n".join(bullet + _cause_line(f) for f in causes) + "\n")
    if report.suggestions:
        rows = [
            [
                s.kind,
                s.field,
                _current(s),
                _short(s.suggested if isinstance(s.suggested, str) else json.dumps(s.suggested)),
                _evidence(s.evidence),
                s.status,
            ]
            for s in report.suggestions
        ]
        parts.append(
            section(
                "Suggestions",
                ["kind", "field / option", "current", "suggested", "evidence", "status"],
                rows,
                fmt,
            )
        )
        statuses = {s.status for s in report.suggestions}
        legend = [STATUS_LEGEND[w] for w in STATUS_LEGEND if w in statuses]
        emit = []
        config_statuses = {s.status for s in report.suggestions if s.kind == "config"}
        if config_statuses and config_statuses <= {"verified", "undetermined"}:
            emit.append("the config with --emit-config FILE")
        if any(s.kind == "key_map" and s.verified for s in report.suggestions):
            emit.append("the key map with --emit-key-map FILE")
        if emit and emit_via:
            emit = [e.replace("--emit-", f"{emit_via} --emit-") for e in emit]
        if emit:
            legend.append("Write " + ", ".join(emit) + ".")
        parts.append("\n".join(legend) + "\n")
    body = report
    if report.aligned is not None and not full:
        body = report.aligned
        moved = len(report.unexpected) - len(body.unexpected)
        parts.append(
            f"Below, with the suggested key map applied ({moved} checkpoint keys renamed); "
            "--full lists the keys as they are.\n"
        )
    unpaired = any(f.kind in _UNPAIRED_FINDINGS for f in report.findings)
    parts += _key_sections(body, full, fmt, key_lists=not unpaired)
    if coverage and body.coverage:
        title = "Coverage by module (tensors and parameters the checkpoint supplies)"
        headers = ["module", "tensors", "parameters", "share"]
        as_is = None
        if body is not report and report.coverage:
            title = (
                "Coverage by module, with the suggested key map applied, and as the files "
                "stand (as-is)"
            )
            headers.append("as-is")
            as_is = report.coverage
        parts.append(section(title, headers, _coverage_rows(body.coverage, as_is), fmt))
    summary = _summary(report)
    if report.aligned is not None:
        summary += "After the key map: " + _summary(report.aligned).removeprefix("Summary: ")
    parts.append(summary)
    return "\n".join(parts)


def _dtype_line(changes: Sequence[Any]) -> str:
    """``Dtype changes: 198 tensors float16 -> float32: cast on load (--full lists them).``"""
    pairs = Counter((d.checkpoint_dtype, d.target_dtype) for d in changes)
    what = ", ".join(
        f"{n} tensor{'' if n == 1 else 's'} {a} -> {b}" for (a, b), n in pairs.most_common()
    )
    return f"Dtype changes: {what}: cast on load (--full lists them).\n"


def _key_sections(report: Report, full: bool, fmt: str, *, key_lists: bool = True) -> list[str]:
    """The key lists of a report: mismatched, missing, unexpected, buffers, dtypes, ignored.

    ``key_lists=False`` (two sides that do not pair by name): missing and unexpected are
    counted in one line, unless ``full``.
    """
    parts: list[str] = []
    if not key_lists and not full and (report.missing or report.unexpected):
        parts.append(
            f"Missing from the checkpoint ({len(report.missing)}) and unexpected in it "
            f"({len(report.unexpected)}): the two sides do not pair by name; --full lists "
            "them.\n"
        )
        report = replace(report, missing=(), unexpected=())
    if report.mismatched:
        if full:
            rows = [
                [m.key, shape_str(m.checkpoint_shape), shape_str(m.target_shape), ""]
                for m in report.mismatched
            ]
        else:
            rows = [
                [k, shape_str(m.checkpoint_shape), shape_str(m.target_shape), count_label(n)]
                for k, m, n in group_keys(
                    report.mismatched,
                    lambda m: m.key,
                    lambda m: (m.checkpoint_shape, m.target_shape),
                )
            ]
        parts.append(
            section(
                f"Mismatched shapes ({len(report.mismatched)})",
                ["key", "checkpoint", "target", ""],
                rows,
                fmt,
            )
        )
    spec_lists = (
        (report.missing, "Missing from the checkpoint ({n}): the target expects them"),
        (report.unexpected, "Unexpected in the checkpoint ({n}): the target has no place for them"),
        (
            report.buffers_missing,
            "Buffers missing from the checkpoint ({n}): kept at their built values",
        ),
    )
    for specs, title in spec_lists:
        if specs:
            parts.append(
                section(
                    title.format(n=len(specs)),
                    ["key", "shape", "dtype", ""],
                    _spec_rows(specs, full),
                    fmt,
                )
            )
    if report.dtype_changes and not full:
        parts.append(_dtype_line(report.dtype_changes))
    elif report.dtype_changes:
        rows = [
            [k, shape_str(d.shape), d.checkpoint_dtype, d.target_dtype, count_label(n)]
            for k, d, n in group_keys(
                report.dtype_changes,
                lambda d: d.key,
                lambda d: (d.shape, d.checkpoint_dtype, d.target_dtype),
            )
        ]
        if full:
            rows = [
                [d.key, shape_str(d.shape), d.checkpoint_dtype, d.target_dtype, ""]
                for d in report.dtype_changes
            ]
        parts.append(
            section(
                f"Dtype changes ({len(report.dtype_changes)}): loading casts them",
                ["key", "shape", "checkpoint", "target", ""],
                rows,
                fmt,
            )
        )
    if report.ignored:
        parts.append(
            section(
                f"Ignored ({len(report.ignored)}): buffers and keys loading skips, harmless",
                ["key", "shape", "dtype", ""],
                _spec_rows(report.ignored, full),
                fmt,
            )
        )
    return parts


def _summary(report: Report) -> str:
    bits = [f"{len(report.matched)} matched"]
    for label, items in (
        ("mismatched", report.mismatched),
        ("missing", report.missing),
        ("unexpected", report.unexpected),
        ("buffers missing", report.buffers_missing),
        ("dtype changes", report.dtype_changes),
        ("tied", report.tied),
        ("ignored", report.ignored),
    ):
        if items:
            bits.append(f"{len(items)} {label}")
    if report.has_security_findings:
        verdict = "SECURITY FINDING: do not load this file with torch.load(weights_only=False)"
    elif report.ok:
        verdict = "compatible"
    else:
        verdict = "NOT compatible"
    scope = ""
    if report.target_format == "meta-model":  # a built model: its forward pass is not looked at
        scope = " State dict only; forward not run: see `ckptdiff forward`."
    return f"Summary: {', '.join(bits)}. {verdict}.{scope}\n"


def render_report(report: Report, fmt: str = "table", **kwargs: Any) -> str:
    """Render a report as ``table``, ``markdown`` or ``json``."""
    if fmt == "json":
        return report.to_json() + "\n"
    return render_report_table(report, fmt=fmt, **kwargs)
