"""Reading remote files by HTTP range requests, through huggingface_hub's own HTTP session.

The transport under the hub reader: a :class:`RangeReader` fetches byte ranges of one file (and
keeps what it fetched), a :class:`Transfer` counts requests and bytes, and every HTTP failure is
turned into one of the errors below, each one line that says what to do. Requests go through
``huggingface_hub.utils.get_session()``, so the user's client factory (proxies, certificates),
token, endpoint and offline mode apply.

No torch here, and nothing parses file formats: the pure parsers in ``safetensors_header`` and
``torch_zip`` are fed with the bytes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ckptdiff.errors import CkptDiffError, ReadError, SourceNotFoundError
from ckptdiff.wording import human_bytes, percent

__all__ = [
    "BACKOFF_SECONDS",
    "MAX_RETRIES",
    "TOTAL",
    "HubAccessError",
    "HubError",
    "HubLimitError",
    "HubNotFoundError",
    "HubOfflineError",
    "HubUnavailableError",
    "RangeNotSupportedError",
    "RangeReader",
    "Transfer",
    "allow_download_from_env",
    "call_with_retries",
    "describe_for",
    "human_bytes",
    "percent",
    "read_body",
    "request_deadline",
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


# --- errors ------------------------------------------------------------------------------------


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

    def add(self, requests: int = 0, nbytes: int = 0, cached: int = 0, ranged: bool = False
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
            return {"requests": self.requests, "bytes": self.bytes,
                    "range_bytes": self.range_bytes, "cached_files": self.cached}


#: Every hub request this process made (what ``--stats`` prints).
TOTAL = Transfer()


# --- errors from huggingface_hub and httpx -----------------------------------------------------


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _httpx() -> Any:
    """The HTTP client library under huggingface_hub (httpx2 in 2.x, httpx in 1.x)."""
    try:
        import httpx2

        return httpx2
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx

        return httpx


def _transient(e: BaseException) -> bool:
    http = _httpx()
    if isinstance(e, (http.TimeoutException, http.NetworkError, http.RemoteProtocolError)):
        return True
    status = _status(e)
    return status is not None and status in RETRY_STATUS


def _timeout_seconds() -> float:
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

    http = _httpx()

    status = _status(e)
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
            f"{head}: no answer within {_timeout_seconds():g} s{tries}. Try again, or raise "
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


# --- range reads -------------------------------------------------------------------------------


class RangeReader:
    """Byte ranges of one remote file, fetched on demand and kept.

    Args:
        url: the file's resolve URL.
        name: the file, for messages (``org/repo/model.safetensors``).
        size: the file's size when known (from the repo listing); learned from
            ``Content-Range`` otherwise.
        headers: request headers (authorization, user agent) from ``build_hf_headers``.
        transfer: where requests and bytes are counted.
        describe: turns an HTTP failure into the error to raise (see :func:`translate_hub_error`).
        source: the source string, for messages.

    Example:
        >>> reader = RangeReader(url, name="x.safetensors", size=None, headers={},
        ...     transfer=Transfer(), describe=describe, source="hf://a/b")  # doctest: +SKIP
        >>> reader.read(0, 8)  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        size: int | None,
        headers: Mapping[str, str],
        transfer: Transfer,
        describe: Callable[[BaseException, int], CkptDiffError],
        source: str,
    ) -> None:
        self.url = url
        self.name = name
        self.size = size
        self.headers = dict(headers)
        self.transfer = transfer
        self.describe = describe
        self.source = source
        self._chunks: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()

    def _cached(self, start: int, end: int) -> bytes | None:
        with self._lock:
            for offset, data in self._chunks:
                if offset <= start and end <= offset + len(data):
                    return data[start - offset : end - offset]
        return None

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file (fewer when the file ends before ``end``).

        Raises:
            RangeNotSupportedError: the server sent the whole file instead of the range.
            HubError: the request failed (see :func:`translate_hub_error`).
        """
        if self.size is not None:
            end = min(end, self.size)
        if end <= start:
            return b""
        hit = self._cached(start, end)
        if hit is not None:
            return hit
        # a fetched chunk that covers the end of the range (a tail read): fetch only the rest
        with self._lock:
            covers_end = [o for o, d in self._chunks if start < o < end <= o + len(d)]
        if covers_end:
            split = min(covers_end)
            head = self.read(start, split)
            return head + (self._cached(split, end) or b"")
        offset, data = self._fetch(f"bytes={start}-{end - 1}", start)
        return data[start - offset : end - offset]

    def tail(self, n: int) -> tuple[int, bytes]:
        """The last ``n`` bytes of the file, and the offset of the first of them."""
        if self.size is not None:
            start = max(0, self.size - n)
            return start, self.read(start, self.size)
        return self._fetch(f"bytes=-{n}", None)

    def _fetch(self, byte_range: str, start: int | None) -> tuple[int, bytes]:
        offset, data = call_with_retries(
            lambda: self._get(byte_range, start), transfer=None, describe=self.describe
        )
        with self._lock:
            self._chunks.append((offset, data))
        return offset, data

    def _get(self, byte_range: str, start: int | None) -> tuple[int, bytes]:
        from huggingface_hub.utils import get_session, hf_raise_for_status

        headers = {**self.headers, "Range": byte_range, "Accept-Encoding": "identity"}
        self.transfer.add(1)
        with get_session().stream(
            "GET", self.url, headers=headers, timeout=_timeout_seconds(), follow_redirects=True
        ) as response:
            if response.history:
                self.transfer.add(len(response.history))
            if response.status_code == 200:
                total = response.headers.get("Content-Length")
                # leave without reading the body: closing the stream drops the connection
                raise RangeNotSupportedError(
                    f"Cannot read '{self.source}' ({self.name}): the server ignored the range "
                    f"request and started sending the whole file"
                    f"{f' ({human_bytes(n)})' if (n := _uint(total)) is not None else ''}; "
                    "ckptdiff reads only headers. Pass --allow-download (or set "
                    "CKPTDIFF_ALLOW_DOWNLOAD=1) to download the file instead."
                )
            if response.status_code == 416:
                raise ReadError(
                    f"Cannot read '{self.source}' ({self.name}): the server says range "
                    f"{byte_range} is outside the file (HTTP 416); the file is shorter than its "
                    "header or listing says. It is truncated or corrupt on the hub."
                )
            if response.status_code != 206:
                response.read()
                hf_raise_for_status(response)
                raise HubError(
                    f"Cannot read '{self.source}' ({self.name}): unexpected HTTP "
                    f"{response.status_code} to a range request."
                )
            data = read_body(response, limit=_range_length(byte_range),
                             deadline=request_deadline(), what=f"'{self.source}' ({self.name})")
            self.transfer.add(0, len(data), ranged=True)
            offset, total_size = _content_range(response.headers.get("Content-Range"))
            if total_size is not None and self.size is None:
                self.size = total_size
            if offset is None:
                if start is None:
                    raise ReadError(
                        f"Cannot read '{self.source}' ({self.name}): the server answered a "
                        "suffix range without a Content-Range header."
                    )
                offset = start
            if start is not None and offset != start:
                raise ReadError(
                    f"Cannot read '{self.source}' ({self.name}): asked for {byte_range} and got "
                    f"bytes from {offset} (Content-Range: {response.headers.get('Content-Range')})."
                )
            return offset, data


def request_deadline() -> float:
    """The ``time.monotonic()`` by which a request started now must be done."""
    raw = os.environ.get("CKPTDIFF_HUB_DEADLINE", "").strip()
    try:
        seconds = float(raw) if raw else REQUEST_DEADLINE
    except ValueError:
        seconds = REQUEST_DEADLINE
    return time.monotonic() + seconds


def _range_length(byte_range: str) -> int:
    """The bytes a ``bytes=a-b`` or ``bytes=-n`` request asks for."""
    first, _, last = byte_range.removeprefix("bytes=").partition("-")
    if not first:
        return int(last)
    return int(last) - int(first) + 1


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


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 0-99/1234`` -> ``(0, 1234)``; None for what is absent or unparsable."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    first = span.split("-", 1)[0]
    return _uint(first), _uint(total)


def _uint(text: str | None) -> int | None:
    """A plain decimal number a server sent (ASCII digits, at most 18), else None."""
    if text and text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


def allow_download_from_env() -> bool:
    """Whether ``CKPTDIFF_ALLOW_DOWNLOAD`` asks to download whole files when ranges fail."""
    return os.environ.get("CKPTDIFF_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def describe_for(
    source: str, repo_id: str, what: str, page: str
) -> Callable[[BaseException, int], CkptDiffError]:
    """A ``describe`` callable for :func:`call_with_retries` and :class:`RangeReader`."""

    def describe(e: BaseException, attempts: int) -> CkptDiffError:
        return translate_hub_error(
            e, source, repo_id=repo_id, what=what, page=page, attempts=attempts
        )

    return describe
