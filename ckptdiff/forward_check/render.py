"""Render a :class:`~ckptdiff.forward_check.report.ForwardReport` for people (text or
markdown); JSON is :meth:`ForwardReport.to_json`.

Strings only, from the report's fields: the report's ``__str__`` calls :func:`render_text`,
and this module needs the report's types for annotations only (as :mod:`ckptdiff.render.report`
does for :class:`ckptdiff.types.Report`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ckptdiff.terminal import printable
from ckptdiff.wording import shape_str

if TYPE_CHECKING:
    from ckptdiff.forward_check.report import Failure, ForwardReport, Run

__all__ = ["render_forward", "render_text"]

_MODES = {
    "shape-only": "shape-only: the model on meta, fake tensors, no weights",
    "data": "data: the model on CPU with random weights, small real inputs",
}
_WIDTH = 100


def _sizes(runs: Sequence[Run]) -> str:
    sizes = [r.batch_size for r in runs]
    if sizes == [None]:
        return "the batch as given"
    label = "batch size" if len(sizes) == 1 else "batch sizes"
    return f"{label} {', '.join('as given' if s is None else str(s) for s in sizes)}"


def _groups(runs: Sequence[Run]) -> list[list[Run]]:
    groups: dict[tuple[object, ...], list[Run]] = {}
    for r in runs:
        key = (r.status, r.mode, r.failure.signature if r.failure else None, r.note)
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def _wrap(label: str, text: str, sep: str = " ") -> list[str]:
    """``text`` after a label, wrapped at ``sep`` only (shapes stay on one line)."""
    if sep == " ":
        return textwrap.wrap(
            text,
            _WIDTH,
            initial_indent=f"  {label:<7} ",
            subsequent_indent=" " * 10,
            break_on_hyphens=False,
        ) or [f"  {label}"]
    lines, line = [], f"  {label:<7} "
    for i, part in enumerate(text.split(sep)):
        if i and len(line) + len(sep) + len(part) > _WIDTH:
            lines.append(line)
            line = " " * 10 + part
        else:
            line += (sep if i else "") + part
    return [*lines, line]


def _head(label: str, text: str) -> list[str]:
    """A header line (``Mode:``, ``Why:``) wrapped under its own text."""
    return textwrap.wrap(
        text,
        _WIDTH,
        initial_indent=f"{label:<8}",
        subsequent_indent=" " * 8,
        break_on_hyphens=False,
    )


def _failure_lines(f: Failure) -> list[str]:
    where = f"{f.module or '(the model itself)'} ({f.module_type})"
    lines = _wrap("module", where)
    if f.op:
        lines += _wrap("op", f.op)
    if f.operands:
        lines += _wrap("shapes", "  ".join(f"{n} {shape_str(s)}" for n, s, _d in f.operands), "  ")
    lines.append(f"  {'error':<7} {f.error}")
    for i, d in enumerate(f.dims):
        sources = (
            "; ".join(m.describe() for m in d.fields)
            or "no config value or input dim equals it (a value computed at run time)"
        )
        lines += _wrap("dims" if i == 0 else "", f"{d.dim} <- {sources}", "; ")
    return lines


def _group_lines(group: list[Run], shared_note: bool) -> list[str]:
    first = group[0]
    status = {"ok": "ok", "failed": "FAILED", "not run": "NOT RUN"}[first.status]
    lines = [f"{status} at {_sizes(group)} ({first.mode} mode)"]
    if first.note and not shared_note:
        lines += _wrap("why", first.note)
    if first.failure:
        lines += _failure_lines(first.failure)
    return lines


def _summary(report: ForwardReport) -> str:
    parts = []
    for group in _groups(report.runs):
        first = group[0]
        word = {"ok": "ok", "failed": "FAILED", "not run": "NOT RUN"}[first.status]
        parts.append(f"{word} at {_sizes(group)} ({first.mode} mode)")
    text = "forward " + "; ".join(parts)
    if report.ranges:
        n = len(report.ranges)
        text += (
            f"; {n} input{'s' if n > 1 else ''} past the rows "
            f"{'they index' if n > 1 else 'it indexes'}"
        )
    return f"Summary: {text}."


def render_text(report: ForwardReport) -> str:
    """The report for a terminal."""
    modes = sorted({r.mode for r in report.runs}, key=list(_MODES).index)
    lines = [
        f"Forward pass of {report.target}",
        f"Inputs: {', '.join(report.inputs)} (B: dim 0, the batch)",
    ]
    for m in modes:
        lines += _head("Mode:", _MODES[m])
    if report.shrunk:
        lines += _head(
            "Shrunk:",
            ", ".join(f"{k} {a} -> {b}" for k, a, b in report.shrunk)
            + " (structure kept: context lengths, image and patch sizes, heads)",
        )
    notes = {r.note for r in report.runs}
    shared = len(notes) == 1 and None not in notes and len(report.runs) > 1
    if shared:
        lines += _head("Why:", notes.pop() or "")
    lines.append("")
    for group in _groups(report.runs):
        lines += _group_lines(group, shared)
    if report.ranges:
        lines += ["", "Index ranges:"]
        for r in report.ranges:
            lines += _wrap("ERROR", r.describe())
            if r.fields:
                lines += _wrap("", "; ".join(m.describe() for m in r.fields))
    elif report.ranges_checked and not any("not checked" in n for n in report.notes):
        lines += [
            "",
            "Index ranges: ok ("
            + "; ".join(
                f"{i} < {lim} ({k} {m or 'the model'})" for i, k, m, lim in report.ranges_checked
            )
            + ")",
        ]
    if report.notes:
        lines.append("")
        lines += [f"Note: {n}." for n in report.notes]
    lines += ["", _summary(report)]
    # error messages and names come from the model's code and its config files: shown, not run
    return printable("\n".join(lines), keep_newlines=True) + "\n"


def render_forward(report: ForwardReport, fmt: str = "table") -> str:
    """``table`` (text), ``markdown`` (the text in a code block) or ``json``."""
    if fmt == "json":
        return report.to_json() + "\n"
    text = render_text(report)
    return f"```\n{text}```\n" if fmt == "markdown" else text
