"""What a hub server says, checked before it is used: names, commits, body sizes and time.

Every name a server supplies may become a path in the huggingface_hub cache: the commit of
``model_info`` (``sha``) and of ``X-Repo-Commit`` names a snapshot folder and a ``refs/`` file,
the ``ETag`` names a blob, a listed file name names a file in the snapshot. Each is validated
here (a commit is 40 hex digits; an ETag is a plain token; a file name stays inside the repo),
and a small file (config, index, tokenizer) is fetched with a cap on its size and a deadline,
then put in the cache under the validated names only.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from typing import Any

from ckptdiff.errors import UnsafeCheckpointError, UsageError
from ckptdiff.readers.hub.errors import HubError, HubLimitError
from ckptdiff.readers.hub.transport import read_body, request_deadline, timeout_seconds
from ckptdiff.terminal import printable

__all__ = [
    "MAX_SMALL_FILE",
    "UnsafeHubError",
    "check_commit",
    "check_repo_names",
    "check_revision",
    "download_small_file",
    "is_commit",
]

#: The largest small file (config.json, an index, a tokenizer) fetched whole; an index of a
#: million tensors is about 60 MB. ``CKPTDIFF_MAX_HUB_FILE`` (bytes) overrides it.
MAX_SMALL_FILE = 256 * 1024 * 1024

_COMMIT = re.compile(r"[0-9a-f]{40}")
_ETAG = re.compile(r"[0-9A-Za-z_\-]{1,128}")
# git's check-ref-format: no control characters, space, ~ ^ : ? * [ \, no "..", no "@{", no
# component starting with "." or ending with ".lock", no leading or trailing "/".
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^/|/$|^\.|/\.|\.lock(/|$)|^@$")


class UnsafeHubError(UnsafeCheckpointError, HubError):
    """The server supplied a name that would reach outside the cache or the repo (exit 3)."""


def check_revision(revision: str, source: str) -> str:
    """A revision given by the user, refused when it could not be a git ref or commit.

    Raises:
        UsageError: the revision holds ``..``, control characters, a leading ``/``...
    """
    if not revision or len(revision) > 255 or _BAD_REF.search(revision):
        raise UsageError(
            f"Cannot read '{printable(source)}' (hub source): "
            f"'{printable(revision)[:80]}' is not a valid revision (a branch, tag or commit "
            "has no '..', no control characters and no leading '/')."
        )
    return revision


def is_commit(value: str) -> bool:
    """Whether ``value`` is a commit id: exactly 40 lowercase hex digits."""
    return _COMMIT.fullmatch(value) is not None


def check_commit(value: object, source: str, where: str) -> str:
    """A commit id from the server: exactly 40 lowercase hex digits.

    Raises:
        UnsafeHubError: anything else (it would become a path in the cache).
    """
    if isinstance(value, str) and is_commit(value):
        return value
    raise UnsafeHubError(
        f"Cannot read '{printable(source)}' ({where}): the server gave the commit "
        f"'{printable(value)[:80]}', not a 40-hex-digit commit id. Refusing to use it: it would "
        "become a path in the cache. The endpoint (HF_ENDPOINT) is broken or hostile."
    )


def check_repo_names(names: Iterable[str], source: str) -> None:
    """File names listed by the server: relative, inside the repo, printable.

    Raises:
        UnsafeHubError: a name with a ``..`` part, an absolute path, a backslash or a control
            character.
    """
    for name in names:
        parts = name.split("/")
        bad = (
            not isinstance(name, str)
            or not name
            or name.startswith("/")
            or "\\" in name
            or any(p in ("", ".", "..") for p in parts)
            or printable(name) != name
            or len(name) > 4096
        )
        if bad:
            raise UnsafeHubError(
                f"Cannot read '{printable(source)}' (repo listing): the server lists the file "
                f"'{printable(name)[:120]}', a name that leaves the repo or hides characters. "
                "Refusing to use it as a path."
            )


def _max_small_file() -> int:
    raw = os.environ.get("CKPTDIFF_MAX_HUB_FILE", "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else MAX_SMALL_FILE


def _etag(headers: Any) -> str | None:
    raw = headers.get("X-Linked-Etag") or headers.get("ETag")
    if raw is None:
        return None
    return str(raw).removeprefix("W/").strip('"')


def download_small_file(
    url: str,
    *,
    repo_id: str,
    path: str,
    commit: str,
    listed_size: int | None,
    headers: dict[str, str],
    source: str,
    transfer: Any,
    whole_weights: bool = False,
) -> str:
    """Fetch one small file, bounded, and put it in the huggingface_hub cache.

    The body is capped (:data:`MAX_SMALL_FILE`, or the listed size) and the request has a
    deadline; ``X-Repo-Commit`` must be the repo's commit and the ``ETag`` a plain token before
    either names anything on disk. The file lands as ``blobs/<etag>`` with a link at
    ``snapshots/<commit>/<path>``, as ``hf_hub_download`` lays it out, so offline runs find it.

    A weights file the user asked to download (``whole_weights``) is capped by its listed
    size only and has no deadline (it may be gigabytes); it streams to disk.

    Returns:
        The local path.

    Raises:
        UnsafeHubError: a commit or ETag that is not a plain id.
        HubLimitError: a body beyond the cap or the deadline.
        Exception: what the HTTP client raises (for :func:`call_with_retries` to translate).
    """
    from huggingface_hub.utils import get_session, hf_raise_for_status

    what = f"'{printable(source)}' ({printable(path)})"
    cap = (1 << 50) if whole_weights else _max_small_file()
    limit = cap if listed_size is None else min(cap, listed_size)
    if listed_size is not None and listed_size > cap:
        raise HubLimitError(
            f"Cannot read {what}: the repo lists it at {listed_size:,} bytes, above the "
            f"{cap:,}-byte limit for a small file. CKPTDIFF_MAX_HUB_FILE raises it."
        )
    deadline = None if whole_weights else request_deadline()
    with get_session().stream(
        "GET",
        url,
        headers={**headers, "Accept-Encoding": "identity"},
        timeout=timeout_seconds(),
        follow_redirects=True,
    ) as response:
        transfer.add(1 + len(response.history))
        if response.status_code >= 400:
            read_body(response, limit=1 << 20, deadline=deadline, what=what)
            hf_raise_for_status(response)
        first = response.history[0] if response.history else response
        served = first.headers.get("X-Repo-Commit")
        if served is not None and check_commit(served, source, path) != commit:
            raise UnsafeHubError(
                f"Cannot read {what}: the server sent it for commit {served}, not the "
                f"repo's commit {commit}. The endpoint is broken or hostile."
            )
        etag = _etag(first.headers)
        if etag is None or not _ETAG.fullmatch(etag):
            raise UnsafeHubError(
                f"Cannot read {what}: the server gave the ETag '{printable(etag)[:80]}', not a "
                "plain content id. Refusing to use it: it would become a path in the cache."
            )
        blob, pointer, tmp_folder = _cache_paths(repo_id, path, commit, etag)
        fd, tmp = tempfile.mkstemp(dir=tmp_folder, prefix=f"{etag}.", suffix=".incomplete")
        try:
            with os.fdopen(fd, "wb") as f:
                read_body(response, limit=limit, deadline=deadline, what=what, sink=f)
                size = f.tell()
        except BaseException:
            os.unlink(tmp)
            raise
    transfer.add(0, size)
    if blob is None:  # a read-only cache: this run's private copy
        return tmp
    from huggingface_hub.file_download import _create_symlink

    os.replace(tmp, blob)
    os.makedirs(os.path.dirname(pointer), exist_ok=True)
    _create_symlink(blob, pointer, new_blob=True)
    return pointer


def _cache_paths(repo_id: str, path: str, commit: str, etag: str) -> tuple[str | None, str, str]:
    """``(blob, pointer, folder for the download)`` in the huggingface_hub cache, laid out as
    ``hf_hub_download`` lays it out; ``(None, "", private folder)`` when the cache cannot be
    written."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = os.path.join(
        constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type="model")
    )
    snapshots = os.path.abspath(os.path.join(storage, "snapshots", commit))
    pointer = os.path.abspath(os.path.join(snapshots, *path.split("/")))
    if os.path.commonpath([snapshots, pointer]) != snapshots:  # names were checked: a belt
        raise UnsafeHubError(f"Cannot read '{printable(path)}': it leaves the snapshot folder.")
    blobs = os.path.join(storage, "blobs")
    try:
        os.makedirs(blobs, exist_ok=True)
        if os.access(blobs, os.W_OK):
            return os.path.join(blobs, etag), pointer, blobs
    except OSError:
        pass
    return None, "", tempfile.mkdtemp(prefix="ckptdiff-hub-")
