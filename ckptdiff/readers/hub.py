"""Hub sources: read a repo's weights headers by HTTP range requests, never its weights.

Sources (:func:`parse_hub_source`):

- ``hf://org/repo``, ``hf://org/repo@revision``, ``hf://org/repo@revision/subfolder`` or
  ``hf://org/repo/path/to/file.safetensors`` (a path is a file when the repo has that file);
- ``https://huggingface.co/org/repo``, ``.../tree/REV[/dir]`` (a folder) and
  ``.../blob/REV/file`` or ``.../resolve/REV/file`` (one file); URLs of the configured
  ``HF_ENDPOINT`` are taken the same way.

Everything goes through huggingface_hub, so the user's token (``HF_TOKEN`` or the login cache),
``HF_ENDPOINT``, cache and ``HF_HUB_OFFLINE`` apply. One ``model_info`` call resolves the
revision to a commit and lists the files with their sizes; then the weights are chosen as the
local reader chooses them in a folder (an index, ``model.safetensors``, ``pytorch_model.bin``,
``adapter_model.*``, the one weights file), and read:

- safetensors: one range request for the first 64 KiB (length and header), a second only when
  the header is longer;
- sharded: the index (a small file, through the cache) and every shard's header, fetched
  concurrently; the index-vs-shards checks are the local reader's
  (:func:`~ckptdiff.readers.sharded.index_manifest`);
- torch zip (``.bin``/``.pt``): the end record from the tail, the central directory, and
  ``data.pkl`` with its local header (plus the tiny ``byteorder`` record next to it), parsed by
  the local reader's pure steps; storages are never fetched.

A file already in the huggingface_hub cache is read from there. A legacy (pre-1.6) torch pickle,
or a server that ignores range requests, needs the whole file: that is refused unless
``allow_download`` (``--allow-download``, ``CKPTDIFF_ALLOW_DOWNLOAD=1``) is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from ckptdiff.errors import (
    ReadError,
    SelectError,
    SourceNotFoundError,
    UnsupportedFormatError,
    UsageError,
)
from ckptdiff.readers import WEIGHT_EXTENSIONS, WEIGHT_FILE_NAMES
from ckptdiff.readers.hub_safety import (
    check_commit,
    check_repo_names,
    check_revision,
    download_small_file,
)
from ckptdiff.readers.remote import (
    TOTAL,
    HubAccessError,
    HubError,
    HubNotFoundError,
    HubOfflineError,
    HubUnavailableError,
    RangeNotSupportedError,
    RangeReader,
    Transfer,
    allow_download_from_env,
    call_with_retries,
    describe_for,
    human_bytes,
    percent,
)
from ckptdiff.readers.safetensors_file import aliases_from_metadata
from ckptdiff.readers.safetensors_header import MAX_HEADER_SIZE, header_length, parse_header
from ckptdiff.readers.sharded import (
    index_manifest,
    parse_index,
    read_local_shard,
    shard_name_parts,
    shard_security_findings,
)
from ckptdiff.readers.sniff import FORMAT_NAMES, sniff_bytes
from ckptdiff.types import Finding, Manifest, TensorSpec

__all__ = [
    "FIRST_READ_SIZE",
    "first_read_size",
    "MAX_WORKERS",
    "HubAccessError",
    "HubError",
    "HubNotFoundError",
    "HubOfflineError",
    "HubRepo",
    "HubSource",
    "HubUnavailableError",
    "RangeNotSupportedError",
    "choose_weights",
    "is_hub_source",
    "open_repo",
    "parse_hub_source",
    "read_hub",
]

#: Bytes of the first range request of a safetensors file: the 8-byte length and, for nearly
#: every file, the whole header (a 7B model's shard header is about 20 kB).
FIRST_READ_SIZE = 64 * 1024
#: Bytes of the first request of a file that may be a torch zip: its end record lives there.
ZIP_TAIL_SIZE = 1024
#: Bytes read to sniff a file that is not a zip.
SNIFF_SIZE = 4096
#: Shards fetched at the same time.
MAX_WORKERS = 16

_HUB_HOSTS = ("huggingface.co", "hf.co", "www.huggingface.co")
_PICKLE_EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_PR_REVISION = re.compile(r"^(refs/pr/\d+)(?:/(.*))?$")


# --- sources -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    """A hub source, parsed.

    Attributes:
        text: the source as the user gave it.
        repo_id: ``org/name``.
        revision: the branch, tag or commit asked for (None: the default branch).
        path: a folder or file inside the repo (``""``: the repo's root).
        kind: ``file`` (a blob/resolve URL), ``folder`` (a tree URL) or ``any`` (``hf://``
            paths: a file when the repo has one of that name, else a folder).
    """

    text: str
    repo_id: str
    revision: str | None = None
    path: str = ""
    kind: Literal["any", "folder", "file"] = "any"

    def __post_init__(self) -> None:
        if self.revision is not None:
            check_revision(self.revision, self.text)

    @property
    def page(self) -> str:
        """The repo's page on the hub (where gated repos' terms are accepted)."""
        from huggingface_hub import constants

        return f"{constants.ENDPOINT}/{self.repo_id}"


def _endpoint_prefixes() -> tuple[str, ...]:
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT.rstrip("/")
    return (endpoint + "/",)


def is_hub_source(source: str) -> bool:
    """True for ``hf://...``, hub URLs, and URLs of the configured ``HF_ENDPOINT``."""
    if source.startswith("hf://"):
        return True
    if not source.startswith(("http://", "https://")):
        return False
    host = (urlsplit(source).hostname or "").lower()
    return host in _HUB_HOSTS or source.startswith(_endpoint_prefixes())


