"""A hub-compatible HTTP server on 127.0.0.1, for tests and the benchmark.

It answers what huggingface_hub asks of the hub when reading a repo:

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``model_info``; file
  sizes and LFS info with ``?blobs=true``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``list_repo_tree``, ``?recursive=true``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``Range`` (``bytes=a-b``, ``bytes=a-``,
  ``bytes=-n``), and the headers huggingface_hub reads: ``ETag``, ``X-Repo-Commit``,
  ``Content-Length``, ``Accept-Ranges``, ``Content-Range``, ``X-Linked-Size`` and
  ``X-Linked-Etag`` for LFS files; errors carry ``X-Error-Code`` as the hub's do.

Files are bytes in memory, files on disk, or synthetic: real header bytes followed by a declared
size of zeros that are generated only for the ranges actually requested, so a 16 GB repo costs
nothing to serve. Knobs per repo: gated (401 without a token, 403 with a wrong one), private,
answer 500 to the next N requests, ignore ``Range`` (answer 200 with the whole body), delay.
The server counts requests and body bytes per repo and file.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 64 * 1024
#: Files at least this big, or with a weights extension, are served as LFS files.
LFS_THRESHOLD = 10 * 1024 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


class RepoFile:
    """One file of a repo: its size and its bytes by range."""

    size: int

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``."""
        raise NotImplementedError

    def digest(self) -> str:
        """A stable content id (sha256 hex)."""
        raise NotImplementedError


