"""A safetensors header as its writers lay it out, read into columns without a JSON decode.

safetensors (and every writer built on it) writes the header as compact JSON: the
``__metadata__`` object first, then one ``"key":{"dtype":..,"shape":[..],"data_offsets":[..]}``
member per tensor, no whitespace, no escapes in keys. One regular expression takes every
member of that form in one C-level pass; the members must tile the text exactly, so what is
read is exactly what a JSON decoder would read. Anything else (whitespace, escapes, another
field order, the metadata elsewhere) is not this layout, and the caller decodes the JSON.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

__all__ = ["Columns", "compact_columns"]

#: A JSON integer as safetensors writes one: no sign, no leading zero, at most 19 digits
#: (values past int64 are for the caller's range checks to refuse).
_INT = r"(?>0|[1-9][0-9]{0,18}+)"
#: One tensor member with the separator before it (``{`` for the first member, else ``,``).
#: A key holds no quote, backslash or control character (JSON would need an escape). Every
#: repeat is possessive and a shape has at most :data:`_MAX_DIMS` dimensions, so text that
#: almost matches (a shape list that never closes) fails in one pass, without backtracking.
_MAX_DIMS = 255  # the header's own check refuses more than 64
_MEMBER = re.compile(
    r'([{,])"([^"\\\x00-\x1f]*+)":\{"dtype":"([0-9A-Z_a-z]{1,16}+)",'
    rf'"shape":\[((?:{_INT}(?:,{_INT}){{0,{_MAX_DIMS - 1}}}+)?+)\],'
    rf'"data_offsets":\[({_INT}),({_INT})\]\}}'
)
#: The characters of a member besides its five variable fields (its separator is one of them).
_FIXED = len('{"":{"dtype":"","shape":[],"data_offsets":[,]}')
_METADATA = '{"__metadata__":'
_PAIRS = json.JSONDecoder(object_pairs_hook=list)


class Columns(NamedTuple):
    """A header's tensors as parallel lists, in the header's order, and its metadata."""

    keys: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]
    begins: list[int]
    ends: list[int]
    metadata: dict[str, str]


def compact_columns(raw: bytes) -> Columns | None:
    """The tensors of a header in the compact layout, or None when it is laid out otherwise.

    Args:
        raw: the header bytes (writers pad them with trailing spaces).

    Returns:
        The columns, with the types checked (keys and dtype codes strings, shapes tuples of
        non-negative ints, offsets non-negative ints) and no key twice; not their ranges,
        sizes or layout, which are the caller's checks. None for any other layout, any
        duplicate key, metadata that is not an object of strings, or a tensor named
        ``__metadata__``: the JSON decoder then reads the header (and names what is wrong).

    Example:
        >>> member = b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
        >>> columns = compact_columns(b'{"__metadata__":{"format":"pt"},' + member + b"}")
        >>> columns.keys, columns.shapes, columns.ends, columns.metadata
        (['a'], [(2,)], [8], {'format': 'pt'})
        >>> compact_columns(b"{" + member.replace(b":", b": ") + b"}") is None
        True
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    close = len(text.rstrip(" ")) - 1  # the object's closing brace
    if close < 1 or text[close] != "}":
        return None
    metadata: dict[str, str] = {}
    start = 0
    if text.startswith(_METADATA):
        if text[len(_METADATA) : len(_METADATA) + 1] != "{":
            return None
        try:
            pairs, start = _PAIRS.raw_decode(text, len(_METADATA))
        except (RecursionError, ValueError):
            return None
        if not all(type(k) is str and type(v) is str for k, v in pairs):
            return None
        metadata = dict(pairs)
        if len(metadata) != len(pairs) or start > close:
            return None
    members = _MEMBER.findall(text, start, close)
    if not members:
        return None
    n = len(members)
    seps, keys, dtypes, shape_texts, begins, ends = zip(*members, strict=True)
    del members
    # the members tile the text between the metadata and the closing brace: no character of
    # it went unread, so nothing else (whitespace, another member) stands between them
    read = _FIXED * n + sum(map(len, keys)) + sum(map(len, dtypes)) + sum(map(len, shape_texts))
    if read + sum(map(len, begins)) + sum(map(len, ends)) != close - start:
        return None
    # "{" before the first member unless the metadata came first, "," before every other one
    if seps.count(",") != n - (not start) or (not start and seps[0] != "{"):
        return None
    if "__metadata__" in keys or len(set(keys)) != n:
        return None
    tuple_of = {t: tuple(map(int, t.split(","))) if t else () for t in set(shape_texts)}
    return Columns(
        list(keys),
        list(dtypes),
        list(map(tuple_of.__getitem__, shape_texts)),
        list(map(int, begins)),
        list(map(int, ends)),
        metadata,
    )