def _bad_source(source: str, problem: str) -> UsageError:
    return UsageError(
        f"Cannot read '{source}' (hub source): {problem}. Use hf://org/repo[@revision][/path] "
        "or https://huggingface.co/org/repo[/tree/REV[/dir] | /blob/REV/file]."
    )


def _repo_id(parts: list[str], source: str) -> tuple[str, list[str]]:
    if parts and parts[0] in ("datasets", "spaces"):
        raise _bad_source(source, f"{parts[0]} repos hold no checkpoints ckptdiff reads")
    if parts and parts[0] == "models":
        parts = parts[1:]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise _bad_source(source, "expected an org and a repo name")
    return f"{parts[0]}/{parts[1]}", parts[2:]


def parse_hub_source(source: str) -> HubSource:
    """Parse a hub source string.

    Args:
        source: ``hf://org/repo[@revision][/path]``, or a hub URL (``/tree/``, ``/blob/``,
            ``/resolve/`` forms).

    Returns:
        The :class:`HubSource`.

    Raises:
        UsageError: the string is not a hub source ckptdiff understands.

    Example:
        >>> src = parse_hub_source("hf://org/repo@v1.0/text_encoder")
        >>> src.repo_id, src.revision, src.path
        ('org/repo', 'v1.0', 'text_encoder')
    """
    if source.startswith("hf://"):
        body = source[len("hf://") :].split("?", 1)[0].strip("/")
        parts = body.split("/")
        if parts and parts[0] == "models":
            parts = parts[1:]
        if len(parts) >= 2 and "@" in parts[1]:
            name, _, rev_and_path = "/".join(parts[1:]).partition("@")
            pr = _PR_REVISION.match(rev_and_path)
            if pr:
                revision, path = pr.group(1), pr.group(2) or ""
            else:
                revision, _, path = rev_and_path.partition("/")
            revision = unquote(revision)
            if not revision:
                raise _bad_source(source, "'@' names no revision")
            repo_id, _ = _repo_id([parts[0], name], source)
            return HubSource(source, repo_id, revision, path.strip("/"), "any")
        repo_id, more = _repo_id(parts, source)
        return HubSource(source, repo_id, None, "/".join(more), "any")
    url = urlsplit(source)
    path = url.path
    for prefix in _endpoint_prefixes():
        base = urlsplit(prefix).path.rstrip("/")
        if base and source.startswith(prefix) and path.startswith(base + "/"):
            path = path[len(base) :]
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    repo_id, more = _repo_id(parts, source)
    if not more:
        return HubSource(source, repo_id, None, "", "folder")
    verb = more[0]
    if verb not in ("tree", "blob", "resolve") or len(more) < 2:
        raise _bad_source(source, f"unknown URL form '/{'/'.join(more)}'")
    revision, rest = more[1], more[2:]
    if revision == "refs" and len(rest) >= 2 and rest[0] == "pr":
        revision, rest = f"refs/pr/{rest[1]}", rest[2:]
    if verb == "tree":
        return HubSource(source, repo_id, revision, "/".join(rest), "folder")
    if not rest:
        raise _bad_source(source, f"a /{verb}/ URL must name a file")
    return HubSource(source, repo_id, revision, "/".join(rest), "file")


