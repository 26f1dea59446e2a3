"""The safetensors header, parsed and checked from bytes: shared by the local and hub readers.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the data
region. Nothing here touches the data region or imports torch.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from itertools import chain
from math import prod
from operator import gt, itemgetter, mul, sub
from typing import Any

from ckptdiff.errors import ReadError
from ckptdiff.readers.safetensors_compact import compact_columns
from ckptdiff.sorting import natural_indices, natural_key
from ckptdiff.types import TensorSpec, new_specs

__all__ = [
    "MAX_HEADER_SIZE",
    "SAFETENSORS_DTYPES",
    "header_length",
    "looks_like_safetensors",
    "parse_header",
]

#: The same cap safetensors itself enforces on the JSON header (100 MB).
MAX_HEADER_SIZE = 100_000_000
#: Most dimensions a tensor may have, and the largest size or offset (int64, as torch's).
MAX_NDIM = 64
MAX_DIM = (1 << 63) - 1

#: safetensors dtype -> (torch name, bits per element).
SAFETENSORS_DTYPES: Mapping[str, tuple[str, int]] = {
    "F64": ("float64", 64),
    "F32": ("float32", 32),
    "F16": ("float16", 16),
    "BF16": ("bfloat16", 16),
    "I64": ("int64", 64),
    "I32": ("int32", 32),
    "I16": ("int16", 16),
    "I8": ("int8", 8),
    "U64": ("uint64", 64),
    "U32": ("uint32", 32),
    "U16": ("uint16", 16),
    "U8": ("uint8", 8),
    "BOOL": ("bool", 8),
    "C64": ("complex64", 64),
    "F8_E4M3": ("float8_e4m3fn", 8),
    "F8_E5M2": ("float8_e5m2", 8),
    "F8_E8M0": ("float8_e8m0fnu", 8),
    "F6_E2M3": ("float6_e2m3fn", 6),
    "F6_E3M2": ("float6_e3m2fn", 6),
    "F4": ("float4_e2m1fn", 4),
}


def _short(value: Any) -> str:
    """A bounded repr of a header value, for messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(name: str, context: str, problem: str) -> ReadError:
    return ReadError(f"Cannot read '{name}' ({context}): {problem}")


def looks_like_safetensors(first: bytes, file_size: int | None = None) -> bool:
    """Whether the first bytes of a file look like a safetensors header.

    Args:
        first: at least the first 9 bytes of the file.
        file_size: the whole file's size, when known.

    Returns:
        True when the length prefix is plausible and the JSON starts with ``{``.
    """
    if len(first) < 9:
        return False
    (n,) = struct.unpack("<Q", first[:8])
    if n < 2 or n > MAX_HEADER_SIZE or (file_size is not None and 8 + n > file_size):
        return False
    return first[8:9] == b"{"


def header_length(first8: bytes, file_size: int | None, name: str) -> int:
    """Read and check the 8-byte header length.

    Raises:
        ReadError: the file is too short, or the length is absurd or past the end.
    """
    if len(first8) < 8:
        raise _fail(name, "safetensors header", f"file is {len(first8)} bytes, too short")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER_SIZE:
        raise _fail(
            name, "safetensors header", f"header length {n} exceeds {MAX_HEADER_SIZE} bytes"
        )
    if file_size is not None and 8 + n > file_size:
        raise _fail(
            name,
            "safetensors header",
            f"header length {n} runs past the end of the {file_size}-byte file (truncated?)",
        )
    return n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r}")
    return out


