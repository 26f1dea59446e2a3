"""torch's legacy format (``torch.save`` before 1.6, or ``_use_new_zipfile_serialization=False``)
and plain pickles.

A legacy file is a sequence of pickles: the magic number, the protocol version (1001), a
``sys_info`` dict, the object (storages by key), the sorted list of storage keys; then each
storage's raw bytes, each behind an 8-byte element count. The reader unpickles the five small
pickles and checks the raw part by its length alone: storage bytes are never read.

A file that starts with any other pickle is a plain pickle, read with the same unpickler (it can
hold no tensors, since it has no storages; numpy arrays and other objects become placeholders).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, BinaryIO

from ckptdiff.errors import ReadError, UnsafeCheckpointError
from ckptdiff.readers import unpickler as _unpickler
from ckptdiff.readers.byte_source import display_name
from ckptdiff.readers.containers import select_state_dict
from ckptdiff.readers.tensor_specs import specs_from_tensors
from ckptdiff.readers.unpickler import MAX_PICKLE_SIZE
from ckptdiff.readers.unpickler.opcodes import globals_in, scan_pickle
from ckptdiff.readers.unpickler.records import PickleDataError, StorageRef, short_repr
from ckptdiff.readers.unpickler.restricted import Unpickled, unpickle
from ckptdiff.types import Finding, Manifest

__all__ = ["MAGIC_NUMBER", "PROTOCOL_VERSION", "read_pickle_file"]

#: The first pickle of a legacy torch file.
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
#: The second pickle of a legacy torch file.
PROTOCOL_VERSION = 1001
#: Bytes read at a time while looking for the end of a pickle.
CHUNK_SIZE = 1 << 16
#: Bytes in front of each raw storage (its element count).
STORAGE_HEADER_SIZE = 8
#: Pickles after the first one of a plain pickle file that are unpickled for their globals.
MAX_TRAILING_PICKLES = 64
_FIX_CORRUPT = "The file is truncated or corrupt; download or save it again."


class _PickleStream:
    """Consecutive pickles of one file, read with a growing buffer and never past the last."""

    def __init__(self, f: BinaryIO, size: int, name: str) -> None:
        self.f = f
        self.size = size
        self.name = name
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # offset in buf of the next pickle

    @property
    def offset(self) -> int:
        """File offset just after the last pickle taken."""
        return self.base + self.pos

    def next(self, context: str) -> bytes:
        """The bytes of the next pickle (up to and including its STOP)."""
        while True:
            try:
                end = scan_pickle(self.buf, self.pos)
            except PickleDataError as e:
                raise ReadError(
                    f"Cannot read '{self.name}' ({context}): {e}. {_FIX_CORRUPT}"
                ) from e
            if end is not None:
                data = self.buf[self.pos : end]
                self.pos = end
                return data
            pending = len(self.buf) - self.pos
            if self.base + len(self.buf) >= self.size:
                raise ReadError(
                    f"Cannot read '{self.name}' ({context}): the file ends inside this pickle. "
                    f"{_FIX_CORRUPT}"
                )
            if pending > _unpickler.MAX_PICKLE_SIZE:
                raise ReadError(
                    f"Cannot read '{self.name}' ({context}): the pickle is over the "
                    f"{_unpickler.MAX_PICKLE_SIZE}-byte limit. Raise "
                    "ckptdiff.readers.unpickler.MAX_PICKLE_SIZE if you trust the file."
                )
            more = self.f.read(max(pending, CHUNK_SIZE))
            if not more:
                raise ReadError(
                    f"Cannot read '{self.name}' ({context}): the file ends inside this pickle. "
                    f"{_FIX_CORRUPT}"
                )
            self.buf = self.buf[self.pos :] + more
            self.base += self.pos
            self.pos = 0


def read_pickle_file(path: str, source: str, *, select: str | None = None) -> Manifest:
    """Read a legacy torch file (``torch-legacy``) or a plain pickle (``pickle``).

    Args:
        path: the file.
        source: the source string as the user gave it.
        select: the dotted path of the state dict inside a container.

    Returns:
        The :class:`Manifest`; security findings for globals outside the allow-list.

    Raises:
        ReadError: a malformed or truncated pickle, storage records that disagree with the
            file's length, a pickle over the size limit.
        SelectError: ``select`` names no state dict, or the container is ambiguous.

    Example:
        >>> m = read_pickle_file("old.pth", "old.pth")  # doctest: +SKIP
        >>> m.format  # doctest: +SKIP
        'torch-legacy'
    """
    name = display_name(path, source)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        stream = _PickleStream(f, size, name)
        first = unpickle(stream.next("pickle"), name, context="pickle", storage_form="none")
        if type(first.root) is int and first.root == MAGIC_NUMBER:
            return _read_legacy(stream, path, source, name, select)
    findings = list(first.findings)
    findings.extend(_trailing_pickles(stream, name))
    if stream.offset < size:  # past the pickles read in full: name the globals of the rest
        with open(path, "rb") as f:
            f.seek(stream.offset)
            rest = f.read(MAX_PICKLE_SIZE)
        findings.extend(
            dataclasses.replace(f, message=f"bytes after the pickles read: {f.message}")
            for f in globals_in(rest)
        )
    if stream.offset < size:
        findings.append(
            Finding(
                kind="trailing_bytes",
                message=(
                    f"{size - stream.offset} bytes follow the end of the pickle; pickle.load "
                    "ignores them, but something appended them"
                ),
                severity="warning",
                data={"offset": stream.offset, "count": size - stream.offset},
            )
        )
    return _manifest(first, findings, path, source, name, "pickle", select)


def _trailing_pickles(stream: _PickleStream, name: str) -> list[Finding]:
    """The globals of further pickles after the first (a second ``pickle.load`` would run them).

    Stops at the first bytes that are not a whole pickle; those stay trailing bytes.
    """
    findings: list[Finding] = []
    for i in range(MAX_TRAILING_PICKLES):
        if stream.offset >= stream.size:
            break
        mark = (stream.buf, stream.base, stream.pos)
        context = f"pickle {i + 2}"
        try:
            extra = unpickle(stream.next(context), name, context=context, storage_form="none")
        except UnsafeCheckpointError:
            raise
        except ReadError:
            stream.buf, stream.base, stream.pos = mark
            break
        findings.extend(
            dataclasses.replace(f, message=f"{context} (after the first STOP): {f.message}")
            for f in extra.findings
        )
    return findings


def _read_legacy(
    stream: _PickleStream, path: str, source: str, name: str, select: str | None
) -> Manifest:
    version = _small(stream, name, "protocol version")
    if version != PROTOCOL_VERSION:
        raise ReadError(
            f"Cannot read '{name}' (legacy torch header): protocol version "
            f"{short_repr(version)}, not {PROTOCOL_VERSION}. {_FIX_CORRUPT}"
        )
    sys_info = _small(stream, name, "sys_info")
    findings: list[Finding] = []
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        findings.append(
            Finding(
                kind="byteorder",
                message="the tensors were saved big-endian; torch swaps them on load",
                severity="info",
            )
        )
    unpickled = unpickle(stream.next("object"), name, context="object", storage_form="legacy")
    findings[:0] = unpickled.findings
    keys = _small(stream, name, "storage keys")
    findings.extend(_check_storages(unpickled.storages, keys, stream.size - stream.offset, name))
    return _manifest(unpickled, findings, path, source, name, "torch-legacy", select)


def _small(stream: _PickleStream, name: str, context: str) -> Any:
    """One of the small pickles around the object (no storages, no globals expected)."""
    unpickled = unpickle(stream.next(context), name, context=context, storage_form="none")
    unsafe = [f for f in unpickled.findings if f.severity == "security"]
    if unsafe:
        raise UnsafeCheckpointError(
            f"Cannot read '{name}' ({context}): this header pickle names {unsafe[0].keys[0]}, "
            "which torch never writes there and torch.load(weights_only=False) would import "
            "and call. Do not load this file."
        )
    if unpickled.findings:
        raise ReadError(
            f"Cannot read '{name}' ({context}): this header pickle names "
            f"{unpickled.findings[0].keys[0]}, which torch never writes there. {_FIX_CORRUPT}"
        )
    return unpickled.root


def _check_storages(
    storages: dict[str, StorageRef], keys: Any, tail: int, name: str
) -> list[Finding]:
    """Check the storage key list against the object pickle, and the raw part's length."""
    if not isinstance(keys, list) or not all(type(k) is str for k in keys):
        raise ReadError(
            f"Cannot read '{name}' (storage keys): the list of storage keys is not a list of "
            f"strings. {_FIX_CORRUPT}"
        )
    listed = set(keys)
    unknown = sorted(listed - storages.keys())
    unlisted = sorted(storages.keys() - listed)
    if unknown or unlisted or len(keys) != len(listed):
        problem = (
            f"storages {', '.join(unknown[:5])} are listed but no tensor uses them"
            if unknown
            else f"storages {', '.join(unlisted[:5])} are used but not listed"
            if unlisted
            else "a storage is listed twice"
        )
        raise ReadError(f"Cannot read '{name}' (storage keys): {problem}. {_FIX_CORRUPT}")
    expected = sum(STORAGE_HEADER_SIZE + storages[k].nbytes for k in keys)
    if tail < expected:
        raise ReadError(
            f"Cannot read '{name}' (storage data): the storages need {expected} bytes after the "
            f"pickles but the file holds {tail}. {_FIX_CORRUPT}"
        )
    if tail > expected:
        return [
            Finding(
                kind="trailing_bytes",
                message=f"{tail - expected} bytes follow the last storage; torch ignores them",
                severity="warning",
                data={"count": tail - expected},
            )
        ]
    return []


def _manifest(
    unpickled: Unpickled,
    findings: list[Finding],
    path: str,
    source: str,
    name: str,
    fmt: str,
    select: str | None,
) -> Manifest:
    selection = select_state_dict(unpickled.root, name, select=select)
    return Manifest(
        source=source,
        format=fmt,
        tensors=specs_from_tensors(selection.tensors, os.path.basename(path)),
        files=(path,),
        metadata=selection.metadata,
        findings=(*findings, *selection.findings),
        selected=selection.selected,
        candidates=selection.candidates,
    )
