"""The safetensors header checked in whole-list passes accepts exactly what the tensor-by-tensor
check accepts, returns the same specs in the same order, and on every defect the error is the
one the tensor-by-tensor check names."""

from __future__ import annotations

import json
import random

import pytest

from ckptdiff.errors import ReadError
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