def parse_header(
    raw: bytes, data_size: int | None, name: str, *, ordered: bool = True
) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Decode and validate a safetensors JSON header.

    A header in the layout safetensors writes is read without a JSON decoder
    (:func:`~ckptdiff.readers.safetensors_compact.compact_columns`); any other is decoded,
    checked in whole-list passes, and checked tensor by tensor when something is off (which
    names the first defect). All three accept the same headers and return the same specs.

    Args:
        raw: the N header bytes (without the 8-byte length).
        data_size: bytes in the data region (file size - 8 - N), or None when unknown
            (a remote file read by range); bounds are then checked only among tensors.
        name: the file name, for messages and ``TensorSpec.file``.
        ordered: specs in natural key order; False: in the header's own order (a shard of an
            index, whose manifest takes the index's order).

    Returns:
        ``(tensors, metadata)``: specs in natural key order and the ``__metadata__`` strings.

    Raises:
        ReadError: invalid JSON, an unknown dtype, a shape that disagrees with its byte
            range, overlapping or out-of-range offsets, gaps in the data region.

    Example:
        >>> raw = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
        >>> specs, meta = parse_header(raw, 8, "x")
        >>> specs["a"].shape
        (2,)
    """
    columns = compact_columns(raw)  # the layout safetensors writes: no JSON decode needed
    if columns is not None:
        keys, dtypes, shapes, begins, ends, metadata = columns
        del columns
        specs = _checked_specs(keys, dtypes, shapes, begins, ends, data_size, name, ordered)
        if specs is None:  # the decoded JSON holds the same columns: the checks one by one
            return _parse_one_by_one(raw, data_size, name, ordered)
        return specs, metadata
    try:
        header = json.loads(raw.decode("utf-8"))
    except (RecursionError, UnicodeDecodeError, ValueError):
        header = None
    if isinstance(header, dict):
        parsed = _parse_in_bulk(raw, header, data_size, name, ordered)
        if parsed is not None:
            return parsed
    return _parse_one_by_one(raw, data_size, name, ordered)


def _has_no_duplicates(raw: bytes, header: dict[str, Any]) -> bool:
    """Whether the JSON text ``raw`` decoded to ``header`` without a repeated key.

    A later duplicate silently replaces an earlier one in ``json.loads``, so the members
    written are counted (a string followed by a colon) and compared with the members kept.
    Quotes inside strings are escaped, so the count can only come out high (never low) unless
    whitespace stands between a key and its colon: then the count is made with a regex.
    """
    try:
        kept = len(header) + sum(map(len, header.values()))
    except TypeError:  # a value without a length: not a header the bulk path takes
        return False
    compact = raw.rstrip(b" ")  # writers pad the header with spaces
    if any(space in compact for space in (b" ", b"\t", b"\n", b"\r")) and _SPACED.search(raw):
        written = len(_MEMBER.findall(raw))
    else:
        written = raw.count(b'":')
    return written == kept


_MEMBER = re.compile(rb'"[ \t\n\r]*:')
_SPACED = re.compile(rb'"[ \t\n\r]')
_BITS = {code: bits for code, (_torch, bits) in SAFETENSORS_DTYPES.items()}
_BYTES = {code: bits // 8 for code, bits in _BITS.items() if bits % 8 == 0}
_TORCH_NAMES = {code: torch_name for code, (torch_name, _bits) in SAFETENSORS_DTYPES.items()}


def _parse_in_bulk(
    raw: bytes, header: dict[str, Any], data_size: int | None, name: str, ordered: bool = True
) -> tuple[dict[str, TensorSpec], dict[str, str]] | None:
    """The decoded header checked with whole-list operations, or None when anything is off.

    Every check here is a sufficient condition for :func:`_parse_one_by_one` to accept the
    header too, and to return the same specs; on None the caller runs that one, which names
    the first defect exactly. Keeps Python work per tensor to a few C-level passes.
    """
    metadata = header.get("__metadata__", {})
    if type(metadata) is not dict or not all(
        type(k) is str and type(v) is str for k, v in metadata.items()
    ):
        return None
    if not _has_no_duplicates(raw, header):
        return None
    header.pop("__metadata__", None)
    keys = list(header)
    entries = list(header.values())
    if not keys:
        return None
    try:
        if set(map(type, entries)) != {dict}:
            return None
        dtypes = list(map(itemgetter("dtype"), entries))
        shapes = list(map(itemgetter("shape"), entries))
        offsets = list(map(itemgetter("data_offsets"), entries))
    except KeyError:
        return None
    # the entries' dicts are done with: freed now, not kept beside the specs (1M tensors: GBs)
    header.clear()
    del entries
    if set(map(type, dtypes)) != {str}:
        return None
    if set(map(type, shapes)) != {list} or set(map(type, offsets)) != {list}:
        return None
    if max(map(len, shapes)) > MAX_NDIM or set(map(len, offsets)) != {2}:
        return None
    if set(map(type, chain.from_iterable(shapes))) - {int}:  # bool, float, str, null...
        return None
    bounds = list(chain.from_iterable(offsets))  # [begin, end] pairs, end to end
    del offsets
    if set(map(type, bounds)) != {int}:
        return None
    tuples = list(map(tuple, shapes))
    del shapes
    begins, ends = bounds[0::2], bounds[1::2]
    del bounds
    specs = _checked_specs(keys, dtypes, tuples, begins, ends, data_size, name, ordered)
    return None if specs is None else (specs, dict(metadata))


def _checked_specs(
    keys: list[str],
    dtypes: list[str],
    shapes: list[tuple[int, ...]],
    begins: list[int],
    ends: list[int],
    data_size: int | None,
    name: str,
    ordered: bool,
) -> dict[str, TensorSpec] | None:
    """The range, size and layout checks on a header's columns (of the types vouched for),
    and the specs; None when anything is off (the one-by-one check then names it)."""
    if not set(dtypes) <= _BITS.keys():
        return None
    distinct = set(shapes)  # models repeat a few hundred shapes: each is checked once
    if max(map(len, distinct)) > MAX_NDIM:
        return None
    dims = list(chain.from_iterable(distinct))
    if dims and (min(dims) < 0 or max(dims) > MAX_DIM):
        return None
    if min(begins) < 0 or max(ends) > MAX_DIM or any(map(gt, begins, ends)):
        return None
    numel_of = dict(zip(distinct, map(prod, distinct), strict=True))
    # elements or strides beyond int64: the checks one by one name it
    if max(numel_of.values()) > MAX_DIM or any(
        prod(d or 1 for d in s) > MAX_DIM for s, n in numel_of.items() if not n
    ):
        return None
    numels = list(map(numel_of.__getitem__, shapes))
    if set(dtypes) <= _BYTES.keys():  # whole bytes an element: no rounding
        nbytes = list(map(mul, numels, map(_BYTES.__getitem__, dtypes)))
    else:
        bits = map(_BITS.__getitem__, dtypes)
        nbytes = [(n * b + 7) >> 3 for n, b in zip(numels, bits, strict=False)]
    if nbytes != list(map(sub, ends, begins)):
        return None
    # the data region, tiled: sorted by begin, each tensor ends where the next begins (when
    # the header's order tiles it, begins never decrease: that order is the sorted one)
    if begins[0] != 0 or begins[1:] != ends[:-1]:
        order = sorted(range(len(begins)), key=begins.__getitem__)
        begins = list(map(begins.__getitem__, order))
        ends = list(map(ends.__getitem__, order))
        if begins[0] != 0 or begins[1:] != ends[:-1]:
            return None
    if data_size is not None and ends[-1] != data_size:
        return None
    # the header's own order is the writer's: the specs are made in natural key order
    at = natural_indices(keys) if ordered else range(len(keys))
    specs = new_specs(
        list(map(keys.__getitem__, at)),
        list(map(shapes.__getitem__, at)),
        list(map(_TORCH_NAMES.__getitem__, map(dtypes.__getitem__, at))),
        list(map(nbytes.__getitem__, at)),
        name,
    )
    return specs


def _parse_one_by_one(
    raw: bytes, data_size: int | None, name: str, ordered: bool = True
) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """The header checked tensor by tensor: slower, and names the first defect exactly."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError as e:
        # json's C decoder counts its own depth and stops at the recursion limit
        raise _fail(name, "safetensors header", "header JSON is nested too deeply") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(name, "safetensors header", f"header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise _fail(name, "safetensors header", "header is not a JSON object")

    metadata_raw = header.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
    ):
        raise _fail(name, "__metadata__", "must map strings to strings")

    tensors: dict[str, TensorSpec] = {}
    ranges: list[tuple[int, int, str]] = []
    for key, info in header.items():
        spec, begin, end = _tensor(name, key, info)
        tensors[key] = spec
        ranges.append((begin, end, key))

    _check_layout(name, ranges, data_size)
    # the header's own order is the writer's (by dtype, then name): show keys as people sort them
    if ordered:
        tensors = {k: tensors[k] for k in sorted(tensors, key=natural_key)}
    return tensors, dict(metadata_raw)


