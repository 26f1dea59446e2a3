"""Renderers: reports and manifests as text tables, markdown and JSON. Strings only; no printing."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from itertools import accumulate, compress, repeat
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Any

from tabulate import tabulate

from ckptdiff.terminal import printable
from ckptdiff.types import (
    MANIFEST_SCHEMA,
    Coverage,
    Finding,
    Manifest,
    Report,
    Suggestion,
    TensorSpec,
)

__all__ = [
    "group_keys",
    "manifest_to_dict",
    "render_manifest",
    "render_report",
    "render_report_table",
    "shape_str",
]

FORMATS = ("table", "json", "markdown")


def shape_str(shape: Sequence[int]) -> str:
    """``[1024, 3, 14, 14]``; a scalar is ``[]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def human(n: float) -> str:
    """``22.7M``, ``1.5B``: parameter counts for people."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


# --- grouping layer-indexed keys ---------------------------------------------------------------

_INDEX = re.compile(r"(?<=\.)[0-9]{1,18}(?=\.)|^[0-9]{1,18}(?=\.)")


def _ranges(values: Iterable[int]) -> str:
    vs = sorted(set(values))
    if vs[-1] - vs[0] == len(vs) - 1:  # one unbroken run (the usual layer range)
        return f"{vs[0]}" if len(vs) == 1 else f"{vs[0]}-{vs[-1]}"
    out: list[str] = []
    start = prev = vs[0]
    for v in vs[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(out)


def group_keys(
    items: Sequence[Any], key: Callable[[Any], str], sig: Callable[[Any], Any]
) -> list[tuple[str, Any, int]]:
    """Collapse keys that differ only in one layer index and share a signature.

    ``visual.transformer.resblocks.{0-23}.ln_1.weight`` stands for 24 keys with one shape.
    Work per key is a few whole-list passes in C (one regex over all keys at once); Python
    runs once per row.

    Returns:
        ``(display_key, first_item, count)`` in order of first appearance.
    """
    keys = list(map(key, items))
    joined = "\n".join(keys)
    templates = _INDEX_LINES.sub("{}", joined).split("\n")
    if "{}" in joined or len(templates) != len(keys):  # keys of their own braces or lines
        return _group_keys_one_by_one(items, keys, sig)
    indices = _INDEX_LINES.findall(joined)
    counts = list(map(str.count, templates, repeat("{}")))
    starts = list(accumulate(counts, initial=0))
    # no index or several: a row of its own (its position stands for its template)
    rows_of: list[Any] = [
        t if c == 1 else n for n, (t, c) in enumerate(zip(templates, counts, strict=True))
    ]
    group_of = list(zip(rows_of, map(sig, items), strict=False))
    ids = {g: n for n, g in enumerate(dict.fromkeys(group_of))}
    codes = list(map(ids.__getitem__, group_of))
    by_group = sorted(range(len(codes)), key=codes.__getitem__)  # stable: first seen first
    out: list[tuple[str, Any, int]] = []
    at = 0
    sizes = map(Counter(codes).__getitem__, range(len(ids)))
    for (template, _), size in zip(ids, sizes, strict=False):
        members = by_group[at : at + size]
        at += size
        first = members[0]
        if counts[first] != 1:
            out.append((keys[first], items[first], 1))
        elif size == 1:
            out.append((template.replace("{}", str(int(indices[starts[first]]))), items[first], 1))
        else:
            positions = map(starts.__getitem__, members)
            label = "{" + _ranges(map(int, map(indices.__getitem__, positions))) + "}"
            out.append((template.replace("{}", label), items[first], size))
    return out


_INDEX_LINES = re.compile(_INDEX.pattern, re.MULTILINE)


def _group_keys_one_by_one(
    items: Sequence[Any], keys: Sequence[str], sig: Callable[[Any], Any]
) -> list[tuple[str, Any, int]]:
    """:func:`group_keys` a key at a time, for keys that hold braces or line breaks."""
    groups: dict[tuple[str, Any], list[tuple[int, Any]]] = {}
    singles: list[tuple[str, Any]] = []
    order: list[tuple[str, Any]] = []
    for k, item in zip(keys, items, strict=False):
        indices = list(_INDEX.finditer(k))
        if len(indices) != 1:
            singles.append((k, item))
            order.append(("single", len(singles) - 1))
            continue
        m = indices[0]
        template = k[: m.start()] + "{}" + k[m.end() :]
        gk = (template, sig(item))
        if gk not in groups:
            groups[gk] = []
            order.append(("group", gk))
        groups[gk].append((int(m.group()), item))
    out: list[tuple[str, Any, int]] = []
    for kind, ref in order:
        if kind == "single":
            k, item = singles[ref]
            out.append((k, item, 1))
            continue
        members = groups[ref]
        template = ref[0]
        if len(members) == 1:
            idx, item = members[0]
            out.append((template.replace("{}", str(idx)), item, 1))
        else:
            label = "{" + _ranges(i for i, _ in members) + "}"
            out.append((template.replace("{}", label), members[0][1], len(members)))
    return out


# --- reports -----------------------------------------------------------------------------------


def _section(title: str, headers: list[str], rows: list[list[Any]], fmt: str) -> str:
    if headers and headers[-1] == "" and rows:
        if any(r[-1] for r in rows):
            headers = headers[:-1] + ["keys"]
        else:
            headers = headers[:-1]
            rows = [r[:-1] for r in rows]
    rows = [[printable(c) if isinstance(c, str) else c for c in r] for r in rows]
    if fmt == "markdown":
        return f"### {title}\n\n" + tabulate(rows, headers, tablefmt="github") + "\n"
    return f"{title}\n" + tabulate(rows, headers, tablefmt="simple") + "\n"


def _count_label(n: int) -> str:
    return "" if n == 1 else str(n)


def _spec_rows(specs: Sequence[TensorSpec], full: bool) -> list[list[Any]]:
    if full:
        return [[s.key, shape_str(s.shape), s.dtype, ""] for s in specs]
    return [
        [k, shape_str(s.shape), s.dtype, _count_label(n)]
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


def _finding_line(f: Finding) -> str:
    return f"[{f.severity}] {f.message}"


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
        parts.append("Findings\n" + "\n".join(bullet + _finding_line(f) for f in shown) + "\n")
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
            _section(
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
        parts.append(_section(title, headers, _coverage_rows(body.coverage, as_is), fmt))
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


def _key_sections(
    report: Report, full: bool, fmt: str, *, key_lists: bool = True
) -> list[str]:
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
                [k, shape_str(m.checkpoint_shape), shape_str(m.target_shape), _count_label(n)]
                for k, m, n in group_keys(
                    report.mismatched,
                    lambda m: m.key,
                    lambda m: (m.checkpoint_shape, m.target_shape),
                )
            ]
        parts.append(
            _section(
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
                _section(
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
            [k, shape_str(d.shape), d.checkpoint_dtype, d.target_dtype, _count_label(n)]
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
            _section(
                f"Dtype changes ({len(report.dtype_changes)}): loading casts them",
                ["key", "shape", "checkpoint", "target", ""],
                rows,
                fmt,
            )
        )
    if report.ignored:
        parts.append(
            _section(
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


# --- manifests ---------------------------------------------------------------------------------


def _numels(specs: Sequence[TensorSpec]) -> list[int]:
    """Every spec's element count, in one C-level pass."""
    return list(map(math.prod, map(attrgetter("shape"), specs)))


