"""The restricted unpickler: :func:`unpickle` turns one pickle into records, runs nothing.

``find_class`` resolves only the allow-list (:data:`~ckptdiff.readers.unpickler.allowlist.
ALLOWED_GLOBALS`) and makes every other global a placeholder that is reported;
``persistent_load`` accepts only torch's storage records. The opcodes are scanned first
(:func:`~ckptdiff.readers.unpickler.opcodes.scan_opcodes`), and the whole load runs against a
deadline.
"""

from __future__ import annotations

import gc
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ckptdiff.errors import ReadError, UnsafeUnreadableError
from ckptdiff.readers import unpickler as limits
from ckptdiff.readers.unpickler import deadline, witness
from ckptdiff.readers.unpickler.allowlist import ALLOWED_GLOBALS
from ckptdiff.readers.unpickler.deadline import tick
from ckptdiff.readers.unpickler.opcodes import globals_in, scan_opcodes
from ckptdiff.readers.unpickler.placeholders import (
    Opaque,
    global_finding,
    placeholder,
    py3_name,
)
from ckptdiff.readers.unpickler.records import (
    MAX_NUMEL,
    PickleDataError,
    StorageRef,
    StorageType,
    check_int,
    short_repr,
)
from ckptdiff.types import Finding

__all__ = ["StorageForm", "Unpickled", "unpickle"]

StorageForm = Literal["zip", "legacy", "none"]

_new_tuple = tuple.__new__


@dataclass
class Unpickled:
    """One pickle, unpickled with fakes.

    Attributes:
        root: the object the pickle holds (dicts, lists, :class:`TensorRef`, placeholders...).
        storages: root storages by key, as the storage records declared them.
        findings: globals outside the allow-list, odd records.
    """

    root: Any
    storages: dict[str, StorageRef] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


