"""The cyclic garbage collector paused around bulk work on acyclic objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (back on after, if it was on).

    Reading a header or a pickle of 100,000s of tensors makes as many small dicts, lists and
    tuples, none in a cycle; with the collector on, each collection of the young generation
    walks all of them again, and the full collections that follow walk everything read so far.

    Example:
        >>> with gc_paused():
        ...     specs = [(n, (4, 4)) for n in range(3)]
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
