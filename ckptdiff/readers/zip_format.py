"""The zip format, parsed from bytes and read over a byte source.

Only what a checkpoint reader needs: the end record (zip64 too), the central directory, local
headers, and one entry's bytes (inflated, length and CRC checked). The structures are parsed here
rather than with :mod:`zipfile`: ``zipfile.ZipFile`` builds a ``ZipInfo`` per entry, which costs
more than the whole pickle for a checkpoint with tens of thousands of tensors, and parsing from
bytes lets one reader serve local files and HTTP ranges alike.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import NamedTuple

from ckptdiff.errors import ReadError, UnsafeCheckpointError
from ckptdiff.readers.byte_source import ByteSource

__all__ = [
    "END_SEARCH_SIZE",
    "FIX_CORRUPT",
    "INFLATE_FLOOR",
    "MAX_INFLATE_RATIO",
    "ZIP64_END_SIZE",
    "ZipEntry",
    "check_entry",
    "decode_entry",
    "is_data_pkl",
    "local_data_offset",
    "parse_central_directory",
    "parse_end_record",
    "parse_zip64_end_record",
    "read_central_directory",
    "read_end_record",
    "read_entries",
    "read_entry",
    "zip_error",
]

#: A deflated entry may declare at most this many times its compressed size (past
#: :data:`INFLATE_FLOOR`): torch stores its records uncompressed, a pickle deflates to no better
#: than about 10:1, and deflate tops out near 1032:1 on a zip bomb.
MAX_INFLATE_RATIO = 100
#: Deflated entries up to this size are inflated whatever their ratio.
INFLATE_FLOOR = 1 << 20
FIX_CORRUPT = "The file is truncated or corrupt; download or save it again."
#: Bytes read first from the end of a zip: torch writes no archive comment, so its end record
#: is there; the search goes back :data:`END_SEARCH_SIZE` bytes only when it is not.
TAIL_SIZE = 1024


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
#: Bytes of a zip64 end record.
ZIP64_END_SIZE = _END64.size


def zip_error(name: str, context: str, problem: str) -> ReadError:
    return ReadError(f"Cannot read '{name}' ({context}): {problem}. {FIX_CORRUPT}")


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
        raise zip_error(name, "zip directory", "no end of central directory record (truncated?)")
    _, disk, cd_disk, _, entries, cd_size, cd_offset, _ = _END.unpack_from(tail, at)
    if disk or cd_disk:
        raise zip_error(name, "zip directory", "it is one part of a split archive")
    if 0xFFFF in (entries,) or 0xFFFFFFFF in (cd_size, cd_offset):
        locator = at - _END64_LOCATOR.size
        if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
            raise zip_error(name, "zip directory", "the zip64 end record locator is missing")
        _, _, record, _ = _END64_LOCATOR.unpack_from(tail, locator)
        return entries, cd_offset, cd_size, record
    return entries, cd_offset, cd_size, None


def parse_zip64_end_record(record: bytes, name: str) -> tuple[int, int, int]:
    """Decode a zip64 end record: ``(entries, directory_offset, directory_size)``."""
    if len(record) < _END64.size or record[:4] != b"PK\x06\x06":
        raise zip_error(name, "zip directory", "the zip64 end record is missing")
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
            raise zip_error(name, "zip directory", "the central directory is cut short")
        sig, flags, method, crc, csize, usize, nlen, xlen, clen, offset = unpack(directory, pos)
        if sig != b"PK\x01\x02":
            raise zip_error(name, "zip directory", f"bad central directory entry at byte {pos}")
        start = pos + fixed
        pos = start + nlen + xlen + clen
        if pos > size:
            raise zip_error(name, "zip directory", "the central directory is cut short")
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
        if entry_name.endswith("data.pkl") and is_data_pkl(entry_name):
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
    raise zip_error(name, "zip directory", "an entry lacks its zip64 sizes")


def local_data_offset(header: bytes, entry: ZipEntry, name: str) -> int:
    """Where an entry's bytes start, from its 30-byte local header."""
    if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
        raise zip_error(name, entry.name, "its local header is missing")
    fields = _LOCAL.unpack_from(header)
    return entry.offset + _LOCAL.size + fields[10] + fields[11]


