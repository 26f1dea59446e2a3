"""The errors met while reading from the hub, each one line that says what to do."""

from __future__ import annotations

from ckptdiff.errors import CkptDiffError, ReadError, SourceNotFoundError

__all__ = [
    "HubAccessError",
    "HubError",
    "HubLimitError",
    "HubNotFoundError",
    "HubOfflineError",
    "HubUnavailableError",
    "RangeNotSupportedError",
]


class HubError(CkptDiffError):
    """Base class of the errors met while reading from the hub."""


class HubNotFoundError(HubError, SourceNotFoundError):
    """No such repo (or a private one), revision or file (HTTP 404, or 401 without access)."""


class HubAccessError(HubError, PermissionError):
    """A gated repo whose terms are not accepted, or a token without access (HTTP 401/403)."""


class HubUnavailableError(HubError, ConnectionError):
    """Timeouts, connection failures and 5xx answers that outlived the retries."""


class HubOfflineError(HubError, SourceNotFoundError):
    """``HF_HUB_OFFLINE`` is set and the local cache does not hold what is needed."""


class HubLimitError(HubError, ReadError):
    """A response body longer than asked for or allowed, or slower than the request deadline."""


class RangeNotSupportedError(HubError, ReadError):
    """The server answered a range request with the whole file."""
