"""torch.distributed.checkpoint (DCP) folders, as FSDP, FSDP2 and torchtitan write them.

A DCP folder holds ``.metadata`` (a pickle of ``torch.distributed.checkpoint.metadata.Metadata``)
and one ``*.distcp`` file per writer. The metadata alone gives every tensor's global shape and
dtype, and where its chunks live: the shards are never opened.

The pickle is read with the restricted unpickler; DCP's own record types (``Metadata``,
``TensorStorageMetadata``, ``ChunkStorageMetadata``, ``TensorProperties``...) are allowed as
placeholder classes that only record their state, so nothing is imported and nothing runs.

A training checkpoint holds more than the model: the model part (keys under ``model.``, or the
flat keys torchtitan writes), the optimizer part (``optim.``/``optimizer.``, or a bare optimizer
state dict's ``state.``/``param_groups``) and other training state. The manifest's tensors are
the model part (its ``model.`` prefix removed); ``select`` picks another part.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.errors import ReadError, SelectError, UnsafeCheckpointError
from ckptdiff.readers import torch_zip
from ckptdiff.readers import unpickler as _unpickler
from ckptdiff.readers import zip_format as z
from ckptdiff.readers.unpickler.placeholders import Opaque, placeholder
from ckptdiff.readers.unpickler.records import DTYPES, DType, short_repr
from ckptdiff.readers.unpickler.restricted import unpickle
from ckptdiff.types import Finding, Manifest, TensorSpec

__all__ = [
    "DCP_GLOBALS",
    "DcpEntry",
    "DcpMetadata",
    "is_dcp_folder",
    "parse_dcp_metadata",
    "read_dcp",
    "split_parts",
]

METADATA_FILE = ".metadata"

_META = "torch.distributed.checkpoint.metadata"
_OLD_META = "torch.distributed._shard.sharded_tensor.metadata"


#: DCP's record types, allowed for ``.metadata`` only (as placeholders that record what the
#: pickle gives them, never imported).
DCP_GLOBALS: Mapping[tuple[str, str], type[Opaque]] = {
    (module, name): placeholder(module, name)
    for module, name in (
        *(
            (_META, n)
            for n in (
                "Metadata",
                "TensorStorageMetadata",
                "ChunkStorageMetadata",
                "BytesStorageMetadata",
                "TensorProperties",
                "MetadataIndex",
                "StorageMeta",
                "_MEM_FORMAT_ENCODING",
            )
        ),
        *((_OLD_META, n) for n in ("TensorProperties", "MEM_FORMAT_ENCODING")),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.distributed.checkpoint.filesystem", "_StoragePrefix"),
    )
}

#: First key components of the optimizer part, and of other non-model training state.
OPTIMIZER_ROOTS = (
    "optim",
    "optimizer",
    "optimizers",
    "optimizer_state",
    "optim_state",
    "state",
    "param_groups",
)
OTHER_ROOTS = (
    "lr_scheduler",
    "lr_schedulers",
    "scheduler",
    "dataloader",
    "train_state",
    "trainer_state",
    "rng_state",
    "rng",
    "extra_state",
    "step",
    "epoch",
)
#: First key components under which a checkpoint puts the model part.
MODEL_ROOTS = ("model", "module", "model_state", "state_dict")


@dataclass(frozen=True)
class DcpEntry:
    """One tensor of a DCP checkpoint: its global shape, dtype and chunks."""

    fqn: str
    shape: tuple[int, ...]
    dtype: str
    chunks: int
    covered: int
    file: str | None = None


@dataclass
class DcpMetadata:
    """What ``.metadata`` says.

    Attributes:
        tensors: fqn -> entry, in the file's order.
        objects: fqns of non-tensor entries (``BytesStorageMetadata``: param groups, steps...).
        files: the ``*.distcp`` files the storage data names.
        version: DCP's metadata version, when recorded.
        findings: globals outside the allow-list, odd records.
    """

    tensors: dict[str, DcpEntry] = field(default_factory=dict)
    objects: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    version: str | None = None
    findings: list[Finding] = field(default_factory=list)


def is_dcp_folder(path: str) -> bool:
    """A folder holding a DCP ``.metadata`` file."""
    return os.path.isfile(os.path.join(path, METADATA_FILE))


def _state(obj: Any, what: str, name: str) -> Any:
    if not isinstance(obj, Opaque):
        raise _bad(name, f"{what} is {short_repr(obj)}, not a DCP record")
    return obj.state


def _bad(name: str, problem: str) -> ReadError:
    return ReadError(
        f"Cannot read '{name}' ({METADATA_FILE}): {problem}. The file is corrupt or was not "
        "written by torch.distributed.checkpoint; save the checkpoint again."
    )


def _shape(value: Any, what: str, name: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise _bad(name, f"{what} is {short_repr(value)}, not a shape")
    return value


def _dtype_of(properties: Any, fqn: str, name: str) -> str:
    state = _state(properties, f"the properties of '{fqn}'", name)
    dtype = (
        state[0]
        if isinstance(state, tuple) and state
        else (state.get("dtype") if isinstance(state, dict) else None)
    )
    if not isinstance(dtype, DType):
        raise _bad(name, f"'{fqn}' has no torch dtype")
    return dtype.name


def parse_dcp_metadata(data: bytes, name: str) -> DcpMetadata:
    """Decode a DCP ``.metadata`` pickle into global shapes, dtypes and chunk counts.

    Args:
        data: the bytes of ``.metadata``.
        name: the folder, for messages.

    Raises:
        ReadError: not a pickle, or not the structure DCP writes.
    """
    unpickled = unpickle(
        data, name, context=METADATA_FILE, storage_form="none", extra_globals=DCP_GLOBALS
    )
    state = _state(unpickled.root, "the pickle's root", name)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict_metadata"), dict):
        raise _bad(name, "the root has no state_dict_metadata")
    out = DcpMetadata(findings=list(unpickled.findings))
    version = state.get("version")
    out.version = version if isinstance(version, str) else None
    files_by_fqn = _files_by_fqn(state.get("storage_data"))
    out.files = sorted({f for fs in files_by_fqn.values() for f in fs})
    for fqn, record in state["state_dict_metadata"].items():
        if type(fqn) is not str:
            raise _bad(name, f"a key is {short_repr(fqn)}, not a string")
        kind = type(record).pickle_name if isinstance(record, Opaque) else ""
        if kind == "BytesStorageMetadata":
            out.objects.append(fqn)
            continue
        if kind != "TensorStorageMetadata":
            raise _bad(name, f"'{fqn}' is described by {short_repr(record)}")
        rec = _state(record, f"'{fqn}'", name)
        if not isinstance(rec, dict):
            raise _bad(name, f"'{fqn}' has no fields")
        shape = _shape(rec.get("size"), f"the size of '{fqn}'", name)
        chunks = rec.get("chunks")
        if not isinstance(chunks, list):
            raise _bad(name, f"'{fqn}' has no chunk list")
        covered = 0
        for chunk in chunks:
            cstate = _state(chunk, f"a chunk of '{fqn}'", name)
            sizes = cstate.get("sizes") if isinstance(cstate, dict) else None
            covered += math.prod(_shape(sizes, f"a chunk size of '{fqn}'", name))
        files = files_by_fqn.get(fqn)
        out.tensors[fqn] = DcpEntry(
            fqn,
            shape,
            _dtype_of(rec.get("properties"), fqn, name),
            len(chunks),
            covered,
            files[0] if files else None,
        )
    return out


def _files_by_fqn(storage_data: Any) -> dict[str, list[str]]:
    """``fqn -> [relative_path, ...]`` from ``storage_data`` (``MetadataIndex -> _StorageInfo``)."""
    out: dict[str, list[str]] = {}
    if not isinstance(storage_data, dict):
        return out
    for index, info in storage_data.items():
        istate = index.state if isinstance(index, Opaque) else None
        sstate = info.state if isinstance(info, Opaque) else None
        fqn = istate.get("fqn") if isinstance(istate, dict) else None
        rel = sstate.get("relative_path") if isinstance(sstate, dict) else None
        if isinstance(fqn, str) and isinstance(rel, str):
            files = out.setdefault(fqn, [])
            if rel not in files:
                files.append(rel)
    return out


def split_parts(keys: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Group a training checkpoint's keys into parts: ``part -> (prefix, keys)``.

    Parts are ``model``, ``optimizer`` and one per other root (``lr_scheduler``...). The
    model part is the keys under a model root (``model.``), else every key outside the
    optimizer and other roots (torchtitan flattens the model's keys to the top level).

    Example:
        >>> split_parts(["model.w", "optim.state.w.exp_avg"])["model"]
        ('model.', ['model.w'])
    """
    by_root: dict[str, list[str]] = {}
    for k in keys:
        by_root.setdefault(k.split(".", 1)[0], []).append(k)
    parts: dict[str, tuple[str, list[str]]] = {"model": ("", [])}
    model_root = next(
        (r for r in MODEL_ROOTS if r in by_root and any("." in k for k in by_root[r])), None
    )
    optim = [k for r in OPTIMIZER_ROOTS for k in by_root.get(r, ())]
    if optim:
        roots = [r for r in OPTIMIZER_ROOTS if r in by_root]
        bare = len(roots) != 1 or roots[0] in ("state", "param_groups")  # an optimizer's own dict
        prefix = "" if bare else roots[0] + "."
        parts["optimizer"] = (prefix, optim)
    if model_root is not None:
        parts["model"] = (model_root + ".", by_root[model_root])
    rest = [r for r in by_root if r not in OPTIMIZER_ROOTS and r != model_root]
    flat = [k for r in rest if r not in OTHER_ROOTS for k in by_root[r]]
    if model_root is None and flat:
        parts["model"] = ("", flat)
    for r in rest:
        if r in OTHER_ROOTS or (model_root is not None and r not in OTHER_ROOTS):
            parts[r] = (
                r + "." if any(k.startswith(r + ".") for k in by_root[r]) else "",
                by_root[r],
            )
    if not parts["model"][1]:
        del parts["model"]
    return parts