class _Restricted:
    """``find_class`` and ``persistent_load`` of both unpicklers below."""

    def __init__(
        self,
        file: io.BufferedIOBase,
        storage_form: StorageForm,
        extra_globals: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        super().__init__(file, encoding="utf-8", errors="surrogateescape")  # type: ignore[call-arg]
        self.storage_form = storage_form
        self.extra_globals = extra_globals or {}
        self.storages: dict[str, StorageRef] = {}
        self.views: dict[str, StorageRef] = {}
        self.placeholders: dict[tuple[str, str], type[Opaque]] = {}
        self.findings: list[Finding] = []

    def find_class(self, module: str, name: str) -> Any:
        tick()
        module, name = py3_name(module, name)
        fake = ALLOWED_GLOBALS.get((module, name))
        if fake is None:
            fake = self.extra_globals.get((module, name))
        if fake is not None:
            return fake
        cls = self.placeholders.get((module, name))
        if cls is None:
            if len(self.placeholders) >= limits.MAX_DISTINCT_GLOBALS:
                module, name = "<more globals>", "<not listed>"
                cls = self.placeholders.get((module, name))
                if cls is not None:
                    return cls
            cls = self.placeholders[(module, name)] = placeholder(module, name)
            self.findings.append(global_finding(module, name))
        return cls

    def persistent_load(self, pid: Any) -> Any:
        tick()
        if type(pid) is not tuple or not pid:
            raise PickleDataError(f"unexpected persistent id {short_repr(pid)}")
        kind = pid[0]
        if kind == "storage" and self.storage_form == "zip" and len(pid) == 5:
            storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
            if (
                type(storage_type) is StorageType
                and type(key) is str
                and key
                and type(location) is str
                and type(numel) is int
                and 0 <= numel <= MAX_NUMEL
                and key not in self.storages
            ):  # the common case, a new storage, with the checks of _storage inlined
                ref = _new_tuple(StorageRef, (key, storage_type.dtype, numel, location, key))
                self.storages[key] = ref
                return ref
            return self._storage(storage_type, key, location, numel)
        kind = _ascii(kind)
        if kind == "storage" and self.storage_form == "legacy" and len(pid) == 6:
            root = self._storage(pid[1], _ascii(pid[2]), pid[3], pid[4])
            return root if pid[5] is None else self._view(root, pid[5])
        if kind == "module" and self.storage_form == "legacy" and len(pid) == 4:
            return pid[1]  # a pickled nn.Module class: already a placeholder, and reported
        raise PickleDataError(
            f"unexpected persistent id {short_repr(pid)} (this is not a torch storage record)"
        )

    def _storage(self, storage_type: Any, key: Any, location: Any, numel: Any) -> StorageRef:
        seen = self.storages.get(key) if type(key) is str else None
        if (
            seen is not None
            and storage_type.__class__ is StorageType
            and storage_type.dtype is seen[1]
            and numel == seen[2]
            and type(numel) is int
        ):
            return seen
        if type(storage_type) is not StorageType:
            raise PickleDataError(
                f"storage record names {short_repr(storage_type)}, not a storage type"
            )
        if type(key) is not str or not key:
            raise PickleDataError(f"storage key must be a non-empty string, got {short_repr(key)}")
        location = _ascii(location)
        if type(location) is not str:
            raise PickleDataError(f"storage '{key}' has a location that is not a string")
        numel = check_int(numel, f"storage '{key}' size")
        ref = StorageRef(key, storage_type.dtype, numel, location, key)
        if seen is None:
            self.storages[key] = ref
        elif seen.nbytes != ref.nbytes:
            raise PickleDataError(
                f"storage '{key}' is declared as {seen.nbytes} bytes and as {ref.nbytes} bytes"
            )
        return ref

    def _view(self, root: StorageRef, view: Any) -> StorageRef:
        if not isinstance(view, tuple) or len(view) != 3:
            raise PickleDataError(
                f"storage view record {short_repr(view)} is not (key, offset, size)"
            )
        key, offset, size = _ascii(view[0]), view[1], view[2]
        if not isinstance(key, str):
            raise PickleDataError("storage view key must be a string")
        offset = check_int(offset, f"storage view '{key}' offset")
        size = check_int(size, f"storage view '{key}' size")
        if offset + size > root.numel:
            raise PickleDataError(
                f"storage view '{key}' covers elements {offset}..{offset + size} of storage "
                f"'{root.key}', which holds {root.numel}"
            )
        return self.views.setdefault(
            key, StorageRef(key, root.dtype, size, root.location, root.key)
        )


class _RestrictedUnpickler(_Restricted, pickle.Unpickler):
    """The C unpickler with our ``find_class`` and ``persistent_load``."""


class _PyRestrictedUnpickler(_Restricted, pickle._Unpickler):  # type: ignore[name-defined,misc]
    """The pure-Python unpickler, for pickles that use copyreg extension codes.

    The C unpickler resolves ``EXT1``/``EXT2``/``EXT4`` through :mod:`copyreg`'s process-wide
    registry and a process-wide cache of resolved objects: a code another library registered
    (or another unpickler already resolved) would reach a real global without ``find_class``.
    Here a code never consults either: it is a global outside the allow-list, reported by its
    number, and becomes a placeholder.
    """

    def get_extension(self, code: int) -> None:
        self.append(  # type: ignore[attr-defined]
            self.find_class("copyreg._extension_registry", f"code {code}")
        )


def _ascii(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return value
    return value


def unpickle(
    data: bytes,
    name: str,
    *,
    context: str = "data.pkl",
    storage_form: StorageForm = "zip",
    extra_globals: Mapping[tuple[str, str], Any] | None = None,
) -> Unpickled:
    """Unpickle one pickle with fakes: nothing is imported, nothing is run.

    Args:
        data: exactly one pickle (ending at its ``STOP``); see :func:`scan_pickle`.
        name: the file, for messages.
        context: which pickle of the file this is, for messages (``data.pkl``).
        storage_form: the storage records to accept: ``zip`` (torch >= 1.6), ``legacy``
            (torch < 1.6) or ``none`` (a plain pickle: any storage record is an error).
        extra_globals: more ``(module, name) -> fake`` entries allowed for this pickle only
            (a format's own record types, e.g. torch.distributed.checkpoint's metadata); the
            fakes must be immutable or placeholder classes, and are never imported.

    Returns:
        The root object, the storages it declared and the findings.

    Raises:
        ReadError: the pickle is too large, malformed, truncated or inconsistent.

    Example:
        >>> unpickle(b"\\x80\\x02}q\\x00.", "x.pt").root
        {}
    """
    if len(data) > limits.MAX_PICKLE_SIZE:
        raise ReadError(
            f"Cannot read '{name}' ({context}): the pickle is {len(data)} bytes, over the "
            f"{limits.MAX_PICKLE_SIZE}-byte limit. Raise "
            "ckptdiff.readers.unpickler.MAX_PICKLE_SIZE if you trust its size."
        )
    unpickler: _Restricted | None = None
    try:
        deadline.start()
        end, uses_ext = scan_opcodes(data)
        if end is None:
            raise PickleDataError("the pickle ends before its STOP opcode (truncated?)")
        reader = io.BufferedReader(io.BytesIO(data), buffer_size=1 << 17)
        kind = _PyRestrictedUnpickler if uses_ext else _RestrictedUnpickler
        unpickler = kind(reader, storage_form, extra_globals)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # the load creates many small objects and no cycles worth collecting
        try:
            root = unpickler.load()
        finally:
            deadline.stop()
            if gc_was_enabled:
                gc.enable()
    except Exception as e:  # anything the C unpickler or a fake raises on bad data
        problem = " ".join(str(e).split())[:300] or type(e).__name__
        if isinstance(e, (RecursionError, MemoryError)):
            problem = f"{type(e).__name__}: the pickle nests too deep or is too large"
        if unpickler is not None:
            unsafe = [f for f in unpickler.findings if f.severity == "security"]
        else:  # the opcode walk failed before any record was built: name its globals anyway
            unsafe = globals_in(data, extra=extra_globals)
        witness.record(unsafe, context)
        if not unsafe and isinstance(e, ReadError):
            raise
        if unsafe:
            # a payload next to a malformed record: the payload is what matters
            raise UnsafeUnreadableError(
                f"Cannot read '{name}' ({context}): it names "
                f"{', '.join(repr(f.keys[0]) for f in unsafe[:3])}"
                f"{' and more' if len(unsafe) > 3 else ''}, outside the allow-list "
                "(torch.load(weights_only=False) would import and call it), and then "
                f"{problem.rstrip('.')}. Do not load this file."
            ) from e
        raise ReadError(
            f"Cannot read '{name}' ({context}): {problem.rstrip('.')}. The file is corrupt, "
            "truncated or not a torch checkpoint; save or download it again."
        ) from e
    witness.record(unpickler.findings, context)
    return Unpickled(root, unpickler.storages, unpickler.findings)
