"""ckptdiff: check a checkpoint against a model before you load it.

Reads keys, shapes and dtypes lazily (never tensor data, never pickle code), builds targets on
torch's ``meta`` device, and reports missing, unexpected and mis-shaped tensors.

Importing this package does not import torch; building a target does.
"""

from __future__ import annotations

# Importing the submodules here, then binding the functions, keeps ``ckptdiff.check`` and
# ``ckptdiff.diff`` functions: a later ``import ckptdiff.diff`` finds the module loaded and
# leaves the package's name alone.
from ckptdiff.check import check
from ckptdiff.diff import diff_sources as diff
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
