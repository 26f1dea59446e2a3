"""Byte sources: what every format parser reads from, a local file or a remote one alike.

A parser asks a source for its size and for byte ranges, nothing else, so each format has one
parser whatever carries the bytes. :class:`LocalFile` is a file on disk; the hub's HTTP range
source (:class:`ckptdiff.readers.hub.transport.HttpRangeSource`) fetches ranges on demand.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Protocol

__all__ = ["ByteSource", "LocalFile", "display_name"]


class ByteSource(Protocol):
    """The bytes of one file, read by range.

    Attributes:
        name: the file, for messages (a path, or a path inside a repo).
        location: what :attr:`~ckptdiff.types.Manifest.files` records (a path or a URL).
        path: the local path when the bytes are a local file, else None (formats that need
            the whole file, a legacy torch pickle, are read only from a local path).
        size: the file's size in bytes, when known.
        batch_reads: whether one read of a longer span costs less than two small reads (True
            for HTTP: a request each), so that parsers read neighbouring records together.
    """

    name: str
    location: str
    path: str | None
    batch_reads: bool

    @property
    def size(self) -> int | None: ...

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset`` (fewer when the file ends first)."""
        ...

    def tail(self, n: int) -> tuple[int, bytes]:
        """The last ``n`` bytes (all of a shorter file), and the offset of the first of them."""
        ...


class LocalFile:
    """A local file as a :class:`ByteSource` (an open file, or a path opened and closed here).

    Example:
        >>> with LocalFile.open("model.safetensors") as src:  # doctest: +SKIP
        ...     src.read(0, 8)
    """

    def __init__(self, f: BinaryIO, size: int, *, name: str, path: str | None = None) -> None:
        self._f = f
        self._size = size
        self.name = name
        self.path = path
        self.location = path if path is not None else name
        self.batch_reads = False

    @classmethod
    def open(cls, path: str, name: str | None = None) -> LocalFile:
        """Open ``path`` for reading (close it with ``with`` or :meth:`close`)."""
        f = open(path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        return cls(f, os.fstat(f.fileno()).st_size, name=name or path, path=path)

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, n: int) -> bytes:
        if n <= 0:
            return b""
        self._f.seek(offset)
        return self._f.read(n)

    def tail(self, n: int) -> tuple[int, bytes]:
        start = max(0, self._size - n)
        return start, self.read(start, self._size - start)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def display_name(path: str, source: str) -> str:
    """The name messages use for ``path``: the source string when it names this very file."""
    try:
        same = os.path.samefile(os.path.expanduser(source), path)
    except OSError:
        same = False
    return source if same else path
