"""Key order for people: ``layers.2`` before ``layers.10``."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

__all__ = ["natural_key"]

_DIGITS = re.compile(r"([0-9]{1,18})")  # ASCII, bounded: int() of any match works


@lru_cache(maxsize=1 << 18)
def natural_key(key: str) -> tuple[Any, ...]:
    """Sort key that puts ``layers.2`` before ``layers.10``.

    Example:
        >>> sorted(["l.10", "l.2"], key=natural_key)
        ['l.2', 'l.10']
    """
    return tuple(int(p) if i % 2 else p for i, p in enumerate(_DIGITS.split(key)))