def _dtype_totals(
    specs: Sequence[TensorSpec], numels: Sequence[int]
) -> dict[str, tuple[int, int]]:
    """``dtype -> (tensors, parameters)``, dtypes sorted by name; one pass per dtype."""
    dtypes = list(map(attrgetter("dtype"), specs))
    out: dict[str, tuple[int, int]] = {}
    for d in sorted(set(dtypes)):
        mask = list(map(d.__eq__, dtypes))
        out[d] = (sum(mask), sum(compress(numels, mask)))
    return out


def manifest_to_dict(m: Manifest, tensors: Sequence[TensorSpec] | None = None) -> dict[str, Any]:
    """The stable JSON form of a manifest (schema ``ckptdiff.manifest/1``)."""
    specs = list(m.tensors.values()) if tensors is None else list(tensors)
    out = _manifest_envelope(m, specs, _numels(specs))
    out["tensors"] = [dict(s.to_dict(), nbytes=s.nbytes) for s in specs]
    return out


def _manifest_envelope(
    m: Manifest, specs: Sequence[TensorSpec], numels: Sequence[int]
) -> dict[str, Any]:
    """:func:`manifest_to_dict` with ``tensors`` left as None (the caller fills it)."""
    totals = _dtype_totals(specs, numels)
    return {
        "schema": MANIFEST_SCHEMA,
        "source": m.source,
        "format": m.format,
        "files": list(m.files),
        "selected": m.selected,
        "candidates": list(m.candidates),
        "metadata": dict(m.metadata),
        "aliases": dict(m.aliases),
        "tensors": None,
        "totals": {
            "tensors": len(specs),
            "parameters": sum(numels),
            "bytes": sum(filter(None, map(attrgetter("nbytes"), specs))),
            "by_dtype": {d: {"tensors": n, "parameters": p} for d, (n, p) in totals.items()},
        },
        "findings": [f.to_dict() for f in m.findings],
    }


