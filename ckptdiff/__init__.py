"""ckptdiff: check a checkpoint against a model before you load it.

Reads keys, shapes and dtypes lazily (never tensor data, never pickle code), builds targets on
torch's ``meta`` device, and reports missing, unexpected and mis-shaped tensors.

Importing this package does not import torch; building a target does.
"""

from __future__ import annotations

from typing import Any

from ckptdiff.errors import (
    CkptDiffError,
    IncompatibleCheckpointError,
    ReadError,
    SelectError,
    SourceNotFoundError,
    TargetError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
    UsageError,
)
from ckptdiff.readers import read
from ckptdiff.types import Finding, Manifest, Report, Suggestion, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "CkptDiffError",
    "Finding",
    "IncompatibleCheckpointError",
    "Manifest",
    "ReadError",
    "Report",
    "SelectError",
    "SourceNotFoundError",
    "Suggestion",
    "TargetError",
    "TensorSpec",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "UsageError",
    "check",
    "diff",
    "read",
]


def diff(checkpoint: Any, target: Any, **kwargs: Any) -> Report:
    """Compare two sources (or manifests); see :func:`ckptdiff.diff.diff_sources`."""
    from ckptdiff.diff import diff_sources

    return diff_sources(checkpoint, target, **kwargs)


def check(model_or_target: Any, source: Any, **kwargs: Any) -> Report:
    """Check a checkpoint against a model before loading it; see :func:`ckptdiff.check.check`."""
    from ckptdiff.check import check as _check

    return _check(model_or_target, source, **kwargs)
