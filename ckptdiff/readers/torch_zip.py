"""torch's zip format (``torch.save`` since 1.6): ``data.pkl`` and the zip directory, nothing more.

An archive holds ``<prefix>/data.pkl`` (the pickled object, storages by key), one
``<prefix>/data/<key>`` record per storage, and small records (``version``, ``byteorder``...).
The reader reads the zip's end record, its central directory and ``data.pkl``; storage records
are only checked by their declared sizes, never read.

The zip structures are parsed here rather than with :mod:`zipfile`: ``zipfile.ZipFile`` builds a
``ZipInfo`` per entry, which costs more than the whole pickle for a checkpoint with tens of
thousands of tensors, and parsing from bytes lets a remote reader feed the same pure steps
(:func:`parse_end_record`, :func:`parse_central_directory`, :func:`archive_prefix`,
:func:`manifest_from_zip_parts`) from range requests.
"""

from __future__ import annotations

import gc
import itertools
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import BinaryIO, NamedTuple

from ckptdiff.errors import (
    ReadError,
    UnsafeCheckpointError,
    UnsafeUnreadableError,
    UnsupportedFormatError,
)
from ckptdiff.readers import unpickler as _unpickler
from ckptdiff.readers.containers import select_state_dict, specs_from_tensors
from ckptdiff.readers.unpickler.records import StorageRef
from ckptdiff.readers.unpickler.restricted import Unpickled, unpickle
from ckptdiff.types import Finding, Manifest

__all__ = [
    "MAX_ZIP_ENTRIES",
    "ZipEntry",
    "archive_prefix",
    "check_entry",
    "check_storage_records",
    "decode_entry",
    "display_name",
    "local_data_offset",
    "manifest_from_zip_parts",
    "parse_central_directory",
    "parse_end_record",
    "parse_zip64_end_record",
    "read_torch_zip",
    "unpickle_torch_zip",
]

#: Most entries a torch zip may hold (one per storage, plus a handful).
MAX_ZIP_ENTRIES = 1_000_000
#: A deflated entry may declare at most this many times its compressed size (past
#: :data:`INFLATE_FLOOR`): torch stores its records uncompressed, a pickle deflates to no better
#: than about 10:1, and deflate tops out near 1032:1 on a zip bomb.
MAX_INFLATE_RATIO = 100
#: Deflated entries up to this size are inflated whatever their ratio.
INFLATE_FLOOR = 1 << 20
_FIX_CORRUPT = "The file is truncated or corrupt; download or save it again."