def _summary(part: str, prefix: str, entries: list[DcpEntry], objects: int) -> str:
    numel = sum(math.prod(e.shape) for e in entries)
    where = f" under '{prefix}'" if prefix else ""
    extra = f" and {objects} non-tensor entr{'y' if objects == 1 else 'ies'}" if objects else ""
    return f"{part}{where}: {len(entries)} tensors ({numel:,} elements){extra}"


def read_dcp(folder: str, source: str, *, select: str | None = None) -> Manifest:
    """Read a DCP folder's global shapes and dtypes from ``.metadata`` alone.

    Args:
        folder: the folder holding ``.metadata`` and the ``*.distcp`` shards.
        source: the source string as the user gave it.
        select: the part to list: ``model`` (default), ``optimizer``, or another root
            (``lr_scheduler``...), or a key prefix such as ``optim.state``.

    Returns:
        A ``dcp`` manifest of the chosen part, keys without the part's prefix; findings name
        the layout and every part, and shards that are missing.

    Raises:
        ReadError: ``.metadata`` is too large, corrupt or not DCP's.
        SelectError: ``select`` names no part.
        UnsafeCheckpointError: a shard name leaves the folder.

    Example:
        >>> m = read_dcp("step-1000", "step-1000")  # doctest: +SKIP
        >>> m.format, m.selected  # doctest: +SKIP
        ('dcp', 'model')
    """
    path = os.path.join(folder, METADATA_FILE)
    size = os.path.getsize(path)
    if size > _unpickler.MAX_PICKLE_SIZE:
        raise ReadError(
            f"Cannot read '{source}' ({METADATA_FILE}): it is {size} bytes, over the "
            f"{_unpickler.MAX_PICKLE_SIZE}-byte limit."
        )
    with open(path, "rb") as f:
        meta = parse_dcp_metadata(f.read(), source)
    findings = list(meta.findings)
    findings += _missing_shards(folder, source, meta.files)
    all_keys = list(meta.tensors) + meta.objects
    parts = split_parts(all_keys)
    chosen, prefix, keys = _choose(parts, select, source, all_keys)
    tensors: dict[str, TensorSpec] = {}
    for k in keys:
        e = meta.tensors.get(k)
        if e is None:
            continue
        key = k[len(prefix) :] if prefix and k.startswith(prefix) else k
        itemsize = DTYPES[e.dtype].itemsize if e.dtype in DTYPES else 0
        tensors[key] = TensorSpec(
            key, e.shape, e.dtype, math.prod(e.shape) * itemsize or None, e.file
        )
    incomplete = [e.fqn for e in meta.tensors.values() if e.covered != math.prod(e.shape)]
    if incomplete:
        findings.append(
            Finding(
                "dcp_incomplete",
                f"{len(incomplete)} tensors' chunks do not cover their global shape "
                f"({', '.join(incomplete[:3])}{', ...' if len(incomplete) > 3 else ''}): "
                "a writer's "
                "metadata is missing or the save was interrupted",
                tuple(incomplete),
                "error",
            )
        )
    part_info = {}
    lines = []
    for part, (pfx, pkeys) in parts.items():
        entries = [meta.tensors[k] for k in pkeys if k in meta.tensors]
        objects = sum(1 for k in pkeys if k not in meta.tensors)
        part_info[part] = {
            "prefix": pfx,
            "tensors": len(entries),
            "objects": objects,
            "elements": sum(math.prod(e.shape) for e in entries),
        }
        lines.append(_summary(part, pfx, entries, objects))
    writers = len(meta.files)
    findings.insert(
        0,
        Finding(
            "layout",
            f"torch.distributed.checkpoint folder (FSDP/FSDP2/torchtitan), {writers} shard "
            f"file{'' if writers == 1 else 's'}; global shapes from {METADATA_FILE}. Parts: "
            + "; ".join(lines)
            + f". Listing '{chosen}'"
            + (f" without its '{prefix}' prefix" if prefix else "")
            + ". To get a plain state dict: python -m torch.distributed.checkpoint.format_utils "
            "dcp_to_torch <folder> <out.pt>",
            (),
            "info",
            {
                "layout": "dcp",
                "parts": part_info,
                "selected": chosen,
                "candidate_sizes": {
                    p: {"tensors": v["tensors"], "parameters": v["elements"]}
                    for p, v in part_info.items()
                },
            },
        ),
    )
    return Manifest(
        source=source,
        format="dcp",
        tensors=tensors,
        files=(path, *(os.path.join(folder, f) for f in meta.files)),
        metadata={
            "layout": "dcp",
            "parts": part_info,
            "dcp_version": meta.version,
            "shard_files": meta.files,
            "non_tensor_entries": len(meta.objects),
        },
        findings=tuple(findings),
        selected=chosen,
        candidates=tuple(parts),
    )


