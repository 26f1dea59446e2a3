"""Hub sources: ``hf://org/repo[@revision][/path]`` and hub URLs, parsed and checked.

- ``hf://org/repo``, ``hf://org/repo@revision``, ``hf://org/repo@revision/subfolder`` or
  ``hf://org/repo/path/to/file.safetensors`` (a path is a file when the repo has that file);
- ``https://huggingface.co/org/repo``, ``.../tree/REV[/dir]`` (a folder) and
  ``.../blob/REV/file`` or ``.../resolve/REV/file`` (one file); URLs of the configured
  ``HF_ENDPOINT`` are taken the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from ckptdiff.errors import UsageError
from ckptdiff.readers.hub.safety import check_revision

__all__ = ["HubSource", "is_hub_source", "parse_hub_source"]

_HUB_HOSTS = ("huggingface.co", "hf.co", "www.huggingface.co")
_PR_REVISION = re.compile(r"^(refs/pr/\d+)(?:/(.*))?$")


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