def display_name(path: str, source: str) -> str:
    """The name messages use for ``path``: the source string when it names this very file."""
    try:
        same = os.path.samefile(os.path.expanduser(source), path)
    except OSError:
        same = False
    return source if same else path


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
    pickles = sorted(n for n in names if n.endswith("data.pkl") and _is_pickle(n))
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
                f"archive has no such record. {_FIX_CORRUPT}"
            )
        if size != storage[2] * storage[1].itemsize:  # storage.nbytes, without the property
            raise ReadError(
                f"Cannot read '{name}' ({record}): the record holds {size} bytes but data.pkl "
                f"declares {storage.numel} {storage.dtype.name} elements ({storage.nbytes} "
                f"bytes). {_FIX_CORRUPT}"
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
            f"{byteorder[:16]!r}. {_FIX_CORRUPT}"
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
        if member.startswith(("/", "\\")) or ".." in parts or (len(member) > 1
                                                                 and member[1] == ":"):
            out.append(Finding(
                kind="zip_slip",
                message=(f"the zip holds a member named {member!r}, which leaves the folder it "
                         "is extracted into; torch never writes such names"),
                keys=(member,),
                severity="security",
            ))
            if len(out) >= 20:
                break
    return out


# --- zip structures ----------------------------------------------------------------------------


class ZipEntry(NamedTuple):
    """One central directory entry: what is needed to find and check an entry's bytes."""

    name: str
    size: int
    compressed_size: int
    offset: int
    method: int
    crc: int
    flags: int


_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
#: The fields of :data:`_CENTRAL` a reader uses (signature, flags, method, CRC, sizes, name,
#: extra and comment lengths, offset), the others skipped as padding.
_CENTRAL_USED = struct.Struct("<4s4x2H4x3L3H8xL")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
#: Bytes to read from the end of a zip to find its end record (record + longest comment).
END_SEARCH_SIZE = _END.size + 0xFFFF


def _zip_error(name: str, context: str, problem: str) -> ReadError:
    return ReadError(f"Cannot read '{name}' ({context}): {problem}. {_FIX_CORRUPT}")


def parse_end_record(tail: bytes, tail_offset: int, name: str) -> tuple[int, int, int, int | None]:
    """Find and decode a zip's end of central directory record.

    Args:
        tail: the last bytes of the file (up to :data:`END_SEARCH_SIZE`).
        tail_offset: the file offset of ``tail[0]``.
        name: the file, for messages.

    Returns:
        ``(entries, directory_offset, directory_size, zip64_record_offset)``; when the last is
        not None, the zip64 end record there holds the real values (see
        :func:`parse_zip64_end_record`).

    Raises:
        ReadError: no end record (a truncated file or not a zip), or a split archive.

    Example:
        >>> parse_end_record(b"PK\\x05\\x06" + bytes(18), 100, "x.pt")
        (0, 0, 0, None)
    """
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _END.size > len(tail):
        raise _zip_error(name, "zip directory", "no end of central directory record (truncated?)")
    _, disk, cd_disk, _, entries, cd_size, cd_offset, _ = _END.unpack_from(tail, at)
    if disk or cd_disk:
        raise _zip_error(name, "zip directory", "it is one part of a split archive")
    if 0xFFFF in (entries,) or 0xFFFFFFFF in (cd_size, cd_offset):
        locator = at - _END64_LOCATOR.size
        if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
            raise _zip_error(name, "zip directory", "the zip64 end record locator is missing")
        _, _, record, _ = _END64_LOCATOR.unpack_from(tail, locator)
        return entries, cd_offset, cd_size, record
    return entries, cd_offset, cd_size, None


def parse_zip64_end_record(record: bytes, name: str) -> tuple[int, int, int]:
    """Decode a zip64 end record: ``(entries, directory_offset, directory_size)``."""
    if len(record) < _END64.size or record[:4] != b"PK\x06\x06":
        raise _zip_error(name, "zip directory", "the zip64 end record is missing")
    fields = _END64.unpack_from(record)
    return fields[7], fields[9], fields[8]


def parse_central_directory(directory: bytes, entries: int, name: str) -> dict[str, ZipEntry]:
    """Decode a zip's central directory into entries by name.

    Every ``data.pkl`` entry is checked by :func:`check_entry` here, so a zip bomb is refused
    before any size limit is applied to it, by every reader of the directory.

    Raises:
        ReadError: a malformed entry or a directory shorter than it declares; a ``data.pkl``
            that :func:`check_entry` refuses as corrupt.
        UnsafeCheckpointError: two entries share a name (loaders disagree on which they read);
            a ``data.pkl`` that is a zip bomb.
    """
    unpack = _CENTRAL_USED.unpack_from
    fixed = _CENTRAL_USED.size
    size = len(directory)
    out: dict[str, ZipEntry] = {}
    new_entry = tuple.__new__
    pos = 0
    for _ in range(entries):
        if pos + fixed > size:
            raise _zip_error(name, "zip directory", "the central directory is cut short")
        sig, flags, method, crc, csize, usize, nlen, xlen, clen, offset = unpack(directory, pos)
        if sig != b"PK\x01\x02":
            raise _zip_error(name, "zip directory", f"bad central directory entry at byte {pos}")
        start = pos + fixed
        pos = start + nlen + xlen + clen
        if pos > size:
            raise _zip_error(name, "zip directory", "the central directory is cut short")
        entry_name = directory[start : start + nlen].decode(
            "utf-8" if flags & 0x800 else "cp437", "replace"
        )
        if usize == 0xFFFFFFFF or csize == 0xFFFFFFFF or offset == 0xFFFFFFFF:
            usize, csize, offset = _zip64_extra(
                directory[start + nlen : start + nlen + xlen], usize, csize, offset, name
            )
        if entry_name in out:
            raise UnsafeCheckpointError(
                f"Cannot read '{name}' (zip directory): two entries are named {entry_name!r}; "
                "zip readers disagree on which one they use, so what a checker reads need not be "
                "what torch.load runs. Refusing to guess."
            )
        # ZipEntry's fields in order, without NamedTuple's Python-level __new__
        entry = new_entry(ZipEntry, (entry_name, usize, csize, offset, method, crc, flags))
        if entry_name.endswith("data.pkl") and _is_pickle(entry_name):
            check_entry(entry, name)
        out[entry_name] = entry
    return out


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int, name: str) -> tuple[int, ...]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag == 1:
            count = min(length, len(extra) - pos - 4) // 8
            values = list(struct.unpack_from(f"<{count}Q", extra, pos + 4))
            fields = [usize, csize, offset]
            for i, v in enumerate(fields):
                if v == 0xFFFFFFFF:
                    if not values:
                        break
                    fields[i] = values.pop(0)
            return tuple(fields)
        pos += 4 + length
    raise _zip_error(name, "zip directory", "an entry lacks its zip64 sizes")


