"""The cause finding the cause rules build (``kind="cause"``, with both sides' values). Pure.

The key-name vocabulary they share is :mod:`ckptdiff.naming`; samples and lists are worded by
:mod:`ckptdiff.wording`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ckptdiff.types import Finding


def cause_finding(
    cause: str,
    message: str,
    keys: Sequence[str],
    checkpoint: Any,
    target: Any,
    severity: str = "warning",
    **extra: Any,
) -> Finding:
    """A ``kind="cause"`` finding: ``data`` holds the cause's name, both sides' values, the
    keys it explains and any ``extra`` fields.

    Args:
        cause: the cause's name (``position_grid``, ``width``...).
        message: what the user reads.
        keys: the keys it explains (all kept in ``data["keys"]``).
        checkpoint: the checkpoint's value (a count, a size, a name).
        target: the target's value.
        severity: ``warning`` unless told.
        **extra: more ``data`` fields.

    Returns:
        The finding.

    Example:
        >>> cause_finding("depth", "24 layers vs 12", ["h.12.w"], 24, 12).data["cause"]
        'depth'
    """
    keys = list(keys)
    return Finding(
        "cause",
        message,
        tuple(keys),
        severity,  # type: ignore[arg-type]
        {"cause": cause, "checkpoint": checkpoint, "target": target, "keys": keys, **extra},
    )