def _choose(
    parts: dict[str, tuple[str, list[str]]], select: str | None, source: str, all_keys: list[str]
) -> tuple[str, str, list[str]]:
    if select is None:
        if "model" in parts:
            return "model", *parts["model"]
        if not parts:
            return "model", "", []
        first = next(iter(parts))
        return first, *parts[first]
    if select in parts:
        return select, *parts[select]
    dot = select.rstrip(".") + "."
    keys = [k for k in all_keys if k.startswith(dot)]
    if keys:
        return select.rstrip("."), dot, keys
    raise SelectError(
        f"Cannot read '{source}' (--select {select}): the checkpoint has no part or key prefix "
        f"'{select}'. Parts: {', '.join(parts) or 'none'}."
    )


def _missing_shards(folder: str, source: str, files: list[str]) -> list[Finding]:
    root = os.path.realpath(folder)
    missing = []
    for rel in files:
        real = os.path.realpath(os.path.join(root, rel))
        if os.path.isabs(rel) or os.path.commonpath([root, real]) != root:
            raise UnsafeCheckpointError(
                f"Cannot read '{source}' ({METADATA_FILE}): shard {rel!r} lies outside the "
                "checkpoint's folder. Refusing to follow it."
            )
        if not os.path.isfile(real):
            missing.append(rel)
    if not missing:
        return []
    return [
        Finding(
            "shard_missing",
            f"{len(missing)} of the {len(files)} shard files that {METADATA_FILE} names are not in "
            f"the folder ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): loading "
            "will fail; copy every *.distcp file of the save",
            tuple(missing),
            "error",
        )
    ]