class BytesFile(RepoFile):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]

    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class DiskFile(RepoFile):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self._digest: str | None = None

    def read(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def digest(self) -> str:
        if self._digest is None:
            st = self.path.stat()
            key = f"{self.path}:{st.st_size}:{st.st_mtime_ns}".encode()
            self._digest = hashlib.sha256(key).hexdigest()
        return self._digest


class SyntheticFile(RepoFile):
    """``prefix`` (real header bytes) then zeros up to ``size``; zeros are made on request."""

    def __init__(self, prefix: bytes, size: int) -> None:
        self.prefix = prefix
        self.size = size

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if start >= end:
            return b""
        head = self.prefix[start:end] if start < len(self.prefix) else b""
        return head + bytes(end - start - len(head))

    def digest(self) -> str:
        return hashlib.sha256(self.prefix + str(self.size).encode()).hexdigest()


@dataclass
class Repo:
    """A served repo and its knobs.

    Attributes:
        repo_id: ``org/name``.
        files: path -> file.
        gated: resolve answers 401 (no token) / 403 (another token) unless ``tokens`` has it.
        private: every endpoint answers 401 RepoNotFound unless ``tokens`` has the token.
        tokens: tokens with access.
        ignore_range: answer range requests with 200 and the whole file.
        fail: answer 500 to the next ``fail`` requests of kind ``fail_on``.
        fail_on: ``api``, ``resolve`` or ``range`` (GETs with a Range header).
        delay: seconds to wait before answering requests of kind ``fail_on``.
        hostile: what a hostile endpoint does: ``sha`` (the commit ``model_info`` names),
            ``commit`` (the ``X-Repo-Commit`` header), ``etag`` (the ``ETag`` header),
            ``names`` (more file names listed), ``endless`` (paths whose bodies never end),
            ``drip`` (seconds between the bytes of every body).
    """

    repo_id: str
    files: dict[str, RepoFile]
    gated: bool = False
    private: bool = False
    tokens: set[str] = field(default_factory=set)
    ignore_range: bool = False
    fail: int = 0
    fail_on: str = "range"
    delay: float = 0.0
    hostile: dict[str, Any] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        h = hashlib.sha1()
        for path in sorted(self.files):
            h.update(path.encode() + b"\0" + self.files[path].digest().encode() + b"\0")
        return h.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(WEIGHT_SUFFIXES) or self.files[path].size >= LFS_THRESHOLD

    def oid(self, path: str) -> str:
        digest = self.files[path].digest()
        return digest if self.is_lfs(path) else hashlib.sha1(digest.encode()).hexdigest()


@dataclass
class Hit:
    """One request the server answered."""

    method: str
    repo: str | None
    path: str | None
    kind: str
    status: int
    range: str | None
    bytes: int


class HubServer:
    """The server; ``start()`` it, point ``HF_ENDPOINT`` at :attr:`url`, ``stop()`` it."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> str:
        server = self

        class Handler(_Handler):
            hub = server

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self.url

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- repos --

    def add_repo(
        self, repo_id: str, files: Mapping[str, RepoFile | bytes | str | Path], **knobs: Any
    ) -> Repo:
        """Serve ``files`` (bytes, paths on disk, or RepoFile objects) as ``repo_id``."""
        served: dict[str, RepoFile] = {}
        for path, f in files.items():
            if isinstance(f, RepoFile):
                served[path] = f
            elif isinstance(f, bytes):
                served[path] = BytesFile(f)
            else:
                served[path] = DiskFile(f)
        repo = Repo(repo_id, served, **knobs)
        self.repos[repo_id] = repo
        return repo

    def add_folder(self, repo_id: str, folder: str | Path, **knobs: Any) -> Repo:
        """Serve every file under ``folder`` (small files in memory, big ones from disk)."""
        folder = Path(folder)
        files: dict[str, RepoFile | bytes | str | Path] = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file() and ".git" not in p.parts:
                rel = p.relative_to(folder).as_posix()
                files[rel] = p if p.stat().st_size > 1024 * 1024 else p.read_bytes()
        return self.add_repo(repo_id, files, **knobs)

    # -- counting --

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()

    def record(self, hit: Hit) -> None:
        with self.lock:
            self.hits.append(hit)

    def requests(
        self, repo: str | None = None, path: str | None = None, kind: str | None = None
    ) -> int:
        return len(self._select(repo, path, kind))

    def bytes(
        self, repo: str | None = None, path: str | None = None, kind: str | None = None
    ) -> int:
        return sum(h.bytes for h in self._select(repo, path, kind))

    def _select(self, repo: str | None, path: str | None, kind: str | None) -> list[Hit]:
        with self.lock:
            return [
                h
                for h in self.hits
                if (repo is None or h.repo == repo)
                and (path is None or h.path == path)
                and (kind is None or h.kind == kind)
            ]

    def summary(self, repo: str | None = None) -> list[tuple[str, str | None, str, int, int]]:
        """``(method, path, range, status, bytes)`` of each request, for messages."""
        return [
            (h.method, h.path, h.range or "", h.status, h.bytes)  # type: ignore[misc]
            for h in self._select(repo, None, None)
        ]


def _parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """``(start, end)`` exclusive; None for no usable range; ``"bad"`` for unsatisfiable."""
    if not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            return (max(0, size - n), size) if n > 0 else "bad"
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        return "bad"
    return start, min(end, size)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
        return

    # -- plumbing --

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        repo: str | None,
        path: str | None,
        kind: str,
    ) -> None:
        # counted before the answer leaves: a client never sees an answer not yet counted
        sent = len(body) if self.command != "HEAD" else 0
        self.hub.record(
            Hit(self.command, repo, path, kind, status, self.headers.get("Range"), sent)
        )
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if sent:
            self.wfile.write(body)

    def _json(self, status: int, data: Any, *, repo: str | None, kind: str = "api") -> None:
        body = json.dumps(data).encode()
        self._send(
            status, body, {"Content-Type": "application/json"}, repo=repo, path=None, kind=kind
        )

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        repo: str | None,
        path: str | None,
        kind: str,
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        headers["X-Error-Message"] = message
        body = json.dumps({"error": message}).encode()
        self._send(status, body, headers, repo=repo, path=path, kind=kind)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.startswith("Bearer ") else None

    # -- routing --

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(parts[2:], query)
            elif parts == ["api", "agent-harnesses"]:  # huggingface_hub's user-agent registry
                self._json(200, {"standardEnvVars": [], "harnesses": {}}, repo=None, kind="other")
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            else:
                self._error(404, None, "Not found", repo=None, path=url.path, kind="other")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _gate(self, repo: Repo, kind: str, path: str | None) -> bool:
        """Apply the repo's knobs; True when an answer was already sent."""
        if repo.private and self._token() not in repo.tokens:
            self._error(
                401, "RepoNotFound", "Repository not found", repo=repo.repo_id, path=path, kind=kind
            )
            return True
        matches = repo.fail_on == kind or (
            repo.fail_on == "range" and kind == "resolve" and self.headers.get("Range")
        )
        if matches and repo.delay:
            time.sleep(repo.delay)
        if matches and repo.fail > 0:
            repo.fail -= 1
            self._error(500, None, "Internal Error", repo=repo.repo_id, path=path, kind=kind)
            return True
        return False

    def _revision_ok(self, repo: Repo, rev: str, path: str | None, kind: str) -> bool:
        if rev in ("main", repo.sha, repo.hostile.get("sha")):
            return True
        self._error(
            404,
            "RevisionNotFound",
            f"Invalid rev id: {rev}",
            repo=repo.repo_id,
            path=path,
            kind=kind,
        )
        return False

    def _api(self, parts: list[str], query: Mapping[str, list[str]]) -> None:
        repo_id = f"{parts[0]}/{parts[1]}"
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(
                404, "RepoNotFound", "Repository not found", repo=repo_id, path=None, kind="api"
            )
            return
        if self._gate(repo, "api", None):
            return
        rest = parts[2:]
        if not rest or rest[0] == "revision":
            rev = rest[1] if len(rest) > 1 else "main"
            if not self._revision_ok(repo, rev, None, "api"):
                return
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            self._json(200, self._info(repo, blobs), repo=repo_id)
        elif rest[0] == "tree" and len(rest) >= 2:
            if not self._revision_ok(repo, rest[1], None, "api"):
                return
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            self._json(200, self._tree(repo, "/".join(rest[2:]), recursive), repo=repo_id)
        else:
            self._error(404, None, "Not found", repo=repo_id, path=None, kind="api")

    def _info(self, repo: Repo, blobs: bool) -> dict[str, Any]:
        siblings = []
        for path in sorted(repo.files):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib["size"] = repo.files[path].size
                sib["blobId"] = hashlib.sha1(repo.oid(path).encode()).hexdigest()
                if repo.is_lfs(path):
                    sib["lfs"] = {
                        "size": repo.files[path].size,
                        "sha256": repo.oid(path),
                        "pointerSize": 134,
                    }
            siblings.append(sib)
        siblings += [{"rfilename": name, "size": 10} for name in repo.hostile.get("names", ())]
        return {
            "_id": repo.sha[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.hostile.get("sha", repo.sha),
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }

    def _tree(self, repo: Repo, folder: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            if "/" in rel and not recursive:
                dirs.add(prefix + rel.split("/", 1)[0])
                continue
            entry: dict[str, Any] = {
                "type": "file",
                "oid": repo.oid(path),
                "size": repo.files[path].size,
                "path": path,
            }
            if repo.is_lfs(path):
                entry["lfs"] = {
                    "oid": repo.oid(path),
                    "size": repo.files[path].size,
                    "pointerSize": 134,
                }
            out.append(entry)
        out += [{"type": "directory", "oid": "0" * 40, "path": d} for d in sorted(dirs)]
        return out

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(
                404, "RepoNotFound", "Repository not found", repo=repo_id, path=path, kind="resolve"
            )
            return
        if self._gate(repo, "resolve", path):
            return
        if repo.gated and self._token() not in repo.tokens:
            status = 403 if self._token() else 401
            self._error(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.",
                repo=repo_id,
                path=path,
                kind="resolve",
            )
            return
        if not self._revision_ok(repo, rev, path, "resolve"):
            return
        f = repo.files.get(path)
        if f is None:
            self._error(
                404,
                "EntryNotFound",
                f'{path} does not exist on "{rev}"',
                repo=repo_id,
                path=path,
                kind="resolve",
            )
            return
        headers = {
            "ETag": f'"{repo.oid(path)}"',
            "X-Repo-Commit": repo.sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if repo.is_lfs(path):
            headers["X-Linked-Size"] = str(f.size)
            headers["X-Linked-Etag"] = f'"{repo.oid(path)}"'
        if "commit" in repo.hostile:
            headers["X-Repo-Commit"] = repo.hostile["commit"]
        if "etag" in repo.hostile:
            headers["ETag"] = headers["X-Linked-Etag"] = repo.hostile["etag"]
        wanted = self.headers.get("Range")
        span = _parse_range(wanted, f.size) if wanted and not repo.ignore_range else None
        if span == "bad":
            headers["Content-Range"] = f"bytes */{f.size}"
            self._send(416, b"", headers, repo=repo_id, path=path, kind="resolve")
            return
        if isinstance(span, tuple):
            start, end = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        else:
            start, end, status = 0, f.size, 200
        if path in repo.hostile.get("endless", ()) or repo.hostile.get("drip"):
            self._hostile_stream(status, headers, repo, start, end, path)
            return
        self._stream(status, headers, f, start, end, repo=repo_id, path=path)

    def _hostile_stream(
        self, status: int, headers: Mapping[str, str], repo: Repo, start: int, end: int, path: str
    ) -> None:
        """A body with no end (no Content-Length, zeros until the client hangs up, at most
        4 GiB), or one byte every ``drip`` seconds."""
        hit = Hit(self.command, repo.repo_id, path, "resolve", status, self.headers.get("Range"), 0)
        self.hub.record(hit)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        drip = repo.hostile.get("drip")
        if drip:
            self.send_header("Content-Length", str(end - start))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            return
        chunk, sent = (b"\0", 0) if drip else (bytes(CHUNK), 0)
        try:
            while sent < (end - start if drip else 4 << 30):
                self.wfile.write(chunk)
                self.wfile.flush()
                sent += len(chunk)
                with self.hub.lock:
                    hit.bytes += len(chunk)
                if drip:
                    time.sleep(drip)
        except (BrokenPipeError, ConnectionResetError, OSError):
            return

    def _stream(
        self,
        status: int,
        headers: Mapping[str, str],
        f: RepoFile,
        start: int,
        end: int,
        *,
        repo: str,
        path: str,
    ) -> None:
        hit = Hit(self.command, repo, path, "resolve", status, self.headers.get("Range"), 0)
        self.hub.record(hit)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        pos = start
        while pos < end:
            chunk = f.read(pos, min(end, pos + CHUNK))
            with self.hub.lock:
                hit.bytes += len(chunk)
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                with self.hub.lock:
                    hit.bytes -= len(chunk)
                self.close_connection = True
                return
            pos += len(chunk)


def serve_forever(folders: Iterable[tuple[str, str]]) -> None:  # pragma: no cover - manual use
    """Serve folders until interrupted: ``python -m tests.readers.hub.server org/name=dir ...``."""
    server = HubServer()
    for repo_id, folder in folders:
        server.add_folder(repo_id, folder)
    print(f"HF_ENDPOINT={server.start()}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    import sys

    serve_forever(tuple(a.split("=", 1)) for a in sys.argv[1:])  # type: ignore[misc]
