"""Sharded checkpoints: a ``*.index.json`` and the shards it names, checked against each other.

Reads every shard's metadata only (safetensors headers, pickles' ``data.pkl``) and reports
where index and shards disagree: keys listed but absent, keys present but unlisted, a key in
two shards, a shard file missing, ``total_size``. Shard names that leave the folder are refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from operator import attrgetter
from typing import Any

from ckptdiff.errors import ReadError, SelectError, UnsafeCheckpointError
from ckptdiff.readers.weights_file import read_file
from ckptdiff.sorting import natural_order
from ckptdiff.types import Finding, Manifest, TensorSpec

__all__ = [
    "MAX_INDEX_FILE_SIZE",
    "confined_path",
    "index_manifest",
    "load_index",
    "parse_index",
    "read_local_shard",
    "read_sharded",
    "shard_name_parts",
    "shard_security_findings",
]

#: Largest index file accepted (the one of a 1T-parameter model is ~10 MB).
MAX_INDEX_FILE_SIZE = 100 * 1024 * 1024


def confined_path(folder: str, name: str, source: str, *, real_root: str | None = None) -> str:
    """The path of ``name`` inside ``folder``, refusing names or links that leave it.

    In a Hugging Face cache snapshot (``<repo>/snapshots/<commit>/``), where every file is a
    link to ``<repo>/blobs/``, links into that repo's own ``blobs`` folder are inside.

    Raises:
        UnsafeCheckpointError: an absolute name, a ``..`` component, or a symlink whose
            target lies outside the folder.
    """
    parts = shard_name_parts(name, source)
    root = real_root if real_root is not None else os.path.realpath(folder)
    path = os.path.join(root, *parts)
    real = path if len(parts) == 1 and not os.path.islink(path) else os.path.realpath(path)
    if not any(os.path.commonpath([r, real]) == r for r in (root, *_cache_blobs(root))):
        raise UnsafeCheckpointError(
            f"Cannot read '{source}' (index): shard {name!r} is a link to {real}, outside the "
            "checkpoint's folder. Refusing to follow it."
        )
    return real


def _cache_blobs(root: str) -> tuple[str, ...]:
    """``<repo>/blobs`` when ``root`` lies in a hub cache snapshot ``<repo>/snapshots/<x>``."""
    parts = root.split(os.sep)
    if "snapshots" not in parts:
        return ()
    at = len(parts) - 1 - parts[::-1].index("snapshots")
    repo = os.sep.join(parts[:at])
    if at + 1 >= len(parts) or "--" not in parts[at - 1]:
        return ()
    blobs = os.path.join(repo, "blobs")
    return (blobs,) if os.path.isdir(blobs) else ()


def load_index(path: str, source: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Read a local index file: ``(weight_map, metadata)`` (see :func:`parse_index`).

    Raises:
        ReadError: over :data:`MAX_INDEX_FILE_SIZE`, not JSON, or no weight map.
    """
    size = os.path.getsize(path)
    if size > MAX_INDEX_FILE_SIZE:
        raise ReadError(
            f"Cannot read '{source}' (index): {size} bytes exceeds the {MAX_INDEX_FILE_SIZE}-byte "
            "limit for an index file."
        )
    with open(path, "rb") as f:
        return parse_index(f.read(), source)


