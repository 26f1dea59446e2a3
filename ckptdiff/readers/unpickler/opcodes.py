"""The opcode walks: one pass over a pickle's opcodes before anything is built.

:func:`scan_pickle` checks that every opcode is known, that every length fits in the data, and
that no memo index is absurd (CPython's C unpickler allocates ``8 * 2 * index`` bytes for
``LONG_BINPUT index``), at C speed for the common runs. :func:`globals_in` names the globals
of bytes a full unpickle cannot read.
"""

from __future__ import annotations

import io
import pickletools
import re
import sys
from collections.abc import Mapping
from typing import Any

from ckptdiff.readers import unpickler as limits
from ckptdiff.readers.unpickler import deadline
from ckptdiff.readers.unpickler.allowlist import ALLOWED_GLOBALS
from ckptdiff.readers.unpickler.placeholders import global_finding, py3_name
from ckptdiff.readers.unpickler.records import PickleDataError
from ckptdiff.types import Finding

__all__ = ["globals_in", "scan_opcodes", "scan_pickle"]

# --- opcode scan ---------------------------------------------------------------------------

_ARG_SIZE: list[int | None] = [None] * 256
for _op in pickletools.opcodes:
    _ARG_SIZE[ord(_op.code)] = 0 if _op.arg is None else _op.arg.n
_STOP, _LONG_BINPUT, _PUT, _GLOBAL, _INST, _BINUNICODE = b".rpciX"
_FRAME = 0x95
#: copyreg's extension-code opcodes: resolved through a process-wide registry and cache, so a
#: file using them is read with the pure-Python unpickler (see :func:`scan_opcodes`).
_EXT_OPS = frozenset((0x82, 0x83, 0x84))
_SLOW_OPS = frozenset((_STOP, _LONG_BINPUT, _FRAME, *_EXT_OPS))
#: LONG1, LONG4, LONG, INT: the only opcodes that push integers beyond 32 bits.
_BIG_INT_OPS = frozenset(b"\x8a\x8bLI")
#: One or more opcodes whose arguments have fixed sizes and cannot be harmful, matched at C speed;
#: ``LONG_BINPUT`` is included when its index is below 2**20 (16 MB of memo at worst), and
#: ``BINUNICODE`` when its text is shorter than :data:`_SHORT_TEXT` bytes and all there. Runs of
#: argument-less opcodes are taken in one step (an opcode flood costs one regex iteration).
#: Alternatives start with disjoint opcodes and go most common in torch pickles first; on
#: Python >= 3.11 the repeat is possessive (no backtracking state kept per opcode).
_SHORT_TEXT = 128


def _op_class(size: int) -> bytes:
    return (
        b"["
        + b"".join(
            re.escape(bytes([c]))
            for c, n in enumerate(_ARG_SIZE)
            if n == size and c not in _SLOW_OPS
        )
        + b"]"
    )


def _safe_run_pattern(possessive: bool) -> bytes:
    sizes = sorted({n for n in _ARG_SIZE if n is not None and n > 0})
    alternatives = [rb"r..[\x00-\x0f]\x00", _op_class(1) + b".", _op_class(0) + b"+"]
    if possessive:  # a text alternative needs the possessive repeat to pay off
        alternatives.append(
            b"X(?:"
            + b"|".join(re.escape(bytes([i, 0, 0, 0])) + b".{%d}" % i for i in range(_SHORT_TEXT))
            + b")"
        )
    alternatives += [_op_class(size) + b"." * size for size in sizes if size > 1]
    return b"(?:" + b"|".join(alternatives) + (b")*+" if possessive else b")*")


_SAFE_RUN = re.compile(_safe_run_pattern(sys.version_info >= (3, 11)), re.DOTALL)
#: Bytes the opcode scan walks between two looks at the clock.
_SCAN_CHUNK = 1 << 20


def scan_pickle(data: bytes, start: int = 0) -> int | None:
    """Walk one pickle's opcodes without building anything, and find its end.

    Checks that every opcode is known, that every length-prefixed argument (and every frame)
    fits in the data, and that no memo index is larger than the data (the C unpickler would
    allocate memory for it).

    Args:
        data: bytes holding the pickle from ``start``.
        start: where the pickle begins.

    Returns:
        The offset just after the pickle's ``STOP``, or None when the data ends first (read more,
        or the pickle is truncated).

    Raises:
        PickleDataError: an unknown opcode or an absurd memo index.

    Example:
        >>> scan_pickle(b"\\x80\\x02K\\x01.")
        5
    """
    return scan_opcodes(data, start)[0]