def local_data_offset(header: bytes, entry: ZipEntry, name: str) -> int:
    """Where an entry's bytes start, from its 30-byte local header."""
    if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
        raise _zip_error(name, entry.name, "its local header is missing")
    fields = _LOCAL.unpack_from(header)
    return entry.offset + _LOCAL.size + fields[10] + fields[11]


def _is_pickle(entry_name: str) -> bool:
    """Whether an entry is a ``data.pkl`` that :func:`archive_prefix` may choose."""
    return entry_name == "data.pkl" or (
        entry_name.endswith("/data.pkl") and entry_name.count("/") == 1
    )


def check_entry(entry: ZipEntry, name: str) -> None:
    """Refuse an entry from its directory fields alone, before any size limit or read.

    Run on every ``data.pkl`` as the directory is parsed, and on every entry before it is
    decoded: a zip bomb is a security finding, not a file too large to read.

    Raises:
        UnsafeCheckpointError: a deflated entry declaring over :data:`MAX_INFLATE_RATIO` times
            its compressed size (and over :data:`INFLATE_FLOOR`): a zip bomb.
        ReadError: an encrypted entry, an unknown compression method, or a stored entry whose
            declared size is not its stored size.

    Example:
        >>> check_entry(ZipEntry("archive/data.pkl", 10, 10, 0, 0, 0, 0), "x.pt")  # stored
        >>> check_entry(ZipEntry("archive/data.pkl", 1 << 30, 1 << 20, 0, 8, 0, 0), "x.pt")
        ... # doctest: +SKIP
        UnsafeCheckpointError: Cannot read 'x.pt' (archive/data.pkl): a zip bomb: ...
    """
    if entry.flags & 0x1:
        raise _zip_error(name, entry.name, "the entry is encrypted")
    if entry.method == 0:
        if entry.size != entry.compressed_size:
            raise _zip_error(
                name,
                entry.name,
                f"the entry is stored uncompressed in {entry.compressed_size} bytes but declares "
                f"{entry.size}",
            )
    elif entry.method == 8:
        if entry.size > max(INFLATE_FLOOR, MAX_INFLATE_RATIO * entry.compressed_size):
            ratio = (
                f"{entry.size // entry.compressed_size}:1"
                if entry.compressed_size
                else "from nothing"
            )
            raise UnsafeCheckpointError(
                f"Cannot read '{name}' ({entry.name}): a zip bomb: {entry.compressed_size} "
                f"deflated bytes declare {entry.size} bytes inflated ({ratio}, over the "
                f"{MAX_INFLATE_RATIO}:1 a checkpoint reader accepts). Refusing to inflate it; "
                "torch.load would."
            )
    else:
        raise _zip_error(name, entry.name, f"unsupported compression method {entry.method}")


def decode_entry(raw: bytes, entry: ZipEntry, name: str) -> bytes:
    """An entry's bytes from its stored (maybe deflated) bytes, with length and CRC checked.

    Raises:
        UnsafeCheckpointError, ReadError: see :func:`check_entry`; also bytes that do not
            inflate, or whose length or CRC disagree with the directory.
    """
    check_entry(entry, name)
    if len(raw) != entry.compressed_size:
        raise _zip_error(name, entry.name, "the file ends inside this entry")
    if entry.method == 0:
        data = raw
    else:
        try:
            data = zlib.decompressobj(-15).decompress(raw, entry.size + 1)
        except zlib.error as e:
            raise _zip_error(name, entry.name, f"it does not inflate ({e})") from e
    if len(data) != entry.size:
        raise _zip_error(name, entry.name, f"it holds {len(data)} bytes, not {entry.size}")
    if zlib.crc32(data) != entry.crc:
        raise _zip_error(name, entry.name, "its CRC does not match")
    return data


