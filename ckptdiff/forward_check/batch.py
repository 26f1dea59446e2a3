"""Read one saved collated batch: every tensor's shape and dtype, and the values of small
integer tensors (ids, labels, masks, offsets), so they can be checked against the rows they
index.

Safe on hostile files as the checkpoint readers are: a ``torch.save`` file goes through
ckptdiff's restricted unpickler (nothing imported, nothing run); values are read from the
storage records of integer tensors only, each at most :data:`MAX_VALUE_ELEMENTS` elements
and :data:`MAX_VALUE_BYTES` bytes in all. A ``.safetensors`` file is read by its header and
byte ranges. Floating tensors are never read: data mode draws their values.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ckptdiff.errors import ReadError, SourceNotFoundError, UnsafeCheckpointError
from ckptdiff.forward_check.inputs import INTEGER_DTYPES, InputSpec

__all__ = ["MAX_VALUE_BYTES", "MAX_VALUE_ELEMENTS", "read_batch"]

#: Largest integer tensor whose values are read.
MAX_VALUE_ELEMENTS = 1 << 22
#: Bytes of values read from one batch file in all.
MAX_VALUE_BYTES = 64 << 20
_VALUE_DTYPES = INTEGER_DTYPES | {"bool"}


def read_batch(path: str) -> list[InputSpec]:
    """The tensors of a saved batch as inputs (top-level names; values of small int tensors).

    Args:
        path: a ``torch.save``'d dict of tensors (``torch.save(dict(batch), "batch.pt")``) or a
            ``.safetensors`` file.

    Raises:
        SourceNotFoundError: no such file.
        ReadError: another format, no tensors, nested entries, a corrupt file.
        UnsafeCheckpointError: the pickle names globals outside the allow-list (a
            ``BatchEncoding`` or other class: save ``dict(batch)`` instead).
    """
    from ckptdiff.readers.sniff import sniff_file

    if not os.path.isfile(path):
        raise SourceNotFoundError(f"Cannot read '{path}' (--batch): no such file.")
    kind = sniff_file(path)
    if kind == "safetensors":
        specs = _read_safetensors(path)
    elif kind == "zip":
        specs = _read_torch_zip(path)
    else:
        from ckptdiff.readers.sniff import FORMAT_NAMES

        raise ReadError(
            f"Cannot read '{path}' (--batch): it is {FORMAT_NAMES.get(kind, kind)}. Save the "
            "collated batch with torch.save(dict(batch), 'batch.pt') or safetensors' save_file."
        )
    if not specs:
        raise ReadError(f"Cannot read '{path}' (--batch): it holds no tensors.")
    return specs


def _read_safetensors(path: str) -> list[InputSpec]:
    import torch

    from ckptdiff.readers.safetensors_header import header_length, parse_header

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = header_length(f.read(8), size, path)
        raw = f.read(n)
        tensors, _ = parse_header(raw, size - 8 - n, path)  # validates shapes and ranges
        offsets = {k: v["data_offsets"] for k, v in json.loads(raw).items() if k != "__metadata__"}
        budget = MAX_VALUE_BYTES
        out: list[InputSpec] = []
        for key, spec in tensors.items():
            _top_level(key, path)
            values = None
            nbytes = spec.nbytes or 0
            if _wanted(spec.dtype, spec.numel, nbytes, budget):
                budget -= nbytes
                f.seek(8 + n + offsets[key][0])
                data = bytearray(f.read(nbytes))
                dtype = getattr(torch, spec.dtype)
                values = (
                    torch.frombuffer(data, dtype=dtype).reshape(spec.shape).clone()
                    if data
                    else torch.zeros(spec.shape, dtype=dtype)
                )
            out.append(InputSpec(key, spec.shape, spec.dtype, values, origin="batch"))
    return out


def _read_torch_zip(path: str) -> list[InputSpec]:
    import torch

    from ckptdiff.readers import torch_zip
    from ckptdiff.readers.byte_source import LocalFile
    from ckptdiff.readers.containers import select_state_dict
    from ckptdiff.readers.unpickler.records import TensorRef

    unpickled = torch_zip.unpickle_torch_zip(path, path)
    unsafe = [f for f in unpickled.findings if f.severity == "security"]
    if unsafe:
        raise UnsafeCheckpointError(
            f"Cannot read '{path}' (--batch): {unsafe[0].message}. Save a plain dict of "
            "tensors: torch.save(dict(batch), 'batch.pt')."
        )
    selection = select_state_dict(unpickled.root, path)
    if selection.selected is not None:
        raise ReadError(
            f"Cannot read '{path}' (--batch): expected a dict of tensors at the top level, "
            f"found them under '{selection.selected}'."
        )
    budget = MAX_VALUE_BYTES
    out: list[InputSpec] = []
    with LocalFile.open(path) as f:
        entries, _ = torch_zip.read_directory(f, path)
        prefix = torch_zip.archive_prefix(entries, path)
        for key, ref in selection.tensors.items():
            _top_level(key, path)
            if not isinstance(ref, TensorRef):
                raise ReadError(f"Cannot read '{path}' (--batch): '{key}' is not a dense tensor.")
            dtype = ref.dtype.name
            values = None
            nbytes = ref.numel * ref.dtype.itemsize
            if ref.storage is not None and _wanted(dtype, ref.numel, nbytes, budget):
                budget -= nbytes
                entry = entries[f"{prefix}data/{ref.storage.key}"]
                raw = bytearray(torch_zip.read_entry(f, entry, path))
                storage = (
                    torch.frombuffer(raw, dtype=getattr(torch, dtype))
                    if raw
                    else torch.zeros(0, dtype=getattr(torch, dtype))
                )
                _check_view(ref, storage.numel(), key, path)
                values = torch.as_strided(
                    storage, ref.shape, ref.stride, ref.storage_offset
                ).clone()
            out.append(InputSpec(key, tuple(ref.shape), dtype, values, origin="batch"))
    return out


def _wanted(dtype: str, numel: int, nbytes: int, budget: int) -> bool:
    return dtype in _VALUE_DTYPES and numel <= MAX_VALUE_ELEMENTS and nbytes <= budget


def _top_level(key: str, path: str) -> None:
    if not key.isidentifier():
        raise ReadError(
            f"Cannot read '{path}' (--batch): entry {key[:80]!r} is not a keyword name; save "
            "the batch as a flat dict of the model's forward arguments."
        )


def _check_view(ref: Any, storage_numel: int, key: str, path: str) -> None:
    """A view must stay inside its storage (a hostile stride or offset must not read past)."""
    if not ref.shape or 0 in ref.shape:
        last = ref.storage_offset
    else:
        last = ref.storage_offset + sum(
            (d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True)
        )
    if any(s < 0 for s in ref.stride) or last >= max(storage_numel, 1) and ref.numel:
        raise ReadError(
            f"Cannot read '{path}' (--batch): tensor '{key}' views past the end of its storage."
        )
