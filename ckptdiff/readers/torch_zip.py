"""torch's zip format (``torch.save`` since 1.6): ``data.pkl`` and the zip directory, nothing more.

An archive holds ``<prefix>/data.pkl`` (the pickled object, storages by key), one
``<prefix>/data/<key>`` record per storage, and small records (``version``, ``byteorder``...).
The reader reads the zip's end record, its central directory and ``data.pkl``; storage records
are only checked by their declared sizes, never read. It reads over a byte source
(:func:`read_zip_source`): a local file (:func:`read_torch_zip`) and a hub file's range
requests go through the same steps; the zip structures are :mod:`ckptdiff.readers.zip_format`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping

from ckptdiff.errors import (
    ReadError,
    UnsafeUnreadableError,
    UnsupportedFormatError,
)
from ckptdiff.gc_pause import gc_paused
from ckptdiff.readers import unpickler as _unpickler
from ckptdiff.readers.byte_source import ByteSource, LocalFile, display_name
from ckptdiff.readers.containers import select_state_dict
from ckptdiff.readers.tensor_specs import specs_from_tensors
from ckptdiff.readers.unpickler.records import StorageRef
from ckptdiff.readers.unpickler.restricted import Unpickled, unpickle
from ckptdiff.readers.zip_format import (
    END_SEARCH_SIZE,
    FIX_CORRUPT,
    ZIP64_END_SIZE,
    ZipEntry,
    decode_entry,
    is_data_pkl,
    local_data_offset,
    parse_central_directory,
    parse_end_record,
    parse_zip64_end_record,
    read_central_directory,
    read_end_record,
    read_entries,
    read_entry,
)
from ckptdiff.types import Finding, Manifest

__all__ = [
    # the zip structures, for readers of zips inside other files (DCP blobs)
    "END_SEARCH_SIZE",
    "ZIP64_END_SIZE",
    "decode_entry",
    "local_data_offset",
    "parse_central_directory",
    "parse_end_record",
    "parse_zip64_end_record",
    "read_entry",
    # torch's archives
    "MAX_ZIP_ENTRIES",
    "archive_prefix",
    "check_storage_records",
    "manifest_from_zip_parts",
    "pickle_security_findings",
    "read_directory",
    "read_torch_zip",
    "read_zip_source",
    "unpickle_torch_zip",
    "zip_slip_findings",
]

#: Most entries a torch zip may hold (one per storage, plus a handful).
MAX_ZIP_ENTRIES = 1_000_000


def archive_prefix(names: Iterable[str], name: str) -> str:
    """The folder of a torch zip that holds ``data.pkl`` (``archive/``, ``<stem>/``...).

    Args:
        names: every entry name of the zip.
        name: the file, for messages.

    Returns:
        The prefix, with its trailing slash (``""`` for a flat archive).

    Raises:
        UnsupportedFormatError: the archive is a TorchScript module.
        ReadError: no ``data.pkl``, or several.

    Example:
        >>> archive_prefix(["archive/data.pkl", "archive/data/0", "archive/version"], "x.pt")
        'archive/'
    """
    names = list(names)
    pickles = sorted(n for n in names if n.endswith("data.pkl") and is_data_pkl(n))
    prefixes = {n[: -len("data.pkl")] for n in pickles}
    for prefix in sorted(prefixes) or [""]:
        code = itertools.repeat(f"{prefix}code/")
        if f"{prefix}constants.pkl" in names or any(map(str.startswith, names, code)):
            raise UnsupportedFormatError(
                f"Cannot read '{name}' (TorchScript archive): this is a TorchScript module saved "
                "with torch.jit.save, not a checkpoint. Load it with torch.jit.load and save its "
                "state_dict() with torch.save or safetensors."
            )
    if not pickles:
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise ReadError(
            f"Cannot read '{name}' (zip): it holds no data.pkl, so it is not a torch checkpoint "
            f"(entries: {shown or 'none'}). Pass the checkpoint file itself."
        )
    if len(pickles) > 1:
        raise ReadError(
            f"Cannot read '{name}' (zip): it holds several data.pkl ({', '.join(pickles)}). "
            "Extract the checkpoint you mean and pass it alone."
        )
    return pickles[0][: -len("data.pkl")]


def check_storage_records(
    storages: Mapping[str, StorageRef], record_sizes: Mapping[str, int], prefix: str, name: str
) -> None:
    """Check that every storage the pickle names has a record of exactly its size.

    Raises:
        ReadError: a record is missing or its size disagrees with the pickle.
    """
    folder = f"{prefix}data/"
    size_of = record_sizes.get
    for key, storage in storages.items():
        record = folder + key
        size = size_of(record)
        if size is None:
            raise ReadError(
                f"Cannot read '{name}' ({record}): data.pkl names storage '{key}' but the "
                f"archive has no such record. {FIX_CORRUPT}"
            )
        if size != storage[2] * storage[1].itemsize:  # storage.nbytes, without the property
            raise ReadError(
                f"Cannot read '{name}' ({record}): the record holds {size} bytes but data.pkl "
                f"declares {storage.numel} {storage.dtype.name} elements ({storage.nbytes} "
                f"bytes). {FIX_CORRUPT}"
            )


def manifest_from_zip_parts(
    data_pkl: bytes,
    record_sizes: Mapping[str, int],
    prefix: str,
    *,
    name: str,
    source: str,
    file: str,
    files: tuple[str, ...],
    select: str | None = None,
    byteorder: bytes | None = None,
) -> Manifest:
    """Build a torch zip's manifest from its ``data.pkl`` bytes and its record sizes.

    Args:
        data_pkl: the bytes of ``<prefix>data.pkl``.
        record_sizes: entry name -> uncompressed size, for every entry of the archive.
        prefix: the archive folder (see :func:`archive_prefix`).
        name: the file, for messages.
        source: the source string, for :attr:`Manifest.source`.
        file: the name recorded as :attr:`TensorSpec.file`.
        files: the files read.
        select: the dotted path of the state dict inside a container.
        byteorder: the ``byteorder`` record, when present.

    Raises:
        ReadError: data.pkl is malformed or disagrees with the records.
        SelectError: see :func:`~ckptdiff.readers.containers.select_state_dict`.
    """
    findings: list[Finding] = []
    if byteorder is not None and byteorder not in (b"little", b"big"):
        raise ReadError(
            f"Cannot read '{name}' ({prefix}byteorder): unknown byte order "
            f"{byteorder[:16]!r}. {FIX_CORRUPT}"
        )
    if byteorder == b"big":
        findings.append(
            Finding(
                kind="byteorder",
                message="the tensors were saved big-endian; torch swaps them on load",
                severity="info",
            )
        )
    findings += zip_slip_findings(record_sizes)
    unpickled = unpickle(data_pkl, name, context=f"{prefix}data.pkl", storage_form="zip")
    check_storage_records(unpickled.storages, record_sizes, prefix, name)
    selection = select_state_dict(unpickled.root, name, select=select)
    return Manifest(
        source=source,
        format="torch-zip",
        tensors=specs_from_tensors(selection.tensors, file),
        files=files,
        metadata=selection.metadata,
        findings=(*unpickled.findings, *findings, *selection.findings),
        selected=selection.selected,
        candidates=selection.candidates,
    )


def zip_slip_findings(names: Iterable[str]) -> list[Finding]:
    """A security finding for each member named with a ``..`` part or an absolute path.

    torch never writes such names; an unzip tool (or a loader that extracts the archive) would
    write them outside the folder it extracts into (zip-slip).
    """
    names = list(names)
    joined = "\n" + "\n".join(names)
    if not any(mark in joined for mark in ("..", "\\", "\n/", ":")):  # nothing can match below
        return []
    out = []
    for member in names:
        parts = member.replace("\\", "/").split("/")
        if (
            member.startswith(("/", "\\"))
            or ".." in parts
            or (len(member) > 1 and member[1] == ":")
        ):
            out.append(
                Finding(
                    kind="zip_slip",
                    message=(
                        f"the zip holds a member named {member!r}, which leaves the folder it "
                        "is extracted into; torch never writes such names"
                    ),
                    keys=(member,),
                    severity="security",
                )
            )
            if len(out) >= 20:
                break
    return out


def read_torch_zip(path: str, source: str, *, select: str | None = None) -> Manifest:
    """Read a torch zip checkpoint's keys, shapes and dtypes from ``data.pkl`` alone.

    Args:
        path: the file.
        source: the source string as the user gave it.
        select: the dotted path of the state dict inside a container (``model_ema``).

    Returns:
        A ``torch-zip`` :class:`Manifest`; security findings for globals outside the allow-list.

    Raises:
        ReadError: truncated or corrupt zip, no data.pkl, a malformed pickle, storage records
            that disagree with the pickle.
        UnsupportedFormatError: a TorchScript archive.
        SelectError: ``select`` names no state dict, or the container is ambiguous.

    Example:
        >>> m = read_torch_zip("model.pt", "model.pt")  # doctest: +SKIP
        >>> m.format, m.tensors["fc.weight"].shape  # doctest: +SKIP
        ('torch-zip', (10, 512))
    """
    with LocalFile.open(path, display_name(path, source)) as src:
        return read_zip_source(src, source=source, file=os.path.basename(path), select=select)


def read_zip_source(
    src: ByteSource,
    *,
    source: str,
    file: str,
    select: str | None = None,
    tail: tuple[int, bytes] | None = None,
) -> Manifest:
    """Read a torch zip from a byte source: end record, directory, ``data.pkl`` (and the tiny
    ``byteorder`` record next to it); storages are never read.

    Args:
        src: the file (its :attr:`~ByteSource.name` names it in messages).
        source: the source string, for :attr:`Manifest.source`.
        file: the name recorded as :attr:`TensorSpec.file`.
        select: the dotted path of the state dict inside a container.
        tail: ``(offset, bytes)`` of the file's end, when already read.

    Raises:
        ReadError, UnsupportedFormatError, SelectError: as :func:`read_torch_zip`.
    """
    with gc_paused():  # tens of thousands of small acyclic objects: no collection pays off
        entries, prefix, data, byteorder = _read_data_pkl(src, tail)
        return manifest_from_zip_parts(
            data,
            {e.name: e.size for e in entries.values()},
            prefix,
            name=src.name,
            source=source,
            file=file,
            files=(src.location,),
            select=select,
            byteorder=byteorder,
        )


def read_directory(
    src: ByteSource, name: str, tail: tuple[int, bytes] | None = None
) -> tuple[dict[str, ZipEntry], int]:
    """A torch zip's central directory by entry name, and the directory's offset.

    Raises:
        ReadError: a zip that is truncated or corrupt, or has over :data:`MAX_ZIP_ENTRIES`.
        UnsafeCheckpointError: see :func:`~ckptdiff.readers.zip_format.parse_central_directory`.
    """
    entries, cd_offset, cd_size = read_end_record(src, name, tail)
    if entries > MAX_ZIP_ENTRIES:
        raise ReadError(
            f"Cannot read '{name}' (zip directory): it declares {entries} entries, more than "
            f"the {MAX_ZIP_ENTRIES} a checkpoint reader accepts. Raise "
            "ckptdiff.readers.torch_zip.MAX_ZIP_ENTRIES if you trust the file."
        )
    return read_central_directory(src, entries, cd_offset, cd_size, name), cd_offset


def _read_data_pkl(
    src: ByteSource, tail: tuple[int, bytes] | None = None
) -> tuple[dict[str, ZipEntry], str, bytes, bytes | None]:
    """``(entries, prefix, data.pkl bytes, byteorder bytes)`` of a torch zip."""
    name = src.name
    entries, cd_offset = read_directory(src, name, tail)
    prefix = archive_prefix(entries, name)
    pkl = entries[f"{prefix}data.pkl"]
    size = max(pkl.size, pkl.compressed_size)
    if size > _unpickler.MAX_PICKLE_SIZE:
        raise ReadError(
            f"Cannot read '{name}' ({pkl.name}): it is {size} bytes, over the "
            f"{_unpickler.MAX_PICKLE_SIZE}-byte limit. Raise "
            "ckptdiff.readers.unpickler.MAX_PICKLE_SIZE if you trust the file."
        )
    order = entries.get(f"{prefix}byteorder")
    wanted = [pkl] + ([order] if order is not None and order.size <= 16 else [])
    blobs = read_entries(src, entries, wanted, cd_offset, prefix, name)
    return entries, prefix, blobs[pkl.name], blobs.get(order.name) if order else None


def pickle_security_findings(path: str, source: str) -> list[Finding]:
    """The security findings of a torch zip's ``data.pkl``, for files a reader skips (other
    data-parallel ranks, optimizer states): nothing it skips goes unscanned.

    A file that cannot be read yields no findings here (it is not the one being read); a
    payload before its defect is still reported.
    """
    try:
        with LocalFile.open(path, display_name(path, source)) as src:
            entries, prefix, data, _ = _read_data_pkl(src)
        name = src.name
        unpickled = unpickle(data, name, context=f"{prefix}data.pkl", storage_form="zip")
    except UnsafeUnreadableError as e:
        return [Finding("unsafe_file", str(e), (), "security")]
    except (ReadError, OSError):
        return []
    found = [f for f in unpickled.findings if f.severity == "security"]
    return found + zip_slip_findings(entries)


def unpickle_torch_zip(path: str, source: str) -> Unpickled:
    """The whole unpickled ``data.pkl`` of a torch zip file, storage records checked.

    For readers of training-stack layouts that need the entries around the state dict
    (DeepSpeed's ``param_shapes``, ``buffer_names``...), not only the state dict itself.

    Raises:
        ReadError: as :func:`read_torch_zip`.
    """
    name = display_name(path, source)
    with LocalFile.open(path, name) as src:
        entries, prefix, data, _ = _read_data_pkl(src)
    unpickled = unpickle(data, name, context=f"{prefix}data.pkl", storage_form="zip")
    check_storage_records(
        unpickled.storages, {e.name: e.size for e in entries.values()}, prefix, name
    )
    return unpickled
