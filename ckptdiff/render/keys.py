"""Layer-indexed keys collapsed into one row: ``resblocks.{0-23}.ln_1.weight`` for 24 keys."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, repeat
from operator import add, mul
from typing import Any

__all__ = ["group_keys", "group_keys_one_by_one"]

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
    # one regex pass: text and layer indices alternate
    parts = _INDEX_LINES.split(joined)
    indices = parts[1::2]
    templates = "{}".join(parts[0::2]).split("\n")
    if "{}" in joined or len(templates) != len(keys):  # keys of their own braces or lines
        return group_keys_one_by_one(items, keys, sig)
    counts = list(map(str.count, templates, repeat("{}")))
    if len(indices) == len(keys) and min(counts) == 1:  # one index a key: key n's is indices[n]
        starts: Sequence[int] = range(len(keys))
        rows_of: list[Any] = templates
    else:
        starts = list(accumulate(counts, initial=0))
        # no index or several: a row of its own (its position stands for its template)
        rows_of = [
            t if c == 1 else n for n, (t, c) in enumerate(zip(templates, counts, strict=True))
        ]
    # a group is a (row, signature) pair, coded as one int: row code * signatures + its code
    row_codes, _ = _first_seen_codes(rows_of)
    sig_codes, n_sigs = _first_seen_codes(list(map(sig, items)))
    pair_codes = list(map(add, map(mul, row_codes, repeat(n_sigs)), sig_codes))
    codes, n_groups = _first_seen_codes(pair_codes)
    by_group = sorted(range(len(codes)), key=codes.__getitem__)  # stable: first seen first
    out: list[tuple[str, Any, int]] = []
    at = 0
    for size in map(Counter(codes).__getitem__, range(n_groups)):
        members = by_group[at : at + size]
        at += size
        first = members[0]
        template = rows_of[first]
        if counts[first] != 1:
            out.append((keys[first], items[first], 1))
        elif size == 1:
            out.append((template.replace("{}", str(int(indices[starts[first]]))), items[first], 1))
        else:
            positions = members if type(starts) is range else map(starts.__getitem__, members)
            label = "{" + _ranges(map(int, map(indices.__getitem__, positions))) + "}"
            out.append((template.replace("{}", label), items[first], size))
    return out


def _first_seen_codes(values: list[Any]) -> tuple[list[int], int]:
    """Each value's number among the distinct values in order of first appearance, and how
    many distinct values there are."""
    number = {v: n for n, v in enumerate(dict.fromkeys(values))}
    return list(map(number.__getitem__, values)), len(number)


#: :data:`_INDEX` over lines, as one group (for ``split``): a digit first, so the regex engine
#: skips to digits, then a look back at the character before it (a dot, a line start).
_INDEX_LINES = re.compile(r"([0-9](?<![^.\n][0-9])[0-9]{0,17}(?=\.))")


def group_keys_one_by_one(
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