# --- scanning the .distcp files ----------------------------------------------------------------

#: The most blobs of one ``.distcp`` file scanned (each costs a few small reads).
MAX_SCANNED_BLOBS = 200_000


def distcp_blobs(folder: str, file: str, source: str) -> list[tuple[int, int]]:
    """``(offset, length)`` of every blob of ``file`` that the folder's ``.metadata`` names.

    A ``.distcp`` file is the concatenation of ``torch.save`` archives, one per tensor or
    object; ``.metadata`` (read through DCP's allow-list) says where each one lies.

    Raises:
        ReadError: ``.metadata`` is unreadable.
        UnsafeCheckpointError: ``.metadata`` names globals outside DCP's allow-list.
    """
    with open(os.path.join(folder, METADATA_FILE), "rb") as f:
        data = f.read(_unpickler.MAX_PICKLE_SIZE + 1)
    unpickled = unpickle(
        data, source, context=METADATA_FILE, storage_form="none", extra_globals=DCP_GLOBALS
    )
    unsafe = [f for f in unpickled.findings if f.severity == "security"]
    if unsafe:
        raise UnsafeCheckpointError(
            f"Cannot read '{source}' ({METADATA_FILE}): it names {unsafe[0].keys[0]!r}, outside "
            "the allow-list. Do not load this checkpoint."
        )
    state = unpickled.root.state if isinstance(unpickled.root, Opaque) else None
    storage = state.get("storage_data") if isinstance(state, dict) else None
    out = set()
    for info in storage.values() if isinstance(storage, dict) else ():
        s = info.state if isinstance(info, Opaque) else None
        if isinstance(s, dict) and s.get("relative_path") == file:
            offset, length = s.get("offset"), s.get("length")
            if type(offset) is int and type(length) is int and offset >= 0 and length > 0:
                out.add((offset, length))
    return sorted(out)[:MAX_SCANNED_BLOBS]


