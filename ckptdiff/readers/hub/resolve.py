"""Opening a hub repo: a source resolved to a commit and its files, online or from the cache."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable

from ckptdiff.readers.hub.errors import HubNotFoundError, HubOfflineError
from ckptdiff.readers.hub.repo import HubRepo
from ckptdiff.readers.hub.safety import check_commit, check_repo_names, is_commit
from ckptdiff.readers.hub.source import HubSource, parse_hub_source
from ckptdiff.readers.hub.transport import (
    TOTAL,
    Transfer,
    allow_download_from_env,
    call_with_retries,
    describe_for,
)
from ckptdiff.types import Manifest

__all__ = ["open_repo", "read_hub"]


def open_repo(source: str | HubSource, *, allow_download: bool | None = None) -> HubRepo:
    """Resolve a hub source to a commit and list its files (one ``model_info`` call).

    With ``HF_HUB_OFFLINE`` set, the cached snapshot of the revision is used instead.

    Args:
        source: a hub source string, or a parsed one.
        allow_download: download whole files when range requests cannot be used (None: from
            ``CKPTDIFF_ALLOW_DOWNLOAD``).

    Returns:
        The :class:`HubRepo`, its :attr:`~HubRepo.root` set to the source's folder (for a file
        source, the file's folder).

    Raises:
        HubNotFoundError: no such repo, revision, or path in the repo.
        HubAccessError: a gated or private repo the token cannot read.
        HubUnavailableError: timeouts or server errors after retries.
        HubOfflineError: offline, and the cache holds no snapshot of the revision.

    Example:
        >>> repo = open_repo("hf://sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> repo.weights_name()  # doctest: +SKIP
        'model.safetensors'
    """
    from huggingface_hub import constants

    src = parse_hub_source(source) if isinstance(source, str) else source
    if allow_download is None:
        allow_download = allow_download_from_env()
    if constants.is_offline_mode():
        repo = _offline_repo(src)
    else:
        repo = _online_repo(src)
    repo.allow_download = allow_download
    return repo


def _online_repo(src: HubSource) -> HubRepo:
    from huggingface_hub import HfApi, constants

    transfer = Transfer(TOTAL)
    api = HfApi(endpoint=constants.ENDPOINT)
    describe = describe_for(src.text, src.repo_id, "repo info", src.page)
    info = call_with_retries(
        lambda: api.model_info(
            src.repo_id,
            revision=src.revision,
            files_metadata=True,
            timeout=constants.HF_HUB_ETAG_TIMEOUT,
        ),
        transfer=transfer,
        describe=describe,
    )
    commit = check_commit(info.sha, src.text, "repo info")
    files: dict[str, int | None] = {}
    if info.siblings is not None:
        for sibling in info.siblings:
            size = (
                sibling.size
                if sibling.size is not None
                else (sibling.lfs.size if sibling.lfs is not None else None)
            )
            files[sibling.rfilename] = size
    else:
        entries = call_with_retries(
            lambda: list(api.list_repo_tree(src.repo_id, revision=commit, recursive=True)),
            transfer=transfer,
            describe=describe,
        )
        files = {e.path: getattr(e, "size", None) for e in entries if hasattr(e, "size")}
    check_repo_names(files, src.text)
    repo = HubRepo(src, commit, files, transfer=transfer)
    _set_root(repo, src)
    return repo


def _offline_repo(src: HubSource) -> HubRepo:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=src.repo_id, repo_type="model")
    storage = os.path.join(constants.HF_HUB_CACHE, folder)
    revision = src.revision or "main"
    commit: str | None = revision if is_commit(revision) else None
    if commit is None:
        ref = os.path.join(storage, "refs", *revision.split("/"))
        if os.path.isfile(ref):
            with open(ref, encoding="utf-8", errors="replace") as f:
                commit = f.read(100).strip()
            commit = commit if is_commit(commit) else None
    snapshot = os.path.join(storage, "snapshots", commit or "")
    if commit is None or not os.path.isdir(snapshot):
        raise HubOfflineError(
            f"Cannot read '{src.text}': HF_HUB_OFFLINE is set and the local cache "
            f"({constants.HF_HUB_CACHE}) holds nothing of {src.repo_id}@{revision}. Unset "
            f"HF_HUB_OFFLINE, or download the repo first (hf download {src.repo_id})."
        )
    files: dict[str, int | None] = {}
    for folder, _, names in os.walk(snapshot):
        for n in names:
            full = os.path.join(folder, n)
            rel = os.path.relpath(full, snapshot).replace(os.sep, "/")
            files[rel] = os.path.getsize(full) if os.path.exists(full) else None
    repo = HubRepo(src, commit, files, snapshot=snapshot)
    _set_root(repo, src)
    return repo


def _set_root(repo: HubRepo, src: HubSource) -> None:
    path = src.path.strip("/")
    if not path:
        return
    if src.kind in ("file", "any") and path in repo.files:
        repo.root = posixpath.dirname(path)
        repo.file = posixpath.basename(path)
        return
    if src.kind == "file":
        raise HubNotFoundError(
            f"Cannot read '{src.text}': {repo.label} has no file '{path}'{_near(path, repo.files)}."
        )
    if not any(f.startswith(path + "/") for f in repo.files):
        raise HubNotFoundError(
            f"Cannot read '{src.text}': {repo.label} has no file or folder '{path}'"
            f"{_near(path, repo.files)}."
        )
    repo.root = path


def _near(path: str, files: Iterable[str]) -> str:
    import difflib

    candidates = set(files) | {posixpath.dirname(f) for f in files if "/" in f}
    close = difflib.get_close_matches(path, sorted(candidates), n=3)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def read_hub(
    source: str, *, select: str | None = None, allow_download: bool | None = None
) -> Manifest:
    """Read a hub source's weights headers into a :class:`Manifest`, without the weights.

    Args:
        source: ``hf://org/repo[@revision][/path]`` or a hub URL.
        select: the state dict inside a nested pickled container.
        allow_download: download whole files when ranges cannot be used (None: from
            ``CKPTDIFF_ALLOW_DOWNLOAD``).

    Returns:
        The manifest, as the local reader gives it for the same files, plus
        ``metadata["transfer"]`` (``{"requests", "bytes", "cached_files"}``), ``metadata["hub"]``
        and an info finding ``hub_transfer``.

    Raises:
        UsageError: a malformed hub source.
        HubError: see :func:`open_repo`; :class:`RangeNotSupportedError` when the server
            ignores ranges and downloading is not allowed.
        ReadError, SelectError, UnsafeCheckpointError: as the local readers.

    Example:
        >>> m = read_hub("hf://sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> m.metadata["transfer"]  # doctest: +SKIP
        {'requests': 2, 'bytes': 65536, 'cached_files': 0}
    """
    repo = open_repo(source, allow_download=allow_download)
    return repo.read(repo.file, select=select)
