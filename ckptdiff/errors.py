"""The errors ckptdiff raises: all subclasses of :class:`CkptDiffError`.

Messages follow one template: "Cannot read 'FILE' (context): what went wrong. How to fix it."
Builtin mixins keep them catchable as the builtin a caller would expect.
"""

from __future__ import annotations

__all__ = [
    "CkptDiffError",
    "SourceNotFoundError",
    "ReadError",
    "UnsupportedFormatError",
    "SelectError",
    "UnsafeCheckpointError",
    "UnsafeUnreadableError",
    "TargetError",
    "IncompatibleCheckpointError",
    "UsageError",
]


class CkptDiffError(Exception):
    """Base class of every error ckptdiff raises on purpose."""

    exit_code: int = 2


# --- reading sources ---------------------------------------------------------------------------


class SourceNotFoundError(CkptDiffError, FileNotFoundError):
    """The source does not exist, or a folder holds no weights."""


class ReadError(CkptDiffError, ValueError):
    """The source exists but is not a valid checkpoint (truncated, corrupt header...)."""


class UnsupportedFormatError(ReadError):
    """The file is of a kind ckptdiff does not read (TorchScript, tar, numpy object arrays...)."""


class SelectError(CkptDiffError, KeyError):
    """``--select`` names no state dict in the container, or the choice is ambiguous."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else ""


class UnsafeCheckpointError(CkptDiffError):
    """The file would run code, or escape its folder, if loaded the usual way."""

    exit_code = 3


class UnsafeUnreadableError(UnsafeCheckpointError, ReadError):
    """A malformed pickle that names globals outside the allow-list before it breaks (exit 3)."""


# --- targets and checks ------------------------------------------------------------------------


class TargetError(CkptDiffError, ValueError):
    """The target model could not be built (bad factory, bad config, missing extra)."""


class IncompatibleCheckpointError(CkptDiffError, RuntimeError):
    """Raised by ``Report.raise_for_incompatible``; the message is the report's table."""

    exit_code = 1


class UsageError(CkptDiffError, ValueError):
    """The call's arguments do not fit together (a bad ``--rename`` rule, ...)."""