def choose_weights(names: Iterable[str], where: str) -> str:
    """Pick the weights among a folder's file names, as the local reader picks them.

    An index first, then ``model.safetensors``, ``pytorch_model.bin``, ``adapter_model.*``,
    then the folder's one index or one weights file (one ``.safetensors`` among others).

    Args:
        names: the file names directly in the folder.
        where: the folder as the user named it, for messages.

    Raises:
        SourceNotFoundError: no weights.
        UnsupportedFormatError: several weight files and no index to say which.

    Example:
        >>> choose_weights(["config.json", "model.safetensors", "pytorch_model.bin"], "x")
        'model.safetensors'
    """
    present = sorted(set(names))
    for name in WEIGHT_FILE_NAMES:
        if name in present:
            return name
    indexes = [n for n in present if n.endswith(".index.json")]
    if len(indexes) == 1:
        return indexes[0]
    weights = [n for n in present if n.endswith(WEIGHT_EXTENSIONS)]
    safetensors = [n for n in weights if n.endswith(".safetensors")]
    if len(weights) == 1:
        return weights[0]
    if len(safetensors) == 1:
        return safetensors[0]
    if not weights:
        raise SourceNotFoundError(
            f"Cannot read '{where}' (folder): it holds no weights. Looked for "
            f"{', '.join(WEIGHT_FILE_NAMES[:4])} and files ending in "
            f"{', '.join(WEIGHT_EXTENSIONS)}."
        )
    raise UnsupportedFormatError(
        f"Cannot read '{where}' (folder): it holds {len(weights)} weight files and no "
        f"index ({', '.join(weights[:5])}{', ...' if len(weights) > 5 else ''}). Name one file."
    )


# --- the repo ----------------------------------------------------------------------------------