def blob_findings(f: Any, offset: int, length: int, name: str) -> list[Finding]:
    """The security findings of the ``data.pkl`` of one ``torch.save`` archive at
    ``[offset, offset + length)`` of the open file ``f`` (read by its zip directory, no tensor
    byte touched).

    Raises:
        ReadError: the blob is not a torch archive.
    """

    def read(start: int, size: int) -> bytes:
        f.seek(offset + start)
        return bytes(f.read(max(0, min(size, length - start))))

    tail_len = min(length, z.END_SEARCH_SIZE)
    entries, cd_offset, cd_size, record = z.parse_end_record(
        read(length - tail_len, tail_len), length - tail_len, name
    )
    if record is not None:
        entries, cd_offset, cd_size = z.parse_zip64_end_record(read(record, z.ZIP64_END_SIZE), name)
    if entries > torch_zip.MAX_ZIP_ENTRIES or cd_offset + cd_size > length:
        raise ReadError(f"Cannot read '{name}': a blob's zip directory is corrupt.")
    directory = z.parse_central_directory(read(cd_offset, cd_size), entries, name)
    prefix = torch_zip.archive_prefix(directory, name)
    pkl = directory[f"{prefix}data.pkl"]
    if max(pkl.size, pkl.compressed_size) > _unpickler.MAX_PICKLE_SIZE:
        raise ReadError(f"Cannot read '{name}': a blob's data.pkl is over the size limit.")
    start = z.local_data_offset(read(pkl.offset, 30), pkl, name)
    data = z.decode_entry(read(start, pkl.compressed_size), pkl, name)
    unpickled = unpickle(data, name, context=f"blob at {offset}: data.pkl", storage_form="zip")
    found = [f for f in unpickled.findings if f.severity == "security"]
    return found + torch_zip.zip_slip_findings(directory)
