"""Key order for people: ``layers.2`` before ``layers.10``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["natural_indices", "natural_key", "natural_order", "naturally_by_key"]

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

    Example:
        >>> natural_order(["b.10", "b.9", "a", "conv.w", "conv1.w"])
        ['a', 'b.9', 'b.10', 'conv1.w', 'conv.w']
    """
    keys = list(keys)
    return list(map(keys.__getitem__, natural_indices(keys)))


def naturally_by_key(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """``items`` sorted by :func:`natural_key` of ``key(item)`` (stable), in whole-list passes.

    Example:
        >>> naturally_by_key(["B.10", "b.9"], str.lower)
        ['b.9', 'B.10']
    """
    items = list(items)
    return list(map(items.__getitem__, natural_indices(list(map(key, items)))))


def natural_indices(keys: Sequence[str]) -> list[int]:
    """The positions of ``keys`` in the order of :func:`natural_order` (a stable sort).

    Every digit run of every key is padded to one width behind a ``\\0`` (which sorts before
    any other character, as the end of a text part does in :func:`natural_key`), so plain string
    order is natural order; the stable sort keeps ties (``a07``, ``a7``) in their given order,
    as sorting by :func:`natural_key` does. Each distinct digit run is padded once. Keys with
    line breaks or NUL characters take the key-at-a-time way.

    Example:
        >>> natural_indices(["b.10", "b.9", "a"])
        [2, 1, 0]
    """
    positions = range(len(keys))
    joined = "\n".join(keys)
    if "\0" in joined:
        return sorted(positions, key=lambda i: _natural_key(keys[i]))
    parts = _split(joined)
    numbers = parts[1::2]
    width = max(map(len, numbers), default=0)
    padded_number = {n: "\0" + n.zfill(width) for n in set(numbers)}
    parts[1::2] = map(padded_number.__getitem__, numbers)
    padded = "".join(parts).split("\n")
    if len(padded) != len(keys):  # a key with a line break of its own
        return sorted(positions, key=lambda i: _natural_key(keys[i]))
    return sorted(positions, key=padded.__getitem__)
