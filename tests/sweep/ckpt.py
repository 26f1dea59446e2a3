"""A real safetensors file from keys, shapes and dtypes alone, with zero-filled storage.

The header is written as the format specifies (8-byte little-endian length, JSON, space padding
to 8 bytes) and the data section is extended with ``truncate``: the zeros cost no disk blocks
on file systems with sparse files, whatever the model's size.
"""

from __future__ import annotations

import json
import math
import os
import struct

from tests.sweep.oracle import Shapes

__all__ = ["SAFETENSORS_DTYPES", "write_safetensors"]

SAFETENSORS_DTYPES = {
    "float64": ("F64", 8),
    "float32": ("F32", 4),
    "float16": ("F16", 2),
    "bfloat16": ("BF16", 2),
    "int64": ("I64", 8),
    "int32": ("I32", 4),
    "int16": ("I16", 2),
    "int8": ("I8", 1),
    "uint8": ("U8", 1),
    "bool": ("BOOL", 1),
    "complex64": ("C64", 8),
    "float8_e4m3fn": ("F8_E4M3", 1),
    "float8_e5m2": ("F8_E5M2", 1),
}


def write_safetensors(path: str | os.PathLike[str], shapes: Shapes) -> None:
    """Write ``{key: (shape, dtype)}`` as a safetensors file whose tensors are all zeros.

    Raises:
        ValueError: a dtype safetensors cannot store.
    """
    header: dict[str, object] = {}
    offset = 0
    for key in sorted(shapes):
        shape, dtype = shapes[key]
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{key}: dtype {dtype} has no safetensors code")
        code, size = SAFETENSORS_DTYPES[dtype]
        nbytes = math.prod(shape) * size
        span = [offset, offset + nbytes]
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": span}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
