"""The HTTP transport under the hub reader, through huggingface_hub's own HTTP session.

Requests go through ``huggingface_hub.utils.get_session()``, so the user's client factory
(proxies, certificates), token, endpoint and offline mode apply. Here: retries with backoff
(:func:`call_with_retries`), every HTTP failure turned into one of the errors of
:mod:`ckptdiff.readers.hub.errors` (:func:`translate_hub_error`), bounded response bodies with a
deadline (:func:`read_body`), and the counting of requests and bytes (:class:`Transfer`).

No torch here, and nothing parses file formats.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ckptdiff.errors import CkptDiffError
from ckptdiff.readers.hub.errors import (
    HubAccessError,
    HubError,
    HubLimitError,
    HubNotFoundError,
    HubOfflineError,
    HubUnavailableError,
)
from ckptdiff.wording import human_bytes

__all__ = [
    "BACKOFF_SECONDS",
    "MAX_RETRIES",
    "TOTAL",
    "Transfer",
    "allow_download_from_env",
    "call_with_retries",
    "describe_for",
    "http_client",
    "read_body",
    "request_deadline",
    "status_of",
    "timeout_seconds",
    "translate_hub_error",
]

T = TypeVar("T")

#: Retries after the first attempt, for timeouts, connection errors, 429 and 5xx answers.
MAX_RETRIES = 3
#: Wait before the first retry; it doubles after each one, up to :data:`MAX_BACKOFF_SECONDS`.
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 4.0
#: Seconds to wait for an answer; None means huggingface_hub's (``HF_HUB_DOWNLOAD_TIMEOUT``).
TIMEOUT: float | None = None
#: Seconds one request may take, its whole body included (a server that sends one byte every
#: few seconds never trips a read timeout); ``CKPTDIFF_HUB_DEADLINE`` overrides it.
REQUEST_DEADLINE = 120.0
#: Status codes worth retrying.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


# --- counting ----------------------------------------------------------------------------------


class Transfer:
    """Requests made and body bytes received, counted from several threads.

    Attributes:
        requests: HTTP requests sent (each retry and redirect counts).
        bytes: response body bytes received: ranges of weights files and whole small files
            (the JSON of the repo listing is not counted).
        range_bytes: the part of ``bytes`` received by range requests (weights headers).
        cached: files read from the local huggingface_hub cache instead of the network.
    """

    def __init__(self, parent: Transfer | None = None) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.range_bytes = 0
        self.cached = 0
        self._parent = parent

    def add(
        self, requests: int = 0, nbytes: int = 0, cached: int = 0, ranged: bool = False
    ) -> None:
        """Count more requests, bytes (``ranged``: received by a range request) or cached files.

        The parent (the process-wide :data:`TOTAL`) counts them too.
        """
        with self._lock:
            self.requests += requests
            self.bytes += nbytes
            self.range_bytes += nbytes if ranged else 0
            self.cached += cached
        if self._parent is not None:
            self._parent.add(requests, nbytes, cached, ranged)

    def snapshot(self) -> tuple[int, int]:
        """``(requests, bytes)`` now."""
        with self._lock:
            return self.requests, self.bytes

    def to_dict(self) -> dict[str, int]:
        """The JSON form: ``{"requests", "bytes", "range_bytes", "cached_files"}``."""
        with self._lock:
            return {
                "requests": self.requests,
                "bytes": self.bytes,
                "range_bytes": self.range_bytes,
                "cached_files": self.cached,
            }


#: Every hub request this process made (what ``--stats`` prints).
TOTAL = Transfer()


# --- errors from huggingface_hub and httpx -----------------------------------------------------


def status_of(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def http_client() -> Any:
    """The HTTP client library under huggingface_hub (httpx2 in 2.x, httpx in 1.x)."""
    try:
        import httpx2

        return httpx2
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx

        return httpx


def _transient(e: BaseException) -> bool:
    http = http_client()
    if isinstance(e, (http.TimeoutException, http.NetworkError, http.RemoteProtocolError)):
        return True
    status = status_of(e)
    return status is not None and status in RETRY_STATUS


def timeout_seconds() -> float:
    if TIMEOUT is not None:
        return TIMEOUT
    from huggingface_hub import constants

    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _has_token() -> bool:
    from huggingface_hub.utils import get_token

    return bool(get_token())


_NO_TOKEN = "no token was sent (HF_TOKEN is unset and you are not logged in)"


def translate_hub_error(
    e: BaseException, source: str, *, repo_id: str, what: str, page: str, attempts: int = 1
) -> CkptDiffError:
    """One clear error for a huggingface_hub or HTTP failure.

    Args:
        e: the exception raised by huggingface_hub or httpx.
        source: the source as the user gave it.
        repo_id: the repo (``org/name``).
        what: what was being fetched (``repo info``, ``config.json``, ``model.safetensors``).
        page: the repo's page on the hub, for the gated-repo hint.
        attempts: how many times the request was tried.

    Returns:
        A :class:`HubError` subclass, for the caller to raise ``from e``.
    """
    from huggingface_hub import errors as hf_errors

    http = http_client()

    status = status_of(e)
    head = f"Cannot read '{source}' ({what})"
    if isinstance(e, hf_errors.OfflineModeIsEnabled):
        return HubOfflineError(
            f"{head}: HF_HUB_OFFLINE is set and the local cache does not hold it. Unset "
            "HF_HUB_OFFLINE, or download the repo first (hf download "
            f"{repo_id})."
        )
    if isinstance(e, hf_errors.LocalEntryNotFoundError):
        return HubOfflineError(
            f"{head}: it is not in the local cache and the hub cannot be asked (offline, or "
            f"unreachable). Unset HF_HUB_OFFLINE or check your network."
        )
    if isinstance(e, hf_errors.GatedRepoError):
        who = "your token has not been granted access" if _has_token() else _NO_TOKEN
        return HubAccessError(
            f"{head}: {repo_id} is a gated repo and the hub refused access (HTTP {status}): "
            f"{who}. Accept its terms on {page} and set HF_TOKEN (or run `hf auth login`) "
            "with a token of that account."
        )
    if isinstance(e, hf_errors.DisabledRepoError):
        return HubAccessError(f"{head}: the hub has disabled {repo_id} (HTTP {status}).")
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return HubNotFoundError(
            f"{head}: {repo_id} has no such revision (HTTP {status}). Name a branch, tag or "
            "commit that exists, e.g. @main."
        )
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        who = "your token cannot read it" if _has_token() else _NO_TOKEN
        return HubNotFoundError(
            f"{head}: there is no repo {repo_id}, or it is private and {who} (HTTP {status}). "
            "Check the name; for a private repo set HF_TOKEN to a token with access."
        )
    if isinstance(e, hf_errors.EntryNotFoundError):
        return HubNotFoundError(
            f"{head}: {repo_id} has no such file at this revision (HTTP {status or 404})."
        )
    if status in (401, 403):
        who = "to your token" if _has_token() else f"and {_NO_TOKEN}"
        return HubAccessError(
            f"{head}: the hub refused access (HTTP {status}) {who}. If the repo is gated, "
            f"accept its terms on {page}; set HF_TOKEN to a token with access."
        )
    if status == 404:
        return HubNotFoundError(f"{head}: not found on the hub (HTTP 404). Check the name.")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if status is not None and status in RETRY_STATUS:
        return HubUnavailableError(
            f"{head}: the hub answered HTTP {status}{tries}. It may be overloaded or down; "
            "try again later."
        )
    if isinstance(e, http.TimeoutException):
        return HubUnavailableError(
            f"{head}: no answer within {timeout_seconds():g} s{tries}. Try again, or raise "
            "HF_HUB_DOWNLOAD_TIMEOUT / HF_HUB_ETAG_TIMEOUT."
        )
    if isinstance(e, (http.NetworkError, http.RemoteProtocolError)):
        from huggingface_hub import constants

        return HubUnavailableError(
            f"{head}: cannot reach {constants.ENDPOINT}{tries} ({type(e).__name__}: {e}). Check "
            "your network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the local cache."
        )
    if status is not None:
        return HubError(f"{head}: the hub answered HTTP {status}.")
    return HubError(f"{head}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def call_with_retries(
    fn: Callable[[], T],
    *,
    transfer: Transfer | None,
    describe: Callable[[BaseException, int], CkptDiffError],
    requests_per_call: int = 1,
) -> T:
    """Call ``fn`` (one HTTP exchange), retrying transient failures with exponential backoff.

    Args:
        fn: makes the request; raises on failure.
        transfer: counts each attempt as ``requests_per_call`` requests (None: not counted).
        describe: turns the final exception and the attempt count into the error to raise.
        requests_per_call: requests one call makes.

    Raises:
        CkptDiffError: ``describe``'s error, after :data:`MAX_RETRIES` retries of a transient
            failure, or at once for any other.
    """
    wait = BACKOFF_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            if transfer is not None:
                transfer.add(requests_per_call)
            return fn()
        except CkptDiffError:
            raise
        except Exception as e:
            if not _transient(e) or attempt > MAX_RETRIES:
                raise describe(e, attempt) from e
        time.sleep(wait)
        wait = min(MAX_BACKOFF_SECONDS, wait * 2)


def request_deadline() -> float:
    """The ``time.monotonic()`` by which a request started now must be done."""
    raw = os.environ.get("CKPTDIFF_HUB_DEADLINE", "").strip()
    try:
        seconds = float(raw) if raw else REQUEST_DEADLINE
    except ValueError:
        seconds = REQUEST_DEADLINE
    return time.monotonic() + seconds


def read_body(
    response: Any, *, limit: int, deadline: float | None, what: str, sink: Any = None
) -> bytes:
    """The body of a streamed response, refused past ``limit`` bytes or past ``deadline``.

    A server decides how long a body is and how fast it comes: an endless 206 body, an endless
    JSON file or one byte every few seconds must end in an error, not in memory or time spent.

    Args:
        response: a streamed httpx response.
        limit: the most bytes accepted.
        deadline: the ``time.monotonic()`` by which the body must be done (None: no deadline).
        what: the file, for messages.
        sink: a binary file the body is written to instead of being returned.

    Raises:
        HubLimitError: more than ``limit`` bytes, or still coming at ``deadline``.
    """
    chunks: list[bytes] = []
    received = 0
    for chunk in response.iter_bytes():
        received += len(chunk)
        if received > limit:
            response.close()
            raise HubLimitError(
                f"Cannot read {what}: the server sent more than the {human_bytes(limit)} asked "
                "for or allowed; refusing the rest. The server is broken or hostile."
            )
        if sink is None:
            chunks.append(chunk)
        else:
            sink.write(chunk)
        if deadline is not None and time.monotonic() > deadline:
            response.close()
            raise HubLimitError(
                f"Cannot read {what}: the answer was still coming at the request deadline "
                f"({human_bytes(received)} received). The server is too slow or hostile; "
                "CKPTDIFF_HUB_DEADLINE sets the seconds a request may take."
            )
    return b"".join(chunks)


def allow_download_from_env() -> bool:
    """Whether ``CKPTDIFF_ALLOW_DOWNLOAD`` asks to download whole files when ranges fail."""
    return os.environ.get("CKPTDIFF_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def describe_for(
    source: str, repo_id: str, what: str, page: str
) -> Callable[[BaseException, int], CkptDiffError]:
    """A ``describe`` callable for :func:`call_with_retries` and the range source."""

    def describe(e: BaseException, attempts: int) -> CkptDiffError:
        return translate_hub_error(
            e, source, repo_id=repo_id, what=what, page=page, attempts=attempts
        )

    return describe
