"""Numbers and lists worded for people: parameter counts, byte sizes, shares, samples. Pure.

Every message that says ``22.7M``, ``90.9 MB``, ``0.072%``, ``a, b and 3 more`` or ends a
sample with ``... 3 more`` words it here, so the same thing reads the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ckptdiff.types import Manifest

__all__ = [
    "EVIDENCE_SAMPLES",
    "human",
    "human_bytes",
    "key_shape_str",
    "listed",
    "percent",
    "sampled",
    "shape_str",
]

#: Samples of keys a suggestion shows; a last ``"... N more"`` entry counts the rest.
EVIDENCE_SAMPLES = 5


def human(n: float) -> str:
    """``22.7M``, ``1.5B``: parameter counts for people.

    Example:
        >>> human(22_713_216), human(999)
        ('22.7M', '999')
    """
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def human_bytes(n: float) -> str:
    """``90.9 MB``, ``11.4 kB``: decimal units, as the hub shows file sizes."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def percent(part: float, whole: float) -> str:
    """``part`` as a share of ``whole``: ``0.072%``, ``1.1%``, ``250%``."""
    share = 100 * part / whole if whole else 0.0
    if share >= 10:
        return f"{share:.0f}%"
    if share >= 0.0001:
        return f"{share:.2g}%"
    return "<0.0001%" if share else "0%"


def shape_str(shape: Sequence[int]) -> str:
    """``[1024, 3, 14, 14]``; a scalar is ``[]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def key_shape_str(m: Manifest, key: str) -> str:
    """The shape of ``key`` in ``m`` as :func:`shape_str` words it; ``-`` when ``m`` lacks it."""
    t = m.tensors.get(key)
    return shape_str(t.shape) if t is not None else "-"


def listed(items: Sequence[str], n: int = 2) -> str:
    """The first ``n`` items joined by commas, then ``and N more`` for the others.

    Example:
        >>> listed(["a", "b", "c", "d"])
        'a, b and 2 more'
    """
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def sampled(entries: Sequence[str], n: int = EVIDENCE_SAMPLES) -> tuple[str, ...]:
    """Up to ``n`` entries, then ``"... N more"`` with the exact number of the others.

    Example:
        >>> sampled([f"k{i}" for i in range(8)], 2)
        ('k0', 'k1', '... 6 more')
    """
    rest = len(entries) - n
    return tuple(entries[:n]) + ((f"... {rest} more",) if rest > 0 else ())
