"""Hub sources: a repo's weights headers read by HTTP range requests, never its weights.

The hub is a transport and a repo, nothing more: the formats are parsed by the local readers'
parsers over an HTTP range source, and the weights are chosen as in a local folder.

- :mod:`~ckptdiff.readers.hub.source`: ``hf://org/repo[@revision][/path]`` and hub URLs;
- :mod:`~ckptdiff.readers.hub.resolve`: one ``model_info`` call resolves the revision to a
  commit and lists the files with their sizes (or the cached snapshot, offline);
- :mod:`~ckptdiff.readers.hub.repo`: the repo's files, the cache, its weights read;
- :mod:`~ckptdiff.readers.hub.range_source`, :mod:`~ckptdiff.readers.hub.transport`,
  :mod:`~ckptdiff.readers.hub.safety`: range requests, retries, bounded bodies and deadlines,
  names and commits from the server checked before they become paths;
- :mod:`~ckptdiff.readers.hub.errors`: one line that says what to do.

Everything goes through huggingface_hub, so the user's token (``HF_TOKEN`` or the login cache),
``HF_ENDPOINT``, cache and ``HF_HUB_OFFLINE`` apply.
"""

from __future__ import annotations

from ckptdiff.readers.hub.errors import (
    HubAccessError,
    HubError,
    HubNotFoundError,
    HubOfflineError,
    HubUnavailableError,
    RangeNotSupportedError,
)
from ckptdiff.readers.hub.repo import FIRST_READ_SIZE, MAX_WORKERS, HubRepo
from ckptdiff.readers.hub.resolve import open_repo, read_hub
from ckptdiff.readers.hub.source import HubSource, is_hub_source, parse_hub_source

__all__ = [
    "FIRST_READ_SIZE",
    "MAX_WORKERS",
    "HubAccessError",
    "HubError",
    "HubNotFoundError",
    "HubOfflineError",
    "HubRepo",
    "HubSource",
    "HubUnavailableError",
    "RangeNotSupportedError",
    "is_hub_source",
    "open_repo",
    "parse_hub_source",
    "read_hub",
]