#: One JSON value on one line, by the C encoder.
_ONE_LINE = json.JSONEncoder(separators=(", ", ": ")).encode


#: One tensor's JSON line, as ``_ONE_LINE`` writes ``{"key", "shape", "dtype", "nbytes"}``.
_TENSOR_LINE = '{{"key": {}, "shape": {}, "dtype": {}, "nbytes": {}}}'.format


def _tensor_lines(specs: Sequence[TensorSpec]) -> list[str]:
    """Each tensor as the C encoder writes its ``{"key", "shape", "dtype", "nbytes"}`` object,
    field by field over the whole list (strings by the encoder's own C escaping; numbers and
    lists of numbers in the encoder's form)."""
    keys = map(encode_basestring_ascii, map(attrgetter("key"), specs))
    shapes = map(shape_str, map(attrgetter("shape"), specs))  # "[4, 4]": the encoder's form
    dtypes = map(encode_basestring_ascii, map(attrgetter("dtype"), specs))
    sizes = _ONE_LINE(list(map(attrgetter("nbytes"), specs)))[1:-1].split(", ")
    return list(map(_TENSOR_LINE, keys, shapes, dtypes, sizes))


def _manifest_json(m: Manifest, specs: Sequence[TensorSpec], numels: Sequence[int]) -> str:
    """The manifest's JSON text: indented, one tensor (and one finding) a line.

    Lists of any length are written by the C encoder, an item at a time; only the small
    envelope goes through the indenting (pure Python) encoder.
    """
    envelope = _manifest_envelope(m, specs, numels)
    findings = envelope.pop("findings")
    envelope["findings"] = None
    text = json.dumps(envelope, indent=2)
    tensors = _tensor_lines(specs)
    for name, items in (("tensors", tensors), ("findings", list(map(_ONE_LINE, findings)))):
        block = "[\n    " + ",\n    ".join(items) + "\n  ]" if items else "[]"
        text = text.replace(f'\n  "{name}": null', f'\n  "{name}": {block}', 1)
    return text + "\n"


def _count_with_human(n: int) -> str:
    return f"{n:,} ({human(n)})" if n >= 1000 else str(n)


def _tree_rows(specs: Sequence[TensorSpec], depth: int) -> list[list[Any]]:
    """Every module down to ``depth`` components, each with the totals of everything under it.

    Rows are in tree order; a top-level tensor (``logit_scale``) is a row of its own; depth 0
    is one row for everything.
    """
    from ckptdiff.sorting import natural_key

    rows: dict[str, list[Any]] = {}
    for s in specs:
        parts = s.key.split(".")
        levels = [".".join(parts[:n]) for n in range(1, min(depth, len(parts) - 1) + 1)]
        if depth == 0:
            levels = ["(all)"]
        for name in levels or [s.key]:
            row = rows.setdefault(name, [0, 0, set()])
            row[0] += 1
            row[1] += s.numel
            row[2].add(s.dtype)
    out = []
    for name in sorted(rows, key=natural_key):
        tensors, numel, dtypes = rows[name]
        out.append([name, tensors, _count_with_human(numel), ",".join(sorted(dtypes))])
    return out


