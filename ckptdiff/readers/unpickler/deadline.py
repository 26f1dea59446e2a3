"""The time bound of one unpickle: a per-thread deadline, looked at cheaply from the hot paths."""

from __future__ import annotations

import threading
import time

from ckptdiff.readers import unpickler as limits
from ckptdiff.readers.unpickler.records import PickleDataError

__all__ = ["check", "start", "stop", "tick"]

_clock = threading.local()
#: Calls of :func:`tick` between two looks at the clock: a look costs more than most of the
#: calls it guards, and 256 of the slowest (a new placeholder class each) take milliseconds.
_TICK_EVERY = 256
_ticks_left = 0


def start() -> None:
    """Start the current thread's clock: :data:`~ckptdiff.readers.unpickler.MAX_SECONDS` from
    now; the next :func:`tick` looks at it."""
    global _ticks_left
    _clock.deadline = time.monotonic() + limits.MAX_SECONDS
    _ticks_left = 0  # the first record looks at the clock


def stop() -> None:
    """Stop the current thread's clock."""
    _clock.deadline = float("inf")


def check() -> None:
    """Raise once the current unpickle has run past its deadline."""
    if time.monotonic() > getattr(_clock, "deadline", float("inf")):
        raise PickleDataError(f"reading the pickle took more than {limits.MAX_SECONDS:g} seconds")


def tick() -> None:
    """:func:`check` every :data:`_TICK_EVERY` calls (cheap; called for every record).

    The countdown is shared by threads; each thread's look is at its own deadline, and a racy
    decrement can only make a look come sooner.
    """
    global _ticks_left
    if _ticks_left > 0:
        _ticks_left -= 1
        return
    _ticks_left = _TICK_EVERY
    check()
