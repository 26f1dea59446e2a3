"""ckptdiff: check a checkpoint against a model before you load it.

Reads keys, shapes and dtypes lazily (never tensor data, never pickle code), builds targets on
torch's ``meta`` device, and reports missing, unexpected and mis-shaped tensors.

Importing this package does not import torch; building a target does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ckptdiff.forward_check.api import forward
    from ckptdiff.forward_check.report import ForwardReport

__version__ = "0.1.0"

__all__ = [
    "CkptDiffError",
    "Finding",
    "ForwardReport",
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
    "forward",
    "read",
]

_LAZY = {
    "forward": ("ckptdiff.forward_check.api", "forward"),  # imports torch: bound on first use
    "ForwardReport": ("ckptdiff.forward_check.report", "ForwardReport"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ckptdiff' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