def scan_opcodes(data: bytes, start: int = 0) -> tuple[int | None, bool]:
    """:func:`scan_pickle`, also telling whether the pickle uses copyreg's extension codes
    (``EXT1``/``EXT2``/``EXT4``), which the C unpickler resolves without ``find_class``."""
    n = len(data)
    limit = max(n, 1 << 16)
    pos = start
    arg_size = _ARG_SIZE
    match = _SAFE_RUN.match
    from_bytes = int.from_bytes
    uses_ext = False
    big_ints = 0
    next_tick = pos + _SCAN_CHUNK
    while True:
        pos = match(data, pos, min(n, next_tick)).end()  # type: ignore[union-attr]
        if pos >= next_tick:
            deadline.check()
            next_tick = pos + _SCAN_CHUNK
            continue
        if pos >= n:
            return None, uses_ext
        op = data[pos]
        if op == _BINUNICODE:  # the common case in torch pickles: keys
            pos += 5 + from_bytes(data[pos + 1 : pos + 5], "little")
            if pos > n:
                return None, uses_ext
            continue
        pos += 1
        size = arg_size[op]
        if size is None:
            raise PickleDataError(f"unknown pickle opcode 0x{op:02x} at byte {pos - 1}")
        if op in _BIG_INT_OPS:
            big_ints += 1
            if big_ints > limits.MAX_BIG_INTS:
                raise PickleDataError(
                    f"it holds more than {limits.MAX_BIG_INTS:,} integers beyond 32 bits, the "
                    "makings of a dict whose keys all hash alike (minutes of work inside the "
                    "unpickler); torch never writes that. Raise "
                    "ckptdiff.readers.unpickler.MAX_BIG_INTS if you trust the file"
                )
        if size >= 0:
            if op == _STOP:
                return pos, uses_ext
            if op == _LONG_BINPUT and from_bytes(data[pos : pos + 4], "little") > limit:
                raise PickleDataError(f"memo index at byte {pos - 1} is absurdly large")
            if op == _FRAME and pos + 8 + from_bytes(data[pos : pos + 8], "little") > n:
                return None, uses_ext  # the frame's bytes are not all there
            uses_ext = uses_ext or op in _EXT_OPS
            pos += size
        elif size == pickletools.UP_TO_NEWLINE:
            end = data.find(b"\n", pos)
            if end < 0:
                return None, uses_ext
            if op == _PUT:
                digits = bytes(data[pos:end]).strip()
                if len(digits) > 12 or (digits.isdigit() and int(digits) > limit):
                    raise PickleDataError(f"memo index at byte {pos - 1} is absurdly large")
            if op in (_GLOBAL, _INST):
                end = data.find(b"\n", end + 1)
                if end < 0:
                    return None, uses_ext
            pos = end + 1
        elif size == pickletools.TAKEN_FROM_ARGUMENT1:
            if pos >= n:
                return None, uses_ext
            pos += 1 + data[pos]
        elif size in (pickletools.TAKEN_FROM_ARGUMENT4, pickletools.TAKEN_FROM_ARGUMENT4U):
            pos += 4 + from_bytes(data[pos : pos + 4], "little", signed=False)
        else:  # TAKEN_FROM_ARGUMENT8U
            pos += 8 + from_bytes(data[pos : pos + 8], "little", signed=False)
        if pos > n:
            return None, uses_ext


# --- globals named in bytes that do not unpickle ---------------------------------------------


def globals_in(
    data: bytes, start: int = 0, extra: Mapping[tuple[str, str], Any] | None = None
) -> list[Finding]:
    """The findings of every global named in ``data``'s opcodes, without unpickling.

    Walks pickle after pickle until the data ends or stops being a pickle: for the bytes a
    full unpickle cannot read (garbage after a payload, pickles past a count limit). A
    ``STACK_GLOBAL`` takes the two strings pushed last (memo included), as the unpickler does.
    """
    names: dict[tuple[str, str], None] = {}
    strings: list[str] = []
    memo: dict[int, str] = {}
    walked = 0
    stream = io.BytesIO(data)
    stream.seek(start)
    try:
        while stream.tell() < len(data) and walked < limits.MAX_WALKED_OPCODES:
            for op, arg, _ in pickletools.genops(stream):
                walked += 1
                if walked >= limits.MAX_WALKED_OPCODES:
                    break
                kind = op.name
                if kind in ("GLOBAL", "INST"):
                    module, _, attr = str(arg).partition(" ")
                    names[py3_name(module, attr)] = None
                elif kind == "STACK_GLOBAL" and len(strings) >= 2:
                    names[py3_name(strings[-2], strings[-1])] = None
                elif isinstance(arg, str) and "UNICODE" in kind:
                    strings = [*strings[-1:], arg]
                elif kind in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE") and strings:
                    memo[arg if arg is not None else len(memo)] = strings[-1]
                elif kind in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                    strings = [*strings[-1:], memo[arg]]
                elif kind == "EXT1" or kind == "EXT2" or kind == "EXT4":
                    names[("copyreg._extension_registry", f"code {arg}")] = None
    except Exception:  # the walk ends where the pickle stops being one
        pass
    return [
        f
        for module, name in names
        if (f := global_finding(module, name)).severity == "security"
        and (module, name) not in ALLOWED_GLOBALS
        and (module, name) not in (extra or {})
    ]
