"""The witness: the security findings of every pickle unpickled during one read.

Kept apart from the unpickler so that a read that opens no pickle (a safetensors file) does not
import it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterable, Iterator

from ckptdiff.types import Finding

__all__ = ["record", "witness"]

#: The security findings of every pickle unpickled in the current :func:`witness` block.
_WITNESS: contextvars.ContextVar[list[Finding] | None] = contextvars.ContextVar(
    "ckptdiff_pickle_witness", default=None
)


@contextlib.contextmanager
def witness() -> Iterator[list[Finding]]:
    """Collect the security findings of every pickle unpickled inside the block.

    Whatever a format reader later does with a pickle (skips it, reads it for shapes only,
    crashes on the next record), its findings are here: the caller reports them all.

    Example:
        >>> from ckptdiff.readers.unpickler.restricted import unpickle
        >>> with witness() as seen:
        ...     _ = unpickle(b"\\x80\\x02cos\\nsystem\\n.", "x.pkl")
        >>> seen[0].keys
        ('os.system',)
    """
    seen: list[Finding] = []
    outer = _WITNESS.get()
    token = _WITNESS.set(seen)
    try:
        yield seen
    finally:
        _WITNESS.reset(token)
        if outer is not None:
            outer.extend(seen)


def record(findings: Iterable[Finding], context: str) -> None:
    """Hand the security findings of one pickle (``context`` names it: ``data.pkl``) to the
    innermost :func:`witness` block, if any."""
    seen = _WITNESS.get()
    if seen is not None:
        seen.extend(
            dataclasses.replace(f, data={**(f.data or {}), "pickle": context})
            for f in findings
            if f.severity == "security"
        )