def _read_directory(f: BinaryIO, size: int, name: str) -> dict[str, ZipEntry]:
    # torch writes no archive comment: the end record is in the last bytes; look further only
    # when it is not
    for span in (min(size, 1024), min(size, END_SEARCH_SIZE)):
        f.seek(size - span)
        tail = f.read(span)
        if b"PK\x05\x06" in tail or span == size:
            break
    entries, cd_offset, cd_size, record = parse_end_record(tail, size - span, name)
    if record is not None:
        f.seek(record)
        entries, cd_offset, cd_size = parse_zip64_end_record(f.read(_END64.size), name)
    if entries > MAX_ZIP_ENTRIES:
        raise ReadError(
            f"Cannot read '{name}' (zip directory): it declares {entries} entries, more than "
            f"the {MAX_ZIP_ENTRIES} a checkpoint reader accepts. Raise "
            "ckptdiff.readers.torch_zip.MAX_ZIP_ENTRIES if you trust the file."
        )
    if cd_offset + cd_size > size:
        raise _zip_error(name, "zip directory", "the central directory lies past the end")
    f.seek(cd_offset)
    return parse_central_directory(f.read(cd_size), entries, name)


def _read_entry(f: BinaryIO, entry: ZipEntry, size: int, name: str) -> bytes:
    if entry.offset + _LOCAL.size > size:
        raise _zip_error(name, entry.name, "its local header lies past the end")
    f.seek(entry.offset)
    start = local_data_offset(f.read(_LOCAL.size), entry, name)
    if start + entry.compressed_size > size:
        raise _zip_error(name, entry.name, "the file ends inside this entry")
    f.seek(start)
    return decode_entry(f.read(entry.compressed_size), entry, name)


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
    name = display_name(path, source)
    with _gc_paused():  # tens of thousands of small acyclic objects: no collection pays off
        entries, prefix, data, byteorder = _read_data_pkl(path, name)
        return manifest_from_zip_parts(
            data,
            {e.name: e.size for e in entries.values()},
            prefix,
            name=name,
            source=source,
            file=os.path.basename(path),
            files=(path,),
            select=select,
            byteorder=byteorder,
        )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (it is back on after, if it was on)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_data_pkl(path: str, name: str) -> tuple[dict[str, ZipEntry], str, bytes, bytes | None]:
    """``(entries, prefix, data.pkl bytes, byteorder bytes)`` of a local torch zip file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        entries = _read_directory(f, size, name)
        prefix = archive_prefix(entries, name)
        pkl = entries[f"{prefix}data.pkl"]
        if pkl.size > _unpickler.MAX_PICKLE_SIZE:
            raise ReadError(
                f"Cannot read '{name}' ({pkl.name}): it is {pkl.size} bytes, over the "
                f"{_unpickler.MAX_PICKLE_SIZE}-byte limit. Raise "
                "ckptdiff.readers.unpickler.MAX_PICKLE_SIZE if you trust the file."
            )
        data = _read_entry(f, pkl, size, name)
        order = entries.get(f"{prefix}byteorder")
        byteorder = _read_entry(f, order, size, name) if order and order.size <= 16 else None
    return entries, prefix, data, byteorder


def pickle_security_findings(path: str, source: str) -> list[Finding]:
    """The security findings of a torch zip's ``data.pkl``, for files a reader skips (other
    data-parallel ranks, optimizer states): nothing it skips goes unscanned.

    A file that cannot be read yields no findings here (it is not the one being read); a
    payload before its defect is still reported.
    """
    try:
        name = display_name(path, source)
        entries, prefix, data, _ = _read_data_pkl(path, name)
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
    entries, prefix, data, _ = _read_data_pkl(path, name)
    unpickled = unpickle(data, name, context=f"{prefix}data.pkl", storage_form="zip")
    check_storage_records(unpickled.storages, {e.name: e.size for e in entries.values()},
                          prefix, name)
    return unpickled
