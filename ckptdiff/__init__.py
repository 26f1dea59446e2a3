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

# Import the submodules first, then bind the functions: a later ``import ckptdiff.diff`` or
# ``import ckptdiff.check`` then finds the modules loaded and leaves these names alone.
from ckptdiff.diff import diff_sources as diff  # isort: skip
from ckptdiff.check import check  # isort: skip
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
