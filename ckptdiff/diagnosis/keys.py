"""The cause finding the cause rules build (``kind="cause"``, with both sides' values). Pure.

The key-name vocabulary they share is :mod:`ckptdiff.naming`; samples and lists are worded by
:mod:`ckptdiff.wording`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ckptdiff.types import Finding


def _cause(
    cause: str,
    message: str,
    keys: Sequence[str],
    checkpoint: Any,
    target: Any,
    severity: str = "warning",
    **extra: Any,
) -> Finding:
    keys = list(keys)
    return Finding(
        "cause",
        message,
        tuple(keys),
        severity,  # type: ignore[arg-type]
        {"cause": cause, "checkpoint": checkpoint, "target": target, "keys": keys, **extra},
    )