@dataclass
class HubRepo:
    """One revision of a hub repo: its files, and how to read them.

    Made by :func:`open_repo`. Paths given to its methods are relative to ``root`` (the
    source's folder).

    Attributes:
        source: the parsed source.
        commit: the commit the revision resolved to (all reads use it).
        files: every file of the repo at that commit, with its size when known.
        root: the folder the source names (``""``: the repo's root).
        transfer: requests and bytes spent on this repo.
        allow_download: download whole files when ranges cannot be used.
        snapshot: the cached snapshot folder, when reading offline.
        file: the file the source names (relative to :attr:`root`), None for a folder.
    """

    source: HubSource
    commit: str
    files: dict[str, int | None]
    root: str = ""
    transfer: Transfer = field(default_factory=lambda: Transfer(TOTAL))
    allow_download: bool = False
    snapshot: str | None = None
    file: str | None = None
    _fetched: dict[str, str] = field(default_factory=dict, repr=False)

    # -- naming --

    def repo_path(self, name: str) -> str:
        """The path in the repo of ``name`` (relative to :attr:`root`)."""
        return posixpath.join(self.root, name) if self.root else name

    def names(self, recursive: bool = False) -> list[str]:
        """File names under :attr:`root` (directly in it unless ``recursive``)."""
        prefix = self.root + "/" if self.root else ""
        out = []
        for path in self.files:
            if path.startswith(prefix):
                rel = path[len(prefix) :]
                if recursive or "/" not in rel:
                    out.append(rel)
        return sorted(out)

    def has(self, name: str) -> bool:
        """Whether the repo has ``name`` (relative to :attr:`root`)."""
        return self.repo_path(name) in self.files

    def size(self, name: str) -> int | None:
        """The size of ``name`` in bytes, when the listing gave it."""
        return self.files.get(self.repo_path(name))

    def describe(self, what: str) -> Any:
        """The error translator for a request about ``what``."""
        return describe_for(self.source.text, self.source.repo_id, what, self.source.page)

    @property
    def label(self) -> str:
        """``org/repo@abc1234``."""
        return f"{self.source.repo_id}@{self.commit[:7]}"

    # -- local cache and small files --

    def cached(self, name: str) -> str | None:
        """The local path of ``name`` when the huggingface_hub cache holds it, else None."""
        path = self.repo_path(name)
        if self.snapshot is not None:
            local = os.path.join(self.snapshot, *path.split("/"))
            return local if os.path.isfile(local) else None
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(self.source.repo_id, path, revision=self.commit)
        return hit if isinstance(hit, str) and os.path.isfile(hit) else None

    def fetch(self, name: str, *, whole_weights: bool = False) -> str:
        """A local copy of ``name`` (a small file: config, index, tokenizer), via the cache.

        Raises:
            HubError: the file cannot be downloaded (see :mod:`ckptdiff.readers.remote`).
        """
        if name in self._fetched:
            return self._fetched[name]
        hit = self.cached(name)
        if hit is not None:
            self.transfer.add(cached=1)
            self._fetched[name] = hit
            return hit
        path = self.repo_path(name)
        if self.snapshot is not None:
            raise HubOfflineError(
                f"Cannot read '{self.source.text}' ({path}): HF_HUB_OFFLINE is set and the "
                f"cached snapshot of {self.label} lacks this file. Unset HF_HUB_OFFLINE, or "
                f"download it first (hf download {self.source.repo_id} {path})."
            )
        local: str = call_with_retries(
            lambda: self._download_small(path, whole_weights),
            transfer=None,
            describe=self.describe(path),
        )
        self._fetched[name] = local
        self._remember_revision()
        return local

    def _download_small(self, path: str, whole_weights: bool) -> str:
        """One small file, bounded and with its server-supplied names checked."""
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(self.source.repo_id, path, revision=self.commit,
                         endpoint=constants.ENDPOINT)  # fmt: skip
        return download_small_file(
            url, repo_id=self.source.repo_id, path=path, commit=self.commit,
            listed_size=self.files.get(path), headers=build_hf_headers(),
            source=self.source.text, transfer=self.transfer, whole_weights=whole_weights,
        )  # fmt: skip

    def _remember_revision(self) -> None:
        """Record ``refs/<revision> -> commit`` in the cache, as ``hf_hub_download`` does when
        given a branch: files are fetched by commit, and offline runs look the branch up."""
        from huggingface_hub import constants
        from huggingface_hub.file_download import (
            _cache_commit_hash_for_specific_revision,
            repo_folder_name,
        )

        revision = self.source.revision or "main"
        storage = os.path.join(
            constants.HF_HUB_CACHE, repo_folder_name(repo_id=self.source.repo_id, repo_type="model")
        )
        if _COMMIT.match(revision) or not os.path.isdir(storage):
            return
        try:
            _cache_commit_hash_for_specific_revision(storage, revision, self.commit)
        except OSError:  # a read-only cache: offline runs then need the commit
            pass

    def reader(self, name: str) -> RangeReader:
        """A :class:`RangeReader` on ``name`` at this repo's commit."""
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        path = self.repo_path(name)
        url = hf_hub_url(
            self.source.repo_id, path, revision=self.commit, endpoint=constants.ENDPOINT
        )
        return RangeReader(
            url,
            name=path,
            size=self.size(name),
            headers=build_hf_headers(),
            transfer=self.transfer,
            describe=self.describe(path),
            source=self.source.text,
        )

    # -- reading weights --

    def weights_name(self) -> str:
        """The weights file (or index) of :attr:`root`, chosen as in a local folder."""
        try:
            return choose_weights(self.names(), self.source.text)
        except SourceNotFoundError as e:
            if self.snapshot is not None:
                raise HubOfflineError(
                    f"Cannot read '{self.source.text}': HF_HUB_OFFLINE is set and the cached "
                    f"snapshot of {self.label} holds no weights"
                    f"{' (only ' + ', '.join(self.names()[:4]) + ')' if self.names() else ''}. "
                    "Unset HF_HUB_OFFLINE to read their headers from the hub."
                ) from e
            raise

    def read(self, name: str | None = None, *, select: str | None = None) -> Manifest:
        """Read the weights ``name`` (a weights file or an index; default: :meth:`weights_name`).

        Returns:
            The manifest, with ``metadata["transfer"]`` (this repo's requests and bytes so far),
            ``metadata["hub"]`` and an info finding ``hub_transfer``.

        Raises:
            HubError: the hub refused or failed (one line that says what to do).
            ReadError, SelectError, UnsafeCheckpointError: as the local readers.
        """
        name = name or self.weights_name()
        if name.endswith(".index.json"):
            if select:
                raise SelectError(
                    f"Cannot read '{self.source.text}' (--select {select}): a sharded checkpoint "
                    "is one flat state dict; --select applies to nested pickled containers."
                )
            manifest = self._read_sharded(name)
        else:
            manifest = self._read_file(name, select)
        return self._finish(manifest)

    def _read_file(self, name: str, select: str | None) -> Manifest:
        local = self.cached(name)
        path = self.repo_path(name)
        if local is not None:
            from ckptdiff.readers import read_file

            self.transfer.add(cached=1)
            return read_file(local, self.source.text, select=select)
        if self.snapshot is not None:
            raise HubOfflineError(
                f"Cannot read '{self.source.text}' ({path}): HF_HUB_OFFLINE is set and the "
                f"cached snapshot of {self.label} lacks this file. Unset HF_HUB_OFFLINE to read "
                "its header from the hub."
            )
        try:
            return read_remote_file(
                self.reader(name),
                source=self.source.text,
                file=posixpath.basename(name),
                select=select,
            )
        except _NeedsWholeFile as e:
            return self._download_and_read(name, select, str(e))
        except RangeNotSupportedError as e:
            return self._download_and_read(name, select, str(e), e)

    def _download_and_read(
        self, name: str, select: str | None, why: str, error: Exception | None = None
    ) -> Manifest:
        if not self.allow_download:
            if error is not None:
                raise error
            raise UnsupportedFormatError(why)
        from ckptdiff.readers import read_file

        return read_file(self.fetch(name, whole_weights=True), self.source.text, select=select)

    def _shard_specs(
        self, name: str, shard: str, keys: list[str] | None = None
    ) -> tuple[dict[str, TensorSpec], tuple[Finding, ...]]:
        """One shard's tensors and its security findings, from the cache or by ranges.

        ``keys``: the tensors the index puts in the shard, to size the first range request.
        """
        local = self.cached(name)
        if local is not None:
            self.transfer.add(cached=1)
            return read_local_shard(local, shard, self.source.text)
        try:
            reader = self.reader(name)
            manifest = read_remote_file(
                reader, source=f"{self.source.text}: {shard}",
                file=posixpath.basename(shard), shard=shard,
                first_read=None if keys is None else first_read_size(keys, reader.size),
            )
        except (_NeedsWholeFile, RangeNotSupportedError) as e:
            if not self.allow_download:
                if isinstance(e, RangeNotSupportedError):
                    raise
                raise UnsupportedFormatError(str(e)) from e
            return read_local_shard(self.fetch(name, whole_weights=True), shard, self.source.text)
        return dict(manifest.tensors), shard_security_findings(manifest, shard)

    def _read_sharded(self, index_name: str) -> Manifest:
        weight_map, index_meta = parse_index(_read_bytes(self.fetch(index_name)), self.source.text)
        folder = posixpath.dirname(index_name)
        shards = list(dict.fromkeys(weight_map.values()))
        present: list[tuple[str, str]] = []
        for shard in shards:
            name = posixpath.join(folder, *shard_name_parts(shard, self.source.text))
            if self.has(name):
                present.append((name, shard))
            elif self.snapshot is not None:
                raise HubOfflineError(
                    f"Cannot read '{self.source.text}' ({self.repo_path(name)}): HF_HUB_OFFLINE "
                    f"is set and the cached snapshot of {self.label} lacks this shard. Unset "
                    "HF_HUB_OFFLINE to read its header from the hub."
                )
        specs: dict[str, dict[str, TensorSpec]] = {}
        unsafe: list[Finding] = []
        if present:
            with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(present))) as pool:
                by_shard: dict[str, list[str]] = {}
                for key, shard in weight_map.items():
                    by_shard.setdefault(shard, []).append(key)
                results = pool.map(
                    lambda item: self._shard_specs(item[0], item[1], by_shard.get(item[1], [])),
                    present,
                )
                for (_, shard), (tensors, findings) in zip(present, results, strict=True):
                    specs[shard] = tensors
                    unsafe.extend(findings)
        files = (self._url(index_name), *(self._url(name) for name, _ in present))
        manifest = index_manifest(
            weight_map, index_meta, specs, source=self.source.text, files=files
        )
        if unsafe:
            manifest = dataclasses.replace(manifest, findings=(*unsafe, *manifest.findings))
        return manifest

    def _url(self, name: str) -> str:
        return f"hf://{self.source.repo_id}@{self.commit}/{self.repo_path(name)}"

    def _finish(self, manifest: Manifest) -> Manifest:
        transfer = self.transfer.to_dict()
        weight_bytes = sum(s.nbytes or 0 for s in manifest.tensors.values())
        share = (
            f" ({percent(transfer['bytes'], weight_bytes)} of {human_bytes(weight_bytes)} of "
            "weights)"
            if weight_bytes
            else ""
        )
        where = "the local cache" if self.snapshot is not None else "the hub"
        finding = Finding(
            "hub_transfer",
            f"read {self.label} from {where}: {transfer['requests']} request"
            f"{'' if transfer['requests'] == 1 else 's'}, {human_bytes(transfer['bytes'])}"
            f"{share}.",
            (),
            "info",
            {"transfer": transfer, "repo": self.source.repo_id, "commit": self.commit},
        )
        return dataclasses.replace(
            manifest,
            source=self.source.text,
            metadata={
                **manifest.metadata,
                "transfer": transfer,
                "hub": {
                    "repo": self.source.repo_id,
                    "revision": self.source.revision or "main",
                    "commit": self.commit,
                    "path": self.root,
                },
            },
            findings=(*manifest.findings, finding),
        )


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


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
            src.repo_id, revision=src.revision, files_metadata=True,
            timeout=constants.HF_HUB_ETAG_TIMEOUT,
        ),
        transfer=transfer,
        describe=describe,
    )
    commit = check_commit(info.sha, src.text, "repo info")
    files: dict[str, int | None] = {}
    if info.siblings is not None:
        for sibling in info.siblings:
            size = sibling.size if sibling.size is not None else (
                sibling.lfs.size if sibling.lfs is not None else None
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
    commit: str | None = revision if _COMMIT.match(revision) else None
    if commit is None:
        ref = os.path.join(storage, "refs", *revision.split("/"))
        if os.path.isfile(ref):
            with open(ref, encoding="utf-8", errors="replace") as f:
                commit = f.read(100).strip()
            commit = commit if _COMMIT.match(commit) else None
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
            f"Cannot read '{src.text}': {repo.label} has no file '{path}'"
            f"{_near(path, repo.files)}."
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


# --- formats over ranges -----------------------------------------------------------------------


class _NeedsWholeFile(Exception):
    """The format cannot be read by ranges (a legacy torch pickle)."""


def read_remote_file(
    reader: RangeReader,
    *,
    source: str,
    file: str,
    select: str | None = None,
    shard: str | None = None,
    first_read: int | None = None,
) -> Manifest:
    """Read one remote weights file by range requests, dispatching on its magic bytes.

    Args:
        reader: the file.
        source: the source string, for messages and the manifest.
        file: the name recorded as :attr:`TensorSpec.file`.
        select: the state dict inside a nested pickled container.
        shard: the shard name when the file is one shard of an index (safetensors specs then
            carry it as their ``file``, as the local sharded reader does).
        first_read: bytes of the first range request of a safetensors file (default
            :data:`FIRST_READ_SIZE`; see :func:`first_read_size`).

    Raises:
        ReadError, UnsupportedFormatError, SelectError: as the local readers.
        RangeNotSupportedError: the server ignores range requests.
    """
    ext = posixpath.splitext(reader.name)[1].lower()
    if ext in _PICKLE_EXTENSIONS:
        tail_offset, tail = reader.tail(ZIP_TAIL_SIZE)
        if b"PK\x05\x06" in tail:
            return _read_zip(reader, (tail_offset, tail), source=source, file=file, select=select)
    size = first_read or FIRST_READ_SIZE
    head = reader.read(0, size if ext not in _PICKLE_EXTENSIONS else SNIFF_SIZE)
    kind = sniff_bytes(head[:512], reader.size)
    if kind == "safetensors":
        if select:
            raise SelectError(
                f"Cannot read '{source}' (--select {select}): a safetensors file is one flat "
                "list of tensors; --select applies to pickled containers (.pt, .ckpt, .bin)."
            )
        tensors, metadata = read_remote_safetensors(reader, head, shard or file)
        return Manifest(
            source=source,
            format="safetensors",
            tensors=tensors,
            files=(reader.url,),
            metadata=metadata,
            aliases=aliases_from_metadata(metadata, tensors),
        )
    if kind == "zip":
        return _read_zip(reader, None, source=source, file=file, select=select)
    if kind == "pickle":
        raise _NeedsWholeFile(
            f"Cannot read '{source}' ({reader.name}): this is a legacy torch pickle (saved "
            "before torch 1.6), which cannot be read by ranges: its tensor list follows the "
            f"pickle. Pass --allow-download (or set CKPTDIFF_ALLOW_DOWNLOAD=1) to download "
            f"the {human_bytes(reader.size or 0)} file."
        )
    if kind == "empty":
        raise ReadError(f"Cannot read '{source}' ({reader.name}): the file is empty (0 bytes).")
    raise UnsupportedFormatError(
        f"Cannot read '{source}' ({reader.name}): this is {FORMAT_NAMES[kind]}, not a "
        "checkpoint ckptdiff reads (safetensors, torch .pt/.pth/.bin/.ckpt, or a *.index.json)."
    )


#: Per tensor entry of a safetensors header, beyond its key and offsets: the JSON around them,
#: the longest dtype code (``F8_E4M3``) and a shape of two six-digit dimensions.
_ENTRY_BYTES = len('"":{"dtype":"F8_E4M3","shape":[123456,123456],"data_offsets":[,]},')
#: The 8-byte length, braces, ``__metadata__`` as transformers writes it, padding to 8 bytes.
_HEADER_EXTRA_BYTES = 8 + 2 + len('"__metadata__":{"format":"pt"},') + 7


def first_read_size(keys: Iterable[str], file_size: int | None) -> int:
    """Bytes that hold a safetensors shard's whole header, from what the index says of it.

    The index names every tensor of the shard; with the shard's size (from the repo listing)
    bounding the digits of its data offsets, the header's length is known within a few bytes a
    tensor. Asking for that much fetches the header in one request and little of the weights;
    a header that is longer after all (long ``__metadata__``) costs a second request, as before.

    Example:
        >>> first_read_size(["model.norm.weight"], 10**9)
        151
    """
    digits = len(str(file_size)) if file_size is not None else 20
    entry = _ENTRY_BYTES + 2 * digits
    size = _HEADER_EXTRA_BYTES + sum(len(json.dumps(k)) - 2 + entry for k in keys)
    if file_size is not None:
        size = min(size, file_size)
    return min(size, MAX_HEADER_SIZE + 8)


def read_remote_safetensors(
    reader: RangeReader, head: bytes, name: str
) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """A remote safetensors file's specs and ``__metadata__`` from its header.

    Args:
        reader: the file.
        head: the bytes already read from offset 0.
        name: the name recorded in messages and :attr:`TensorSpec.file`.

    Raises:
        ReadError: see :func:`~ckptdiff.readers.safetensors_header.parse_header`.
    """
    n = header_length(head[:8], reader.size, name)
    if len(head) >= 8 + n:
        raw = head[8 : 8 + n]
    else:
        raw = head[8:] + reader.read(len(head), 8 + n)
    data_size = reader.size - 8 - n if reader.size is not None else None
    return parse_header(raw, data_size, name)


def _read_zip(
    reader: RangeReader,
    tail: tuple[int, bytes] | None,
    *,
    source: str,
    file: str,
    select: str | None,
) -> Manifest:
    # the torch zip reader's pure steps, fed by range requests (torch_zip is read, not changed)
    from ckptdiff.readers.torch_zip import (
        _END64,
        END_SEARCH_SIZE,
        MAX_ZIP_ENTRIES,
        archive_prefix,
        manifest_from_zip_parts,
        parse_central_directory,
        parse_end_record,
        parse_zip64_end_record,
    )
    from ckptdiff.readers.unpickler import MAX_PICKLE_SIZE

    name = reader.name
    if tail is None:
        tail = reader.tail(ZIP_TAIL_SIZE)
    tail_offset, data = tail
    if b"PK\x05\x06" not in data and tail_offset > 0:
        tail_offset, data = reader.tail(END_SEARCH_SIZE)
    entries, cd_offset, cd_size, record = parse_end_record(data, tail_offset, name)
    if record is not None:
        entries, cd_offset, cd_size = parse_zip64_end_record(
            reader.read(record, record + _END64.size), name
        )
    if entries > MAX_ZIP_ENTRIES:
        raise ReadError(
            f"Cannot read '{source}' ({name}): the zip declares {entries} entries, more than "
            f"the {MAX_ZIP_ENTRIES} a checkpoint reader accepts."
        )
    size = reader.size
    if size is not None and cd_offset + cd_size > size:
        raise ReadError(
            f"Cannot read '{source}' ({name}): the zip's central directory lies past the end "
            "of the file. The file is truncated or corrupt."
        )
    directory = parse_central_directory(reader.read(cd_offset, cd_offset + cd_size), entries, name)
    prefix = archive_prefix(directory, name)
    pkl = directory[f"{prefix}data.pkl"]
    if max(pkl.size, pkl.compressed_size) > MAX_PICKLE_SIZE:
        raise ReadError(
            f"Cannot read '{source}' ({pkl.name}): it is {max(pkl.size, pkl.compressed_size)} "
            "bytes, over the "
            f"{MAX_PICKLE_SIZE}-byte limit. Raise ckptdiff.readers.unpickler.MAX_PICKLE_SIZE "
            "if you trust the file."
        )
    order = directory.get(f"{prefix}byteorder")
    wanted = [pkl] + ([order] if order is not None and order.size <= 16 else [])
    blobs = _read_entries(reader, directory, wanted, cd_offset, prefix)
    return manifest_from_zip_parts(
        blobs[pkl.name],
        {e.name: e.size for e in directory.values()},
        prefix,
        name=name,
        source=source,
        file=file,
        files=(reader.url,),
        select=select,
        byteorder=blobs.get(order.name) if order is not None else None,
    )


#: Bytes allowed for a local zip header's extra field when guessing where an entry ends.
_LOCAL_EXTRA_SLACK = 1024


def _span_end(entry: Any, next_offset: int) -> int:
    """Where to stop reading ``entry``: at the next entry, but never further than its local
    header and data can reach. A hostile zip may put its next entry gigabytes after
    ``data.pkl``; a local header with a longer extra field costs one more small read."""
    reach = entry.offset + 30 + len(entry.name.encode()) + _LOCAL_EXTRA_SLACK
    return min(next_offset, reach + entry.compressed_size)


def _read_entries(
    reader: RangeReader,
    directory: Mapping[str, Any],
    wanted: list[Any],
    directory_offset: int,
    prefix: str,
) -> dict[str, bytes]:
    """The decoded bytes of ``wanted`` entries, neighbours fetched in one request.

    Each entry spans from its local header to the next entry (or the central directory).
    Wanted entries are read together when only small non-storage records lie between them, so
    ``data.pkl`` and ``byteorder`` (written next to each other by torch) cost one request and
    no storage byte is fetched.
    """
    from ckptdiff.readers.torch_zip import decode_entry, local_data_offset

    ordered = sorted(directory.values(), key=lambda e: e.offset)
    ends = {e.name: (ordered[i + 1].offset if i + 1 < len(ordered) else directory_offset)
            for i, e in enumerate(ordered)}
    position = {e.name: i for i, e in enumerate(ordered)}
    groups: list[list[Any]] = []
    for entry in sorted(wanted, key=lambda e: e.offset):
        if groups:
            last = groups[-1][-1]
            between = ordered[position[last.name] + 1 : position[entry.name]]
            if all(not e.name.startswith(f"{prefix}data/") and e.size <= 4096 for e in between):
                groups[-1].append(entry)
                continue
        groups.append([entry])
    out: dict[str, bytes] = {}
    for group in groups:
        start, end = group[0].offset, _span_end(group[-1], ends[group[-1].name])
        span = reader.read(start, end)
        for entry in group:
            begin = entry.offset - start
            data_start = local_data_offset(span[begin : begin + 30], entry, reader.name)
            raw = span[data_start - start : data_start - start + entry.compressed_size]
            if len(raw) < entry.compressed_size:  # a local header longer than the span allows
                raw = reader.read(data_start, data_start + entry.compressed_size)
            out[entry.name] = decode_entry(raw, entry, reader.name)
    return out
