"""The HTTP range source: byte ranges of one hub file, fetched on demand and kept.

A :class:`~ckptdiff.readers.byte_source.ByteSource`, so the format parsers read hub files as
they read local ones; each range is one bounded request
(:func:`~ckptdiff.readers.hub.transport.read_body`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from ckptdiff.errors import CkptDiffError, ReadError
from ckptdiff.readers.hub.errors import HubError, RangeNotSupportedError
from ckptdiff.readers.hub.transport import (
    Transfer,
    call_with_retries,
    read_body,
    request_deadline,
    timeout_seconds,
)
from ckptdiff.wording import human_bytes

__all__ = ["HttpRangeSource"]


class HttpRangeSource:
    """A remote file as a :class:`~ckptdiff.readers.byte_source.ByteSource`: byte ranges
    fetched on demand by HTTP range requests, and kept.

    Args:
        url: the file's resolve URL.
        name: the file, for messages (``org/repo/model.safetensors``).
        size: the file's size when known (from the repo listing); learned from
            ``Content-Range`` otherwise.
        headers: request headers (authorization, user agent) from ``build_hf_headers``.
        transfer: where requests and bytes are counted.
        describe: turns an HTTP failure into the error to raise (see
            :func:`~ckptdiff.readers.hub.transport.translate_hub_error`).
        source: the source string, for messages.

    Example:
        >>> src = HttpRangeSource(url, name="x.safetensors", size=None, headers={},
        ...     transfer=Transfer(), describe=describe, source="hf://a/b")  # doctest: +SKIP
        >>> src.read(0, 8)  # doctest: +SKIP
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
        self.location = url
        self.path: str | None = None
        self.batch_reads = True
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

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset`` (fewer when the file ends first).

        Raises:
            RangeNotSupportedError: the server sent the whole file instead of the range.
            HubError: the request failed (see
                :func:`~ckptdiff.readers.hub.transport.translate_hub_error`).
        """
        return self._range(offset, offset + max(0, n))

    def _range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file (fewer when the file ends before ``end``)."""
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
            head = self._range(start, split)
            return head + (self._cached(split, end) or b"")
        offset, data = self._fetch(f"bytes={start}-{end - 1}", start)
        return data[start - offset : end - offset]

    def tail(self, n: int) -> tuple[int, bytes]:
        """The last ``n`` bytes of the file, and the offset of the first of them."""
        if self.size is not None:
            start = max(0, self.size - n)
            return start, self._range(start, self.size)
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
            "GET", self.url, headers=headers, timeout=timeout_seconds(), follow_redirects=True
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
            data = read_body(
                response,
                limit=_range_length(byte_range),
                deadline=request_deadline(),
                what=f"'{self.source}' ({self.name})",
            )
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


def _range_length(byte_range: str) -> int:
    """The bytes a ``bytes=a-b`` or ``bytes=-n`` request asks for."""
    first, _, last = byte_range.removeprefix("bytes=").partition("-")
    if not first:
        return int(last)
    return int(last) - int(first) + 1


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
