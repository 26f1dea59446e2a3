"""ckptdiff: check a checkpoint against a model before you load it.

Reads keys, shapes and dtypes lazily (never tensor data, never pickle code), builds targets on
torch's ``meta`` device, and reports missing, unexpected and mis-shaped tensors.

Importing this package imports nothing else: each name below is imported on first use
(PEP 562), so ``ckptdiff --help`` and reading a file pay only for what they use. Importing
this package does not import torch; building a target does.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckptdiff._check import check
    from ckptdiff._diff import diff_sources as diff
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
    from ckptdiff.forward_check.api import forward
    from ckptdiff.forward_check.report import ForwardReport
    from ckptdiff.readers import read
    from ckptdiff.types import Finding, Manifest, Report, Suggestion, TensorSpec

__version__ = "0.1.0"

#: public name -> (module, attribute)
_LAZY = {
    "check": ("ckptdiff._check", "check"),
    "diff": ("ckptdiff._diff", "diff_sources"),
    "read": ("ckptdiff.readers", "read"),
    "forward": ("ckptdiff.forward_check.api", "forward"),  # imports torch when first used
    "ForwardReport": ("ckptdiff.forward_check.report", "ForwardReport"),
    **{
        name: ("ckptdiff.errors", name)
        for name in (
            "CkptDiffError",
            "IncompatibleCheckpointError",
            "ReadError",
            "SelectError",
            "SourceNotFoundError",
            "TargetError",
            "UnsafeCheckpointError",
            "UnsupportedFormatError",
            "UsageError",
        )
    },
    **{
        name: ("ckptdiff.types", name)
        for name in ("Finding", "Manifest", "Report", "Suggestion", "TensorSpec")
    },
}

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


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it."""
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'ckptdiff' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    setattr(sys.modules[__name__], name, value)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
