"""Key order for people: ``layers.2`` before ``layers.10``."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

__all__ = ["natural_key"]

_DIGITS = re.compile(r"(\d+)")


@lru_cache(maxsize=1 << 18)
def natural_key(key: str) -> tuple[Any, ...]:
    """Sort key that puts ``layers.2`` before ``layers.10``.

    Example:
        >>> sorted(["l.10", "l.2"], key=natural_key)
        ['l.2', 'l.10']
    """
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(key))