def _candidate_sizes(m: Manifest) -> dict[str, str]:
    """``path -> "N tensors, P parameters"`` from the findings that recorded candidate sizes."""
    out = {}
    for f in m.findings:
        sizes = f.data.get("candidate_sizes") if isinstance(f.data, Mapping) else None
        if isinstance(sizes, Mapping):
            for path, s in sizes.items():
                if isinstance(s, Mapping) and "tensors" in s:
                    params = human(s.get("parameters", 0))
                    out[str(path)] = f"{s['tensors']} tensors, {params} parameters"
    return out


#: Above this many rows, tables of plain ASCII strings are laid out here, the same way
#: tabulate lays them out ("simple" and "github"), at a fraction of its per-cell cost.
FAST_TABLE_ROWS = 500


def _table(
    rows: list[list[Any]], headers: list[str], tablefmt: str, colalign: tuple[str, ...]
) -> str:
    """A table with fixed column alignment (rows must not be empty); text from files escaped."""
    if len(rows) > FAST_TABLE_ROWS and tablefmt in ("simple", "github"):
        columns = [_printable_column(list(map(str, c))) for c in zip(*rows, strict=True)]
        if all(_plain_cells(c) for c in columns):
            return _plain_columns(columns, headers, tablefmt, colalign) + "\n"
    rows = [[printable(c) if isinstance(c, str) else c for c in r] for r in rows]
    return (
        tabulate(rows, headers, tablefmt=tablefmt, disable_numparse=True, colalign=colalign) + "\n"
    )


def _printable_column(column: list[str]) -> list[str]:
    """:func:`printable` of every cell; one pass over the whole column when none needs it."""
    whole = "".join(column)
    return column if printable(whole) == whole else list(map(printable, column))


def _plain_cells(column: list[str]) -> bool:
    """ASCII, one line, no surrounding blanks: cells ``_plain_columns`` lays out as tabulate."""
    text = "\0".join(column)
    return text.isascii() and "\n" not in text and column == list(map(str.strip, column))


def _plain_table(
    cells: list[list[str]], headers: list[str], tablefmt: str, colalign: tuple[str, ...]
) -> str:
    """tabulate's "simple"/"github" layout of string cells, without its per-cell type checks."""
    cells = [[c.strip() for c in r] for r in cells]  # as tabulate strips cells
    columns = [list(c) for c in zip(*cells, strict=True)] if cells else [[] for _ in headers]
    return _plain_columns(columns, headers, tablefmt, colalign)


def _plain_columns(
    columns: list[list[str]], headers: list[str], tablefmt: str, colalign: tuple[str, ...]
) -> str:
    """The layout of :func:`_plain_table` from stripped cells, a column at a time."""
    widths = [
        max(len(h) + 2, max(map(len, c), default=0))
        for h, c in zip(headers, columns, strict=True)
    ]
    padded = [
        list(map(str.rjust if a == "right" else str.ljust, c, repeat(w)))
        for c, w, a in zip(columns, widths, colalign, strict=True)
    ]
    head = [
        h.rjust(w) if a == "right" else h.ljust(w)
        for h, w, a in zip(headers, widths, colalign, strict=True)
    ]
    if tablefmt == "github":
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += ["| " + r + " |" for r in map(" | ".join, zip(*padded, strict=False))]
    else:
        out = ["  ".join(head).rstrip(), "  ".join("-" * w for w in widths)]
        out += [r.rstrip() for r in map("  ".join, zip(*padded, strict=False))]
    return "\n".join(out)


