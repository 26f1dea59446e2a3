"""The repos an audit reads: a local folder in the Hugging Face layout, or a hub repo."""

from __future__ import annotations

import os
from typing import Protocol

from ckptdiff.errors import SourceNotFoundError
from ckptdiff.types import Manifest

__all__ = ["HubRepo", "LocalRepo", "Repo", "open_repo"]


class Repo(Protocol):
    """A repo as the audit reads it: its file names, its weights, its small files."""

    source: str
    commit: str | None
    file: str | None

    def names(self) -> list[str]: ...

    def weights_name(self) -> str: ...

    def fetch(self, name: str) -> str: ...

    def read(self, name: str) -> Manifest: ...

    def transfer_dict(self) -> dict[str, int]: ...


class LocalRepo:
    """A local folder (or one file in it) in the Hugging Face layout."""

    def __init__(self, source: str) -> None:
        path = os.path.expanduser(source)
        self.source = source
        self.commit: str | None = None
        self.file: str | None = None
        if os.path.isfile(path):
            self.root, self.file = os.path.split(os.path.abspath(path))
        elif os.path.isdir(path):
            self.root = path
        else:
            raise SourceNotFoundError(f"Cannot audit '{source}': no such folder or file.")

    def names(self) -> list[str]:
        root = self.root
        return sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n)))

    def weights_name(self) -> str:
        from ckptdiff.readers.folder import choose_weights

        return choose_weights(self.names(), self.source)

    def fetch(self, name: str) -> str:
        return os.path.join(self.root, name)

    def read(self, name: str) -> Manifest:
        from ckptdiff.readers import read

        return read(os.path.join(self.root, name))

    def transfer_dict(self) -> dict[str, int]:
        return {"requests": 0, "bytes": 0, "range_bytes": 0, "cached_files": 0}


class HubRepo:
    """A hub repo, read over HTTP (headers by range requests)."""

    def __init__(self, source: str, allow_download: bool | None) -> None:
        from ckptdiff.readers.hub import open_repo as open_hub_repo

        self.repo = open_hub_repo(source, allow_download=allow_download)
        self.source = source
        self.commit: str | None = self.repo.commit
        self.file: str | None = self.repo.file

    def names(self) -> list[str]:
        return self.repo.names()

    def weights_name(self) -> str:
        return self.repo.weights_name()

    def fetch(self, name: str) -> str:
        return self.repo.fetch(name)

    def read(self, name: str) -> Manifest:
        return self.repo.read(name)

    def transfer_dict(self) -> dict[str, int]:
        return self.repo.transfer.to_dict()


def open_repo(source: str, allow_download: bool | None) -> Repo:
    """The hub repo or local folder ``source`` names."""
    from ckptdiff.readers.hub import is_hub_source

    if is_hub_source(source):
        return HubRepo(source, allow_download)
    return LocalRepo(source)
