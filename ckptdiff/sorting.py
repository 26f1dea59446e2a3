"""Key order for people: ``layers.2`` before ``layers.10``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from itertools import repeat
from typing import Any

__all__ = ["natural_key", "natural_order"]

_DIGITS = re.compile(r"([0-9]{1,18})")  # ASCII, bounded: int() of any match works
_split = _DIGITS.split


def _natural_key(key: str) -> list[Any]:
    parts: list[Any] = _split(key)
    # split with a group alternates text and digits: every odd part is a number
    parts[1::2] = map(int, parts[1::2])
    return parts


@lru_cache(maxsize=1 << 16)
def natural_key(key: str) -> tuple[Any, ...]:
    """Sort key that puts ``layers.2`` before ``layers.10``.

    Example:
        >>> sorted(["l.10", "l.2"], key=natural_key)
        ['l.2', 'l.10']
    """
    return tuple(_natural_key(key))


def natural_order(keys: Iterable[str]) -> list[str]:
    """``keys`` sorted by :func:`natural_key`, in a few whole-list passes.

    Every digit run of every key is padded to one width behind a ``\\0`` (which sorts before
    any other character, as the end of a text part does in :func:`natural_key`), so plain string
    order is natural order; the stable sort keeps ties (``a07``, ``a7``) in their given order,
    as sorting by :func:`natural_key` does. Keys with line breaks or NUL characters take the
    key-at-a-time way.

    Example:
        >>> natural_order(["b.10", "b.9", "a", "conv.w", "conv1.w"])
        ['a', 'b.9', 'b.10', 'conv1.w', 'conv.w']
    """
    keys = list(keys)
    joined = "\n".join(keys)
    if "\0" in joined:
        return sorted(keys, key=_natural_key)
    parts = _split(joined)
    width = max(map(len, parts[1::2]), default=0)
    parts[1::2] = map("\0".__add__, map(str.zfill, parts[1::2], repeat(width)))
    padded = "".join(parts).split("\n")
    if len(padded) != len(keys):  # a key with a line break of its own
        return sorted(keys, key=_natural_key)
    return list(map(keys.__getitem__, sorted(range(len(keys)), key=padded.__getitem__)))