def _key_rows(specs: Sequence[TensorSpec], numels: Sequence[int], full: bool) -> list[list[Any]]:
    """Rows of ``inspect``'s key table: every key, or layer-indexed runs collapsed into one.

    A collapsed row (``layers.{0-31}.mlp.up.weight``) stands for keys of one shape and dtype;
    its parameters are those of all of them.
    """
    if full:
        return [
            list(r)
            for r in zip(
                map(attrgetter("key"), specs),
                map(shape_str, map(attrgetter("shape"), specs)),
                map(attrgetter("dtype"), specs),
                repeat(""),
                map("{:,}".format, numels),
            )
        ]
    rows = []
    for label, first, n in group_keys(specs, attrgetter("key"), attrgetter("shape", "dtype")):
        numel = math.prod(first.shape)
        rows.append([label, shape_str(first.shape), first.dtype, _count_label(n), f"{numel * n:,}"])
    return rows


def render_manifest(
    m: Manifest,
    fmt: str = "table",
    *,
    tensors: Sequence[TensorSpec] | None = None,
    depth: int | None = None,
    full: bool = False,
) -> str:
    """Render what ``inspect`` shows: keys, or a module tree at ``depth``, then totals.

    Args:
        m: the manifest.
        fmt: ``table``, ``markdown`` or ``json``.
        tensors: the tensors to show (after ``--filter``); default all.
        depth: summarise by module down to this many components instead of listing keys.
        full: list every key; by default keys that differ only in one layer index and share
            shape and dtype are one row (``layers.{0-31}.ln.weight``), as ``diff`` shows them.
    """
    specs = list(m.tensors.values()) if tensors is None else list(tensors)
    numels = _numels(specs)
    if fmt == "json":
        return _manifest_json(m, specs, numels)
    tablefmt = "github" if fmt == "markdown" else "simple"
    head = f"{m.source} ({m.format}"
    layout = m.metadata.get("layout")
    if isinstance(layout, str) and layout != m.format:
        head += f", layout {layout}"
    if m.selected:
        head += f", state dict at '{m.selected}'"
    total = sum(numels)
    head += f"): {len(specs)} tensors, {human(total)} parameters"
    if len(m.files) > 1:
        head += f", read from {len(m.files)} files"
    parts = [head + "\n"]
    if not specs:
        parts.append("(no tensors)\n")
    elif depth is not None:
        parts.append(
            _table(
                _tree_rows(specs, depth),
                ["module", "tensors", "parameters", "dtypes"],
                tablefmt,
                ("left", "right", "right", "left"),
            )
        )
    else:
        rows = _key_rows(specs, numels, full)
        headers = ["key", "shape", "dtype", "keys", "parameters"]
        align: tuple[str, ...] = ("left", "left", "left", "right", "right")
        if not any(r[3] for r in rows):  # nothing collapsed: no count column
            rows = [r[:3] + r[4:] for r in rows]
            headers = headers[:3] + headers[4:]
            align = align[:3] + align[4:]
        parts.append(_table(rows, headers, tablefmt, align))
        if len(rows) < len(specs):
            parts.append(
                f"{len(specs)} keys in {len(rows)} rows: keys that differ only in one layer "
                "index are one row (--full lists every key).\n"
            )
    totals = _dtype_totals(specs, numels)
    by_dtype: list[list[Any]] = [[d, n, _count_with_human(p)] for d, (n, p) in totals.items()]
    if len(by_dtype) > 1:
        by_dtype.append(["total", len(specs), _count_with_human(total)])
    if by_dtype:
        parts.append(
            _table(
                by_dtype, ["dtype", "tensors", "parameters"], tablefmt, ("left", "right", "right")
            )
        )
    if m.candidates and len(m.candidates) > 1:
        sizes = _candidate_sizes(m)
        listed = [
            f"{c}{' [used]' if c == m.selected else ''} ({sizes[c]})" if c in sizes else c
            for c in m.candidates
        ]
        parts.append("State dicts in this file: " + ", ".join(listed) + " (choose with --select)\n")
    if m.findings:
        parts.append("Findings\n" + "\n".join("  " + _finding_line(f) for f in m.findings) + "\n")
    return "\n".join(parts)