def is_data_pkl(entry_name: str) -> bool:
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
        raise zip_error(name, entry.name, "the entry is encrypted")
    if entry.method == 0:
        if entry.size != entry.compressed_size:
            raise zip_error(
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
        raise zip_error(name, entry.name, f"unsupported compression method {entry.method}")


def decode_entry(raw: bytes, entry: ZipEntry, name: str) -> bytes:
    """An entry's bytes from its stored (maybe deflated) bytes, with length and CRC checked.

    Raises:
        UnsafeCheckpointError, ReadError: see :func:`check_entry`; also bytes that do not
            inflate, or whose length or CRC disagree with the directory.
    """
    check_entry(entry, name)
    if len(raw) != entry.compressed_size:
        raise zip_error(name, entry.name, "the file ends inside this entry")
    if entry.method == 0:
        data = raw
    else:
        try:
            data = zlib.decompressobj(-15).decompress(raw, entry.size + 1)
        except zlib.error as e:
            raise zip_error(name, entry.name, f"it does not inflate ({e})") from e
    if len(data) != entry.size:
        raise zip_error(name, entry.name, f"it holds {len(data)} bytes, not {entry.size}")
    if zlib.crc32(data) != entry.crc:
        raise zip_error(name, entry.name, "its CRC does not match")
    return data


# --- reading over a byte source -----------------------------------------------------------------


def read_end_record(
    src: ByteSource, name: str, tail: tuple[int, bytes] | None = None
) -> tuple[int, int, int]:
    """``(entries, directory_offset, directory_size)`` of the zip in ``src``.

    Args:
        src: the file.
        name: the file, for messages.
        tail: ``(offset, bytes)`` of the file's end, when already read.

    Raises:
        ReadError: see :func:`parse_end_record` and :func:`parse_zip64_end_record`.
    """
    tail_offset, data = tail if tail is not None else src.tail(TAIL_SIZE)
    if b"PK\x05\x06" not in data and tail_offset > 0:
        tail_offset, data = src.tail(END_SEARCH_SIZE)
    entries, cd_offset, cd_size, record = parse_end_record(data, tail_offset, name)
    if record is not None:
        record_bytes = src.read(record, ZIP64_END_SIZE)
        entries, cd_offset, cd_size = parse_zip64_end_record(record_bytes, name)
    return entries, cd_offset, cd_size


def read_central_directory(
    src: ByteSource, entries: int, offset: int, size: int, name: str
) -> dict[str, ZipEntry]:
    """The central directory at ``[offset, offset + size)`` of ``src``, by entry name.

    Raises:
        ReadError: the directory lies past the end of the file, or is malformed.
        UnsafeCheckpointError: see :func:`parse_central_directory`.
    """
    if src.size is not None and offset + size > src.size:
        raise zip_error(name, "zip directory", "the central directory lies past the end")
    return parse_central_directory(src.read(offset, size), entries, name)


def read_entry(src: ByteSource, entry: ZipEntry, name: str) -> bytes:
    """One entry's decoded bytes: its local header, then its data.

    Raises:
        ReadError, UnsafeCheckpointError: see :func:`decode_entry`; a local header past the end.
    """
    if src.size is not None and entry.offset + _LOCAL.size > src.size:
        raise zip_error(name, entry.name, "its local header lies past the end")
    start = local_data_offset(src.read(entry.offset, _LOCAL.size), entry, name)
    return decode_entry(src.read(start, entry.compressed_size), entry, name)


#: Bytes allowed for a local zip header's extra field when guessing where an entry ends.
_LOCAL_EXTRA_SLACK = 1024


def _span_end(entry: ZipEntry, next_offset: int) -> int:
    """Where to stop reading ``entry``: at the next entry, but never further than its local
    header and data can reach. A hostile zip may put its next entry gigabytes after
    ``data.pkl``; a local header with a longer extra field costs one more small read."""
    reach = entry.offset + 30 + len(entry.name.encode()) + _LOCAL_EXTRA_SLACK
    return min(next_offset, reach + entry.compressed_size)


def read_entries(
    src: ByteSource,
    directory: Mapping[str, ZipEntry],
    wanted: list[ZipEntry],
    directory_offset: int,
    prefix: str,
    name: str,
) -> dict[str, bytes]:
    """The decoded bytes of ``wanted`` entries, neighbours read together when reads are costly.

    A source without :attr:`~ByteSource.batch_reads` (a local file) reads each entry's local
    header, then its bytes. Otherwise each entry spans from its local header to the next entry
    (or the central directory), and wanted entries are read together when only small
    non-storage records lie between them, so
    ``data.pkl`` and ``byteorder`` (written next to each other by torch) cost one read (one
    range request) and no storage byte is read.

    Raises:
        ReadError, UnsafeCheckpointError: see :func:`read_entry`.
    """
    if not src.batch_reads:
        return {entry.name: read_entry(src, entry, name) for entry in wanted}
    ordered = sorted(directory.values(), key=lambda e: e.offset)
    ends = {
        e.name: (ordered[i + 1].offset if i + 1 < len(ordered) else directory_offset)
        for i, e in enumerate(ordered)
    }
    position = {e.name: i for i, e in enumerate(ordered)}
    groups: list[list[ZipEntry]] = []
    for entry in sorted(wanted, key=lambda e: e.offset):
        if groups:
            last = groups[-1][-1]
            between = ordered[position[last.name] + 1 : position[entry.name]]
            if all(not e.name.startswith(f"{prefix}data/") and e.size <= 4096 for e in between):
                groups[-1].append(entry)
                continue
        groups.append([entry])
    out: dict[str, bytes] = {}
    for group in groups:
        start = group[0].offset
        span = src.read(start, _span_end(group[-1], ends[group[-1].name]) - start)
        for entry in group:
            if src.size is not None and entry.offset + _LOCAL.size > src.size:
                raise zip_error(name, entry.name, "its local header lies past the end")
            begin = entry.offset - start
            data_start = local_data_offset(span[begin : begin + _LOCAL.size], entry, name)
            raw = span[data_start - start : data_start - start + entry.compressed_size]
            if len(raw) < entry.compressed_size:  # a local header longer than the span allows
                raw = src.read(data_start, entry.compressed_size)
            out[entry.name] = decode_entry(raw, entry, name)
    return out
