"""One revision of a hub repo: its files, the local cache, and its weights read by ranges.

The weights are chosen as the local reader chooses them in a folder
(:func:`~ckptdiff.readers.folder.choose_weights`) and parsed by the local readers' parsers over
an HTTP range source (:func:`~ckptdiff.readers.weights_file.read_source`):

- safetensors: one range request for the first 64 KiB (length and header), a second only when
  the header is longer; a shard's first request is sized from the index
  (:func:`~ckptdiff.readers.safetensors_file.first_read_size`);
- sharded: the index (a small file, through the cache) and every shard's header, fetched
  concurrently; the index-vs-shards checks are the local reader's
  (:func:`~ckptdiff.readers.sharded.index_manifest`);
- torch zip (``.bin``/``.pt``): the end record from the tail, the central directory, and
  ``data.pkl`` with its local header (plus the tiny ``byteorder`` record next to it); storages
  are never fetched.

A file already in the huggingface_hub cache is read from there. A legacy (pre-1.6) torch pickle,
or a server that ignores range requests, needs the whole file: that is refused unless
``allow_download`` (``--allow-download``, ``CKPTDIFF_ALLOW_DOWNLOAD=1``) is given.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.errors import SelectError, SourceNotFoundError, UnsupportedFormatError
from ckptdiff.readers.folder import choose_weights
from ckptdiff.readers.hub.errors import HubOfflineError, RangeNotSupportedError
from ckptdiff.readers.hub.range_source import HttpRangeSource
from ckptdiff.readers.hub.safety import download_small_file, is_commit
from ckptdiff.readers.hub.source import HubSource
from ckptdiff.readers.hub.transport import (
    TOTAL,
    Transfer,
    call_with_retries,
    describe_for,
)
from ckptdiff.readers.safetensors_file import first_read_size
from ckptdiff.readers.sharded import (
    index_manifest,
    load_index,
    read_local_shard,
    shard_name_parts,
    shard_security_findings,
)
from ckptdiff.readers.sniff import sniff_bytes
from ckptdiff.readers.weights_file import WholeFileNeeded, read_file, read_source
from ckptdiff.types import Finding, Manifest, TensorSpec
from ckptdiff.wording import human_bytes, percent

__all__ = [
    "FIRST_READ_SIZE",
    "MAX_WORKERS",
    "HubRepo",
    "NeedsWholeFile",
    "read_remote_file",
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

_PICKLE_EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


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
            HubError: the file cannot be downloaded (see :mod:`ckptdiff.readers.hub.transport`).
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

        url = hf_hub_url(
            self.source.repo_id, path, revision=self.commit, endpoint=constants.ENDPOINT
        )
        return download_small_file(
            url,
            repo_id=self.source.repo_id,
            path=path,
            commit=self.commit,
            listed_size=self.files.get(path),
            headers=build_hf_headers(),
            source=self.source.text,
            transfer=self.transfer,
            whole_weights=whole_weights,
        )

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
        if is_commit(revision) or not os.path.isdir(storage):
            return
        try:
            _cache_commit_hash_for_specific_revision(storage, revision, self.commit)
        except OSError:  # a read-only cache: offline runs then need the commit
            pass

    def reader(self, name: str) -> HttpRangeSource:
        """A byte source on ``name`` at this repo's commit, read by range requests."""
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        path = self.repo_path(name)
        url = hf_hub_url(
            self.source.repo_id, path, revision=self.commit, endpoint=constants.ENDPOINT
        )
        return HttpRangeSource(
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
        except NeedsWholeFile as e:
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
                reader,
                source=f"{self.source.text}: {shard}",
                file=posixpath.basename(shard),
                shard=shard,
                first_read=None if keys is None else first_read_size(keys, reader.size),
            )
        except (NeedsWholeFile, RangeNotSupportedError) as e:
            if not self.allow_download:
                if isinstance(e, RangeNotSupportedError):
                    raise
                raise UnsupportedFormatError(str(e)) from e
            return read_local_shard(self.fetch(name, whole_weights=True), shard, self.source.text)
        return dict(manifest.tensors), shard_security_findings(manifest, shard)

    def _read_sharded(self, index_name: str) -> Manifest:
        weight_map, index_meta = load_index(self.fetch(index_name), self.source.text)
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
        return index_manifest(
            weight_map, index_meta, specs, source=self.source.text, files=files, unsafe=unsafe
        )

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


class NeedsWholeFile(Exception):
    """The file cannot be read by ranges (a legacy torch pickle); the message says so."""


def read_remote_file(
    src: HttpRangeSource,
    *,
    source: str,
    file: str,
    select: str | None = None,
    shard: str | None = None,
    first_read: int | None = None,
) -> Manifest:
    """Read one remote weights file by range requests: sniffed with as few requests as can be,
    then parsed by :func:`~ckptdiff.readers.weights_file.read_source`.

    A ``.bin``/``.pt``-like file is asked for its tail first (a torch zip's end record lives
    there, and the zip reader goes on from it); any other file for its first ``first_read``
    bytes (default :data:`FIRST_READ_SIZE`), which hold a safetensors header.

    Args:
        src: the file.
        source: the source string, for messages and the manifest.
        file: the name recorded as :attr:`TensorSpec.file`.
        select: the state dict inside a nested pickled container.
        shard: the shard name when the file is one shard of an index.
        first_read: bytes of the first range request of a safetensors file (see
            :func:`~ckptdiff.readers.safetensors_file.first_read_size`).

    Raises:
        ReadError, UnsupportedFormatError, SelectError: as the local readers.
        NeedsWholeFile: a legacy torch pickle.
        RangeNotSupportedError: the server ignores range requests.
    """
    where = f"'{source}' ({src.name})"
    pickle_like = posixpath.splitext(src.name)[1].lower() in _PICKLE_EXTENSIONS
    if pickle_like:
        tail = src.tail(ZIP_TAIL_SIZE)
        if b"PK\x05\x06" in tail[1]:
            return read_source(
                src, "zip", source=source, file=file, where=where, select=select, tail=tail
            )
    head = src.read(0, SNIFF_SIZE if pickle_like else first_read or FIRST_READ_SIZE)
    kind = sniff_bytes(head[:512], src.size)
    try:
        return read_source(
            src, kind, source=source, file=file, where=where, select=select, shard=shard, head=head
        )
    except WholeFileNeeded as e:
        raise NeedsWholeFile(
            f"Cannot read {where}: this is a legacy torch pickle (saved before torch 1.6), "
            "which cannot be read by ranges: its tensor list follows the pickle. Pass "
            "--allow-download (or set CKPTDIFF_ALLOW_DOWNLOAD=1) to download the "
            f"{human_bytes(src.size or 0)} file."
        ) from e
