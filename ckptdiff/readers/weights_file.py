"""One weights file, read by its magic bytes: the one dispatch every transport goes through.

:func:`read_source` hands a byte source of a sniffed kind to its format's parser (safetensors,
torch zip, legacy torch pickle); :func:`read_file` is a local file through it. The hub reader
sniffs its own way (fewer range requests) and calls :func:`read_source` too.
"""

from __future__ import annotations

import os
import posixpath

from ckptdiff.errors import ReadError, SelectError, UnsupportedFormatError
from ckptdiff.readers.byte_source import ByteSource, LocalFile, display_name
from ckptdiff.readers.sniff import FORMAT_NAMES, sniff_file
from ckptdiff.types import Manifest

__all__ = ["WholeFileNeeded", "read_file", "read_source"]


class WholeFileNeeded(Exception):
    """The format cannot be read by ranges (a legacy torch pickle) and the source is not a
    local file: the caller decides whether to download it."""


def read_file(
    path: str, source: str, *, select: str | None = None, shard: str | None = None
) -> Manifest:
    """Read one local weights file, dispatching on its magic bytes.

    ``shard``: the file's name in an index, when it is one shard of it (its tensors then carry
    that name as their :attr:`TensorSpec.file`, in the file's own order).

    Raises:
        ReadError, UnsupportedFormatError, SelectError: see :func:`read_source`.
    """
    size = os.path.getsize(path)
    kind = sniff_file(path, size)
    if kind == "special":  # a pipe or device: never opened
        raise _unsupported(f"'{source}'", kind)
    with LocalFile.open(path, display_name(path, source)) as src:
        return read_source(
            src,
            kind,
            source=source,
            where=f"'{source}'",
            select=select,
            shard=shard,
            file=posixpath.basename(shard) if shard else os.path.basename(path),
        )


def read_source(
    src: ByteSource,
    kind: str,
    *,
    source: str,
    file: str,
    where: str,
    select: str | None = None,
    shard: str | None = None,
    head: bytes = b"",
    tail: tuple[int, bytes] | None = None,
) -> Manifest:
    """Read one weights file of a sniffed ``kind`` from a byte source.

    Args:
        src: the file.
        kind: its format (:func:`~ckptdiff.readers.sniff.sniff_bytes`).
        source: the source string, for messages and the manifest.
        file: the name recorded as :attr:`TensorSpec.file`.
        where: how messages name the file (``'model.pt'``, ``'hf://org/repo' (model.bin)``).
        select: the state dict inside a nested pickled container.
        shard: the shard name when the file is one shard of an index (safetensors specs then
            carry it as their ``file``, in the header's order: the index orders the manifest).
        head: bytes already read from offset 0; ``tail``: ``(offset, bytes)`` of its end.

    Raises:
        ReadError: a truncated or corrupt file, an empty one.
        UnsupportedFormatError: a format ckptdiff does not read.
        SelectError: ``select`` on a safetensors file, or naming nothing.
        WholeFileNeeded: a legacy torch pickle in a source that is not a local file.
    """
    if kind == "safetensors":
        from ckptdiff.readers.safetensors_file import read_safetensors_source

        if select:
            raise SelectError(
                f"Cannot read '{source}' (--select {select}): a safetensors file is one flat "
                "list of tensors; --select applies to pickled containers (.pt, .ckpt, .bin)."
            )
        # a shard's tensors take the index's order: the header's is kept (see index_manifest)
        return read_safetensors_source(
            src, source=source, name=shard or file, head=head, ordered=shard is None
        )
    if kind == "zip":
        from ckptdiff.readers.torch_zip import read_zip_source

        return read_zip_source(src, source=source, file=file, select=select, tail=tail)
    if kind == "pickle":
        if src.path is None:
            raise WholeFileNeeded(kind)
        from ckptdiff.readers.torch_legacy import read_pickle_file

        return read_pickle_file(src.path, source, select=select)
    if kind in ("npy-object", "tar") and src.path is not None:
        _scan_embedded_pickles(src.path, kind, source)
    if kind == "empty":
        raise ReadError(f"Cannot read {where}: the file is empty (0 bytes).")
    raise _unsupported(where, kind)


def _unsupported(where: str, kind: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"Cannot read {where}: this is {FORMAT_NAMES[kind]}, not a checkpoint ckptdiff "
        "reads (safetensors, torch .pt/.pth/.bin/.ckpt, or a *.index.json)."
    )


#: The largest pickle inside a tar or .npy file that is walked for its globals.
_MAX_EMBEDDED_PICKLE = 64 << 20


def _scan_embedded_pickles(path: str, kind: str, source: str) -> None:
    """Unpickle (with fakes) the pickles of a format ckptdiff does not read: the members of a
    pre-1.6 torch tar (``sys_info``, ``pickle``, ``storages``, ``tensors``) and the body of a
    numpy object array. Their findings reach the caller through
    :func:`~ckptdiff.readers.unpickler.witness`; failures to parse are not this file's verdict.
    """
    import tarfile

    from ckptdiff.readers.unpickler.restricted import unpickle

    blobs: list[tuple[str, bytes]] = []
    if kind == "tar":
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar.getmembers()[:64]:
                    if member.isfile() and member.size <= _MAX_EMBEDDED_PICKLE:
                        f = tar.extractfile(member)
                        if f is not None:
                            blobs.append((member.name, f.read()))
        except (tarfile.TarError, OSError, EOFError):
            return
    else:
        with open(path, "rb") as f:
            head = f.read(10)
            length = (
                int.from_bytes(head[8:10], "little")
                if head[6:7] == b"\x01"
                else (
                    int.from_bytes(f.read(2), "little") << 16 | int.from_bytes(head[8:10], "little")
                )
            )
            f.seek(10 + length if head[6:7] == b"\x01" else 12 + length)
            blobs.append(("array", f.read(_MAX_EMBEDDED_PICKLE)))
    for context, data in blobs:
        try:
            unpickle(data, source, context=context, storage_form="none")
        except ReadError:
            continue