def _tensor(name: str, key: str, info: Any) -> tuple[TensorSpec, int, int]:
    ctx = f"tensor '{key}'"
    if not isinstance(info, dict):
        raise _fail(name, ctx, "entry is not an object")
    dtype_code = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if dtype_code not in SAFETENSORS_DTYPES:
        raise _fail(name, ctx, f"unknown dtype {_short(dtype_code)}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
    ):
        shown = _short(shape)
        raise _fail(
            name, ctx, f"shape must be a list of non-negative integers below 2**63, got {shown}"
        )
    if len(shape) > MAX_NDIM:
        raise _fail(name, ctx, f"shape has {len(shape)} dimensions, more than {MAX_NDIM}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(
            isinstance(o, int) and not isinstance(o, bool) and 0 <= o <= MAX_DIM for o in offsets
        )
        or offsets[0] > offsets[1]
    ):
        raise _fail(
            name, ctx, f"data_offsets must be [begin, end] with begin <= end, got {_short(offsets)}"
        )
    torch_name, bits = SAFETENSORS_DTYPES[str(dtype_code)]
    numel = span = 1
    for d in shape:
        numel *= d
        span *= d or 1  # torch's strides: products of the dims, empty ones counted as 1
    if span > MAX_DIM:
        raise _fail(
            name,
            ctx,
            f"shape {_short(shape)} counts more than 2**63 - 1 elements "
            "(or strides), which torch refuses",
        )
    nbits = numel * bits
    expected = (nbits + 7) // 8
    begin, end = offsets
    if end - begin != expected:
        raise _fail(
            name,
            ctx,
            f"shape {shape} of {dtype_code} needs {expected} bytes but its data_offsets "
            f"span {end - begin}",
        )
    return TensorSpec(key, tuple(shape), torch_name, expected, name), begin, end


def _check_layout(name: str, ranges: list[tuple[int, int, str]], data_size: int | None) -> None:
    ranges.sort()
    pos = 0
    for begin, end, key in ranges:
        if begin < pos:
            raise _fail(
                name, f"tensor '{key}'", f"data_offsets [{begin}, {end}] overlap another tensor"
            )
        if begin > pos:
            raise _fail(
                name,
                f"tensor '{key}'",
                f"gap in the data region: bytes {pos}..{begin} belong to no tensor",
            )
        pos = end
    if data_size is not None:
        if pos > data_size:
            raise _fail(
                name,
                "data region",
                f"tensors need {pos} bytes but the file holds {data_size} after the header "
                "(truncated?)",
            )
        if pos < data_size:
            raise _fail(
                name, "data region", f"{data_size - pos} trailing bytes belong to no tensor"
            )
