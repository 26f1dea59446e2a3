"""What ``inspect`` shows of a manifest: keys (layer runs collapsed) or a module tree, totals
by dtype, as a table, markdown or JSON (schema ``ckptdiff.manifest/1``). Strings only."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import compress, repeat
from json.encoder import encode_basestring_ascii
from operator import attrgetter, itemgetter
from typing import Any

from ckptdiff.gc_pause import gc_paused
from ckptdiff.naming import deepest_modules
from ckptdiff.render.keys import group_keys
from ckptdiff.render.tables import count_label, finding_line, table
from ckptdiff.sorting import natural_key
from ckptdiff.types import MANIFEST_SCHEMA, Manifest, TensorSpec
from ckptdiff.wording import human, shape_str

__all__ = ["ONE_LINE", "manifest_to_dict", "render_manifest", "tensor_lines"]


def _numels(specs: Sequence[TensorSpec]) -> list[int]:
    """Every spec's element count, in one C-level pass."""
    return list(map(math.prod, map(attrgetter("shape"), specs)))


def _dtype_totals(specs: Sequence[TensorSpec], numels: Sequence[int]) -> dict[str, tuple[int, int]]:
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
ONE_LINE = json.JSONEncoder(separators=(", ", ": ")).encode


#: One tensor's JSON line, as ``ONE_LINE`` writes ``{"key", "shape", "dtype", "nbytes"}``.
_TENSOR_LINE = '{{"key": {}, "shape": {}, "dtype": {}, "nbytes": {}}}'.format


def tensor_lines(specs: Sequence[TensorSpec]) -> list[str]:
    """Each tensor as the C encoder writes its ``{"key", "shape", "dtype", "nbytes"}`` object,
    field by field over the whole list (strings by the encoder's own C escaping; numbers and
    lists of numbers in the encoder's form)."""
    keys = map(encode_basestring_ascii, map(attrgetter("key"), specs))
    shape_list = list(map(attrgetter("shape"), specs))
    dtype_list = list(map(attrgetter("dtype"), specs))
    # a few distinct shapes and dtypes among many tensors: each written once
    shape_text = {s: shape_str(s) for s in set(shape_list)}  # "[4, 4]": the encoder's form
    dtype_text = {d: encode_basestring_ascii(d) for d in set(dtype_list)}
    shapes = map(shape_text.__getitem__, shape_list)
    dtypes = map(dtype_text.__getitem__, dtype_list)
    sizes = ONE_LINE(list(map(attrgetter("nbytes"), specs)))[1:-1].split(", ")
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
    tensors = tensor_lines(specs)
    for name, items in (("tensors", tensors), ("findings", list(map(ONE_LINE, findings)))):
        block = "[\n    " + ",\n    ".join(items) + "\n  ]" if items else "[]"
        text = text.replace(f'\n  "{name}": null', f'\n  "{name}": {block}', 1)
    return text + "\n"


def _count_with_human(n: int) -> str:
    return f"{n:,} ({human(n)})" if n >= 1000 else str(n)


def _tree_rows(specs: Sequence[TensorSpec], depth: int) -> list[list[Any]]:
    """Every module down to ``depth`` components, each with the totals of everything under it.

    Rows are in tree order; a top-level tensor (``logit_scale``) is a row of its own; depth 0
    is one row for everything. Keys are tallied in whole-list passes by their deepest module;
    Python runs once per distinct (module, size, dtype).
    """
    keys = list(map(attrgetter("key"), specs))
    numels = list(map(math.prod, map(attrgetter("shape"), specs)))
    if depth == 0:
        groups: list[tuple[str, int]] = [("(all)", 0)] * len(keys)
    else:  # a key of one component is a row of its own
        deepest = deepest_modules(keys, depth)
        names = [m if n else k for (m, n), k in zip(deepest, keys, strict=True)]
        groups = list(zip(names, map(itemgetter(1), deepest), strict=True))
    tally: dict[tuple[str, int], list[Any]] = {}
    dtypes = map(attrgetter("dtype"), specs)
    for (group, numel, dtype), n in Counter(zip(groups, numels, dtypes, strict=True)).items():
        row = tally.setdefault(group, [0, 0, set()])
        row[0] += n
        row[1] += numel * n
        row[2].add(dtype)
    rows: dict[str, list[Any]] = {}
    for (name, n_levels), (tensors, numel, dtype_set) in tally.items():
        components = name.split(".")
        for level_name in [".".join(components[:n]) for n in range(1, n_levels + 1)] or [name]:
            row = rows.setdefault(level_name, [0, 0, set()])
            row[0] += tensors
            row[1] += numel
            row[2] |= dtype_set
    out = []
    for name in sorted(rows, key=natural_key):
        tensors, numel, dtype_set = rows[name]
        out.append([name, tensors, _count_with_human(numel), ",".join(sorted(dtype_set))])
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


def _key_rows(specs: Sequence[TensorSpec], numels: Sequence[int], full: bool) -> list[list[Any]]:
    """Rows of ``inspect``'s key table: every key, or layer-indexed runs collapsed into one.

    A collapsed row (``layers.{0-31}.mlp.up.weight``) stands for keys of one shape and dtype;
    its parameters are those of all of them.
    """
    if full:
        shapes = list(map(attrgetter("shape"), specs))
        shape_text = {s: shape_str(s) for s in set(shapes)}  # models repeat a few shapes
        return [
            list(r)
            for r in zip(
                map(attrgetter("key"), specs),
                map(shape_text.__getitem__, shapes),
                map(attrgetter("dtype"), specs),
                repeat(""),
                map("{:,}".format, numels),
            )
        ]
    rows = []
    for label, first, n in group_keys(specs, attrgetter("key"), attrgetter("shape", "dtype")):
        numel = math.prod(first.shape)
        rows.append([label, shape_str(first.shape), first.dtype, count_label(n), f"{numel * n:,}"])
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
    with gc_paused():  # tens of thousands of keys and rows, no cycle among them
        return _render_manifest(m, fmt, tensors, depth, full)


def _render_manifest(
    m: Manifest,
    fmt: str,
    tensors: Sequence[TensorSpec] | None,
    depth: int | None,
    full: bool,
) -> str:
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
            table(
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
        parts.append(table(rows, headers, tablefmt, align))
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
            table(
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
        parts.append("Findings\n" + "\n".join("  " + finding_line(f) for f in m.findings) + "\n")
    return "\n".join(parts)
