"""The safetensors header checked in whole-list passes accepts exactly what the tensor-by-tensor
check accepts, returns the same specs in the same order, and on every defect the error is the
one the tensor-by-tensor check names."""

from __future__ import annotations

import json
import random

import pytest

from ckptdiff.errors import ReadError
from ckptdiff.readers.safetensors_compact import compact_columns
from ckptdiff.readers.safetensors_header import (
    SAFETENSORS_DTYPES,
    _parse_in_bulk,
    _parse_one_by_one,
    parse_header,
)

CODES = list(SAFETENSORS_DTYPES)


def _header(rng: random.Random, in_data_order: bool = False) -> tuple[dict, int]:
    names = {
        f"{rng.choice(['layers', 'h', 'blocks.x'])}.{rng.randint(0, 30)}."
        f"{rng.choice(['w', 'b', 'ln.weight', 'attn.q'])}"
        for _ in range(rng.randint(1, 30))
    }
    entries = []
    for name in names:
        code = rng.choice(CODES)
        shape = [rng.choice([0, 1, 2, 3, 8]) for _ in range(rng.randint(0, 3))]
        numel = 1
        for d in shape:
            numel *= d
        entries.append((name, code, shape, (numel * SAFETENSORS_DTYPES[code][1] + 7) // 8))
    rng.shuffle(entries)
    header: dict = {}
    if rng.random() < 0.5:
        header["__metadata__"] = {"format": "pt", "k": rng.choice(["v", 'q"uote:', "x:y"])}
    offset = 0
    for name, code, shape, size in entries:
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    items = list(header.items())
    if not in_data_order:
        rng.shuffle(items)
    return dict(items), offset


def _mutate(rng: random.Random, text: str, header: dict) -> str:
    keys = [k for k in header if k != "__metadata__"]
    key = rng.choice(keys)
    entry = header[key]
    choice = rng.randrange(12)
    if choice == 0:  # duplicate key, the copy first and harmless-looking
        if rng.random() < 0.5:
            return text.replace("{", f'{{"{key}": 1, ', 1)
        return text[:-1] + f', "{key}": {json.dumps(entry)}}}'
    if choice == 1:
        entry["data_offsets"][1] += 1
    elif choice == 2:
        entry["data_offsets"] = [entry["data_offsets"][1], entry["data_offsets"][0]]
    elif choice == 3:
        entry["shape"] = entry["shape"] + [True]
    elif choice == 4:
        entry["dtype"] = "F12"
    elif choice == 5:
        entry["shape"] = "[2]"
    elif choice == 6:
        header[key] = [1, 2]
    elif choice == 7:
        entry["data_offsets"] = [o + 4 for o in entry["data_offsets"]]
    elif choice == 8:
        header["__metadata__"] = {"x": 1}
    elif choice == 9:  # a duplicate field inside an entry, with whitespace before the colon
        return text.replace('"dtype"', '"dtype" : "F32", "dtype"', 1)
    elif choice == 10:
        entry["extra"] = {"nested": [1, 2]}
    else:
        del entry["shape"]
    return json.dumps(header, separators=rng.choice([(",", ":"), (", ", ": "), (" ,", " : ")]))


def _outcome(fn, raw: bytes, size: int | None):
    try:
        specs, meta = fn(raw, size, "f.safetensors")
    except ReadError as e:
        return ("error", str(e))
    return ("ok", list(specs.items()), meta)


@pytest.mark.parametrize("in_data_order", [False, True])
@pytest.mark.parametrize("seed", range(300))
def test_bulk_and_one_by_one_agree(seed, in_data_order):
    rng = random.Random(seed)
    header, size = _header(rng, in_data_order)
    separators = rng.choice([(",", ":"), (", ", ": "), (",", " :")])
    text = json.dumps(header, separators=separators)
    if seed % 3:
        text = _mutate(rng, text, json.loads(text))
    raw = text.encode() + b" " * rng.randint(0, 7)
    data_size = rng.choice([size, None])
    assert _outcome(parse_header, raw, data_size) == _outcome(_parse_one_by_one, raw, data_size)


def test_a_real_layout_takes_the_bulk_path():
    rng = random.Random(1)
    header, size = _header(rng)
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert _parse_in_bulk(raw, json.loads(raw), size, "f") is not None
    dup = raw[:-1] + b',"%s":1}' % next(k for k in header if k != "__metadata__").encode()
    assert _parse_in_bulk(dup, json.loads(dup), size, "f") is None


def _compact(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()


_A = '"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}'
_B = '"b.10":{"dtype":"I8","shape":[],"data_offsets":[24,25]}'
_META = '"__metadata__":{"format":"pt"}'

#: Headers in or near the compact layout, each a way a hostile or odd file departs from it.
_NEAR_COMPACT = {
    "compact, metadata first": "{" + ",".join([_META, _A, _B]) + "}",
    "compact, no metadata": "{" + ",".join([_A, _B]) + "}",
    "metadata last": "{" + ",".join([_A, _B, _META]) + "}",
    "metadata between": "{" + ",".join([_A, _META, _B]) + "}",
    "metadata twice": "{" + ",".join([_META, _A, _META, _B]) + "}",
    "metadata key twice": '{"__metadata__":{"f":"a","f":"b"},' + ",".join([_A, _B]) + "}",
    "metadata not strings": '{"__metadata__":{"f":1},' + ",".join([_A, _B]) + "}",
    "metadata an array": '{"__metadata__":[["f","a"]],' + ",".join([_A, _B]) + "}",
    "metadata null": '{"__metadata__":null,' + ",".join([_A, _B]) + "}",
    "metadata nested deep": '{"__metadata__":{"f":' + "[" * 100000 + "}," + _A + "}",
    "a tensor named __metadata__": "{"
    + _A.replace('"a"', '"__metadata__"')
    + ","
    + _B.replace("[24,25]", "[0,1]")
    + "}",
    "key twice": "{" + ",".join([_A, _B, _A]) + "}",
    "leading zero in a shape": "{" + ",".join([_A.replace("[2,3]", "[02,3]"), _B]) + "}",
    "leading zero in an offset": "{" + ",".join([_A.replace("[0,24]", "[00,24]"), _B]) + "}",
    "minus zero": "{" + ",".join([_A.replace("[0,24]", "[-0,24]"), _B]) + "}",
    "an exponent": "{" + ",".join([_A.replace("[0,24]", "[0,2.4e1]"), _B]) + "}",
    "empty dimension": "{" + ",".join([_A.replace("[2,3]", "[2,,3]"), _B]) + "}",
    "trailing comma in shape": "{" + ",".join([_A.replace("[2,3]", "[2,3,]"), _B]) + "}",
    "offset past int64": "{"
    + ",".join([_A, _B.replace("[24,25]", "[24,9223372036854775808]")])
    + "}",
    "20-digit dimension": "{"
    + ",".join([_A.replace("[2,3]", "[10000000000000000000,3]"), _B])
    + "}",
    "escaped quote in a key": "{" + ",".join([_A.replace('"a"', '"a\\"x"'), _B]) + "}",
    "escaped letter in a key": "{" + ",".join([_A.replace('"a"', '"\\u0061"'), _B]) + "}",
    "tab in a key": "{" + ",".join([_A.replace('"a"', '"a\tb"'), _B]) + "}",
    "non-ASCII key": "{" + ",".join([_A.replace('"a"', '"\u00e9\u4e2d\U0001f600"'), _B]) + "}",
    "brace for a comma": "{" + "{".join([_A, _B]) + "}",
    "comma for the brace": "," + ",".join([_A, _B]) + "}",
    "comma before the first": "{," + ",".join([_A, _B]) + "}",
    "comma after the last": "{" + ",".join([_A, _B]) + ",}",
    "junk between": "{" + ",".join([_A, _B]).replace("},", "} ,", 1) + "}",
    "junk inside": "{" + ",".join([_A.replace('"shape"', '"shape" '), _B]) + "}",
    "another field order": "{"
    + ",".join([_A.replace('"dtype":"F32","shape":[2,3]', '"shape":[2,3],"dtype":"F32"'), _B])
    + "}",
    "an extra field": "{" + ",".join([_A.replace("]}", '],"x":1}'), _B]) + "}",
    "no closing brace": "{" + ",".join([_A, _B]),
    "two closing braces": "{" + ",".join([_A, _B]) + "}}",
    "trailing newline": "{" + ",".join([_A, _B]) + "}\n",
    "unknown dtype": "{" + ",".join([_A.replace("F32", "F33"), _B]) + "}",
    "lower-case dtype": "{" + ",".join([_A.replace("F32", "f32"), _B]) + "}",
    "wrong byte count": "{" + ",".join([_A.replace("[0,24]", "[0,23]"), _B]) + "}",
    "overlap": "{" + ",".join([_A, _B.replace("[24,25]", "[23,24]")]) + "}",
    "64 dimensions": "{"
    + ",".join([_A.replace("[2,3]", "[" + ",".join(["1"] * 62 + ["2", "3"]) + "]"), _B])
    + "}",
    "65 dimensions": "{"
    + ",".join([_A.replace("[2,3]", "[" + ",".join(["1"] * 63 + ["2", "3"]) + "]"), _B])
    + "}",
    "300 dimensions": "{"
    + ",".join([_A.replace("[2,3]", "[" + ",".join(["1"] * 298 + ["2", "3"]) + "]"), _B])
    + "}",
    "a shape that never closes": '{"a":{"dtype":"F32","shape":[' + "1," * 5000 + "}",
    "only metadata": "{" + _META + "}",
    "empty": "{}",
}


@pytest.mark.parametrize("case", list(_NEAR_COMPACT))
@pytest.mark.parametrize("pad", [0, 5])
def test_compact_layout_and_its_near_misses_read_as_json_reads_them(case, pad):
    raw = _NEAR_COMPACT[case].encode() + b" " * pad
    for size in (25, None):
        assert _outcome(parse_header, raw, size) == _outcome(_parse_one_by_one, raw, size), case


def test_bytes_that_are_not_utf8_in_a_key_are_refused_as_json_refuses_them():
    raw = ("{" + ",".join([_A, _B]) + "}").encode().replace(b'"a"', b'"a\xff"')
    assert compact_columns(raw) is None
    assert _outcome(parse_header, raw, 25) == _outcome(_parse_one_by_one, raw, 25)
    assert _outcome(parse_header, raw, 25)[0] == "error"


@pytest.mark.parametrize("seed", range(100))
def test_compact_headers_take_the_compact_way_and_agree(seed):
    rng = random.Random(seed)
    header, size = _header(rng, in_data_order=bool(seed % 2))
    if "__metadata__" in header:  # writers put it first
        header = {"__metadata__": header.pop("__metadata__"), **header}
    raw = _compact(header) + b" " * rng.randint(0, 7)
    assert compact_columns(raw) is not None
    assert _outcome(parse_header, raw, size) == _outcome(_parse_one_by_one, raw, size)


def test_a_file_written_by_safetensors_takes_the_compact_way(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    tensors = {f"layers.{i}.w": np.zeros((i + 1, 3), dtype=np.float16) for i in range(12)}
    tensors["emb"] = np.zeros((5,), dtype=np.int64)
    save_file(tensors, str(path), metadata={"format": "np", "note": 'q"uote\n'})
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    raw = data[8 : 8 + n]
    columns = compact_columns(raw)
    assert columns is not None
    assert columns.metadata == {"format": "np", "note": 'q"uote\n'}
    assert sorted(columns.keys) == sorted(tensors)
    assert _outcome(parse_header, raw, len(data) - 8 - n) == _outcome(
        _parse_one_by_one, raw, len(data) - 8 - n
    )