def parse_index(raw: bytes, source: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Decode an index file: ``(weight_map, metadata)``.

    Raises:
        ReadError: not JSON, or no ``{"weight_map": {key: shard file}}``.

    Example:
        >>> parse_index(b'{"weight_map": {"w": "a.safetensors"}}', "x")
        ({'w': 'a.safetensors'}, {})
    """
    if len(raw) > MAX_INDEX_FILE_SIZE:
        raise ReadError(
            f"Cannot read '{source}' (index): {len(raw)} bytes exceeds the "
            f"{MAX_INDEX_FILE_SIZE}-byte limit for an index file."
        )
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReadError(f"Cannot read '{source}' (index): not valid JSON ({e}).") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not (
        # json.loads makes exact str objects: their type alone, over whole lists
        set(map(type, weight_map.keys())) | set(map(type, weight_map.values())) <= {str}
    ):
        raise ReadError(
            f"Cannot read '{source}' (index): expected {{\"weight_map\": {{key: shard file}}}}."
        )
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        metadata = {}
    return weight_map, metadata


def shard_name_parts(name: Any, source: str) -> list[str]:
    """The components of a shard name, refusing absolute names and ``..`` (no file access).

    Raises:
        UnsafeCheckpointError: an absolute name, a backslash, or an empty, ``.`` or ``..``
            component.
    """
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name:
        raise UnsafeCheckpointError(
            f"Cannot read '{source}' (index): shard name {name!r} is not a relative file name. "
            "Refusing to read outside the checkpoint's folder."
        )
    if "\x00" in name:
        raise ReadError(
            f"Cannot read '{source}' (index): shard name {name!r} holds a NUL byte; no file "
            "has such a name. The index is corrupt."
        )
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeCheckpointError(
            f"Cannot read '{source}' (index): shard name {name!r} leaves the checkpoint's "
            "folder. Refusing to follow it."
        )
    return parts


def shard_security_findings(shard: Manifest, name: str) -> tuple[Finding, ...]:
    """A shard's security findings, each message prefixed with the shard's name."""
    return tuple(
        dataclasses.replace(f, message=f"{name}: {f.message}") for f in shard.security_findings
    )


def read_local_shard(
    path: str, name: str, source: str
) -> tuple[dict[str, TensorSpec], tuple[Finding, ...]]:
    """One shard's tensors, and its security findings (a pickle shard's forbidden globals)."""
    shard = read_file(path, f"{source}: {name}", shard=name)
    return dict(shard.tensors), shard_security_findings(shard, name)


def read_sharded(index_path: str, source: str, *, select: str | None = None) -> Manifest:
    """Read a sharded checkpoint through its index.

    Args:
        index_path: the ``*.index.json`` file.
        source: the source as the user gave it (a folder or the index).
        select: not applicable to sharded checkpoints; refused when given.

    Returns:
        A manifest of every tensor found in the shards (``format`` ``safetensors-sharded`` or
        ``torch-sharded``), with findings for each disagreement.

    Raises:
        ReadError: the index is not valid, or a shard cannot be read.
        UnsafeCheckpointError: a shard name leaves the folder.
    """
    if select:
        raise SelectError(
            f"Cannot read '{source}' (--select {select}): a sharded checkpoint is one flat "
            "state dict; --select applies to nested pickled containers."
        )
    folder = os.path.dirname(os.path.abspath(index_path))
    weight_map, index_meta = load_index(index_path, source)
    shard_specs: dict[str, dict[str, TensorSpec]] = {}
    files: list[str] = [index_path]
    unsafe: list[Finding] = []
    real_root = os.path.realpath(folder)  # once: an index may name 60,000 shards
    for name in dict.fromkeys(weight_map.values()):
        path = confined_path(folder, name, source, real_root=real_root)
        if not os.path.isfile(path):
            continue
        files.append(path)
        shard_specs[name], shard_findings = read_local_shard(path, name, source)
        unsafe.extend(shard_findings)
    return index_manifest(
        weight_map, index_meta, shard_specs, source=source, files=tuple(files), unsafe=unsafe
    )


def index_manifest(
    weight_map: Mapping[str, str],
    index_meta: Mapping[str, Any],
    shard_specs: Mapping[str, Mapping[str, TensorSpec]],
    *,
    source: str,
    files: tuple[str, ...],
    unsafe: Iterable[Finding] = (),
) -> Manifest:
    """Check an index against its shards and build the sharded manifest (pure: no file access).

    Shared by the local reader and the hub reader, which differ only in how they fetch shards.

    Args:
        weight_map: the index's ``key -> shard file``.
        index_meta: the index's ``metadata`` (``total_size``).
        shard_specs: ``shard file -> its tensors`` for every shard that could be found, in
            any order; a shard of the index absent from it is reported missing.
        source: the source string.
        files: the files read, for :attr:`Manifest.files`.
        unsafe: the shards' security findings, listed first.

    Returns:
        The manifest (index order first, then unlisted keys shard by shard, each shard's in
        natural key order), with a finding for each disagreement: ``shard_missing``,
        ``index_key_absent``, ``index_key_misplaced``, ``index_key_unlisted``, ``duplicate_key``,
        ``total_size``.

    Example:
        >>> w = TensorSpec("w", (2,), "float32", 8, "a.safetensors")
        >>> m = index_manifest({"w": "a.safetensors", "v": "b.safetensors"}, {},
        ...                    {"a.safetensors": {"w": w}}, source="x", files=())
        >>> [f.kind for f in m.findings]
        ['shard_missing']
    """
    shards = list(dict.fromkeys(weight_map.values()))
    agreed = _agreed_tensors(weight_map, shards, shard_specs)
    if agreed is not None:
        return _sharded_manifest(agreed, index_meta, shards, [], [], source, files, unsafe)
    findings: list[Finding] = []
    found: dict[str, TensorSpec] = {}
    where: dict[str, list[str]] = {}
    missing_files: list[str] = []
    for name in shards:
        if name not in shard_specs:
            missing_files.append(name)
            continue
        specs = shard_specs[name]
        for key in natural_order(specs):  # a shard's keys as people sort them
            where.setdefault(key, []).append(name)
            found.setdefault(key, specs[key])

    missing_set = set(missing_files)  # a set: an index may name 60,000 absent shards
    if missing_files:
        lost = [k for k, v in weight_map.items() if v in missing_set]
        shown = ", ".join(missing_files[:5]) + (", ..." if len(missing_files) > 5 else "")
        findings.append(
            Finding(
                "shard_missing",
                f"{len(missing_files)} shard file(s) named by the index are not in the folder: "
                f"{shown} ({len(lost)} tensors cannot be read).",
                tuple(missing_files),
                "error",
                {"tensors": len(lost)},
            )
        )
    absent = [k for k, v in weight_map.items() if v not in missing_set and k not in where]
    if absent:
        findings.append(
            Finding(
                "index_key_absent",
                f"{len(absent)} key(s) the index lists are in none of the shards, "
                f"e.g. '{absent[0]}'.",
                tuple(absent),
                "error",
            )
        )
    misplaced = [k for k, v in weight_map.items() if k in where and v not in where[k]]
    if misplaced:
        findings.append(
            Finding(
                "index_key_misplaced",
                f"{len(misplaced)} key(s) are in another shard than the index says, e.g. "
                f"'{misplaced[0]}' (index: {weight_map[misplaced[0]]}, found in "
                f"{', '.join(where[misplaced[0]])}).",
                tuple(misplaced),
                "error",
            )
        )
    unlisted = [k for k in where if k not in weight_map]
    if unlisted:
        findings.append(
            Finding(
                "index_key_unlisted",
                f"{len(unlisted)} key(s) are in shards but not in the index, e.g. '{unlisted[0]}' "
                f"(in {where[unlisted[0]][0]}).",
                tuple(unlisted),
                "warning",
            )
        )
    doubled = [k for k, v in where.items() if len(v) > 1]
    if doubled:
        findings.append(
            Finding(
                "duplicate_key",
                f"{len(doubled)} key(s) are in more than one shard, e.g. '{doubled[0]}' in "
                f"{', '.join(where[doubled[0]])}.",
                tuple(doubled),
                "error",
            )
        )

    # index order first, then unlisted keys shard by shard (each in natural key order)
    tensors: dict[str, TensorSpec] = {}
    for key in weight_map:
        if key in found:
            tensors[key] = found[key]
    for key in unlisted:
        tensors[key] = found[key]
    return _sharded_manifest(
        tensors, index_meta, shards, missing_files, findings, source, files, unsafe
    )


def _agreed_tensors(
    weight_map: Mapping[str, str],
    shards: list[str],
    shard_specs: Mapping[str, Mapping[str, TensorSpec]],
) -> dict[str, TensorSpec] | None:
    """The tensors in index order when every shard was read and the index and the shards agree
    (each key in exactly the shard the index names, none unlisted, none twice); else None."""
    if not all(name in shard_specs for name in shards):
        return None
    shard_of: dict[str, str] = {}
    found: dict[str, TensorSpec] = {}
    for name in shards:
        specs = shard_specs[name]
        shard_of.update(dict.fromkeys(specs, name))
        found.update(specs)
    if sum(len(shard_specs[name]) for name in shards) != len(found) or shard_of != weight_map:
        return None
    return dict(zip(weight_map, map(found.__getitem__, weight_map), strict=True))


def _sharded_manifest(
    tensors: dict[str, TensorSpec],
    index_meta: Mapping[str, Any],
    shards: list[str],
    missing_files: list[str],
    findings: list[Finding],
    source: str,
    files: tuple[str, ...],
    unsafe: Iterable[Finding],
) -> Manifest:
    """The sharded manifest, with the index's ``total_size`` checked against the tensors."""
    total = index_meta.get("total_size")
    stored = sum(filter(None, map(attrgetter("nbytes"), tensors.values())))
    if isinstance(total, float) and not math.isfinite(total):
        findings.append(
            Finding(
                "total_size",
                f"the index says total_size {total}, not a number of bytes.",
                (),
                "warning",
                {"index_total_size": str(total), "tensor_bytes": stored},
            )
        )
    elif isinstance(total, (int, float)) and not missing_files and int(total) != stored:
        findings.append(
            Finding(
                "total_size",
                f"the index says total_size {int(total):,} bytes but its tensors take {stored:,}.",
                (),
                "warning",
                {"index_total_size": int(total), "tensor_bytes": stored},
            )
        )

    kinds = {os.path.splitext(s)[1] for s in shards}
    fmt = "safetensors-sharded" if kinds == {".safetensors"} else "torch-sharded"
    return Manifest(
        source=source,
        format=fmt,
        tensors=tensors,
        files=tuple(files),
        metadata={k: v for k, v in index_meta.items() if isinstance(v, (str, int, float, bool))},
        findings=(*unsafe, *findings),
    )
