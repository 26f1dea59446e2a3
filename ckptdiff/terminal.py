"""Text from files and servers made safe to print on a terminal.

Key names, index keys, storage keys, paths and messages quoting them come from files an
attacker may write. Printed raw, an escape sequence in a tensor name can erase a FLAGGED line
and print a fake CLEAN one. :func:`printable` turns every control character into a visible
escape; JSON output is never passed through it (JSON escapes on its own and stays exact).
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 and C1 controls, DEL, and the bidirectional and zero-width format characters that reorder
# or hide text on a terminal; newlines and tabs too (each message is one line).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


#: The ASCII characters of :data:`_UNSAFE` (C0 controls and DEL), with and without ``\n``.
_ASCII_UNSAFE = bytes([*range(0x20), 0x7F])
_ASCII_UNSAFE_BUT_NEWLINE = _ASCII_UNSAFE.replace(b"\n", b"")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with every control or invisible formatting character shown as an escape.

    Args:
        text: any object; it is turned into a string first.
        keep_newlines: keep ``\\n`` (a multi-line block whose lines are each made safe).

    Returns:
        The text, unchanged when it holds nothing unsafe.

    Example:
        >>> printable("w\\x1b[2K\\rCLEAN")
        'w\\\\x1b[2K\\\\rCLEAN'
    """
    s = str(text)
    if s.isascii():  # the usual case, checked in one C pass: nothing unsafe, nothing to do
        ascii_text = s.encode("ascii")
        unsafe = _ASCII_UNSAFE_BUT_NEWLINE if keep_newlines else _ASCII_UNSAFE
        if len(ascii_text.translate(None, unsafe)) == len(ascii_text):
            return s
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in s.split("\n"))
    return _UNSAFE.sub(_escape, s)
