"""A cache of built targets' manifests, so a repeated ``check`` need not import torch.

What a transformers target expects (keys, shapes, dtypes, buffers, tied groups, the config and
transformers' own ignore rules) depends only on the model class, its config and the library
versions. The first build stores its :class:`~ckptdiff.types.Manifest` as JSON under the
user's cache folder, keyed by a hash of:

- the target as named (``hf-config:path``), the config file's bytes, the overrides
  (``--arg``/``--config``) and the class asked for (``--auto-class``);
- the installed torch and transformers (their package files' paths, sizes and times, which
  change with every install), ckptdiff's own target-building code, and the ``CKPTDIFF_MAX_*``
  limits a config is held to before it is built.

A later build of the same target reads the manifest back without importing torch or
transformers. Only local transformers configs are cached (a factory's result depends on code
the key cannot see; a hub config would need the network to name); configs that ask for repo
code are never cached. Verification and probing (:func:`~ckptdiff.targets.rebuild`) always build
for real.

The folder is ``$CKPTDIFF_CACHE_DIR``, else ``$XDG_CACHE_HOME/ckptdiff/targets``, else
``~/.cache/ckptdiff/targets``; deleting it is always safe. ``--no-cache`` (or
``CKPTDIFF_NO_CACHE=1``) neither reads nor writes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ckptdiff.types import Finding, Manifest, new_specs

if TYPE_CHECKING:
    from ckptdiff.targets import TargetSpec

__all__ = ["cache_dir", "cache_key", "disabled", "enabled", "load", "store"]

SCHEMA = "ckptdiff.target-cache/1"
#: Largest config file hashed, and largest cache entry read back.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_ENTRY_BYTES = 256 * 1024 * 1024

#: Open :func:`disabled` blocks; process-wide, so worker threads (``audit -j``) see them too.
_DISABLED = [0]
_LOCK = threading.Lock()


def cache_dir() -> str:
    """The cache folder (it may not exist yet)."""
    explicit = os.environ.get("CKPTDIFF_CACHE_DIR")
    if explicit:
        return os.path.expanduser(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ckptdiff", "targets")


def enabled() -> bool:
    """False under :func:`disabled` or with ``CKPTDIFF_NO_CACHE`` set to a true value."""
    flag = os.environ.get("CKPTDIFF_NO_CACHE", "").strip().lower()
    return not _DISABLED[0] and flag in ("", "0", "false", "no")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Neither read nor write the cache inside this block (``--no-cache``)."""
    with _LOCK:
        _DISABLED[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _DISABLED[0] -= 1


def _file_stamp(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns]


def _package_stamp(name: str) -> list[Any] | None:
    """Where an installed package lives and when it was installed, without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    folder = os.path.dirname(spec.origin)
    return [_file_stamp(spec.origin), _file_stamp(os.path.join(folder, "version.py"))]


def _code_stamp() -> list[Any]:
    """ckptdiff's target-building code: a change to it makes every entry stale."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = sorted(e.path for e in os.scandir(here) if e.name.endswith(".py"))
    files.append(os.path.join(os.path.dirname(here), "types.py"))
    return [_file_stamp(f) for f in files]


def _config_file(target: TargetSpec) -> str | None:
    from ckptdiff.targets.hf import HF_PREFIX, HUB_PREFIXES

    body = target.spec.removeprefix(HF_PREFIX)
    if body.startswith(HUB_PREFIXES):
        return None
    path = os.path.expanduser(body)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    return path if os.path.isfile(path) else None


def cache_key(target: TargetSpec) -> str | None:
    """The hex key of ``target``'s entry, or None when the target is not cached.

    Example:
        >>> from ckptdiff.targets import TargetSpec
        >>> cache_key(TargetSpec("factory", "pkg.models:build")) is None
        True
    """
    if target.kind != "hf-config" or target.config_object is not None or target.module is not None:
        return None
    path = _config_file(target)
    if path is None:
        return None
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            return None
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if b"auto_map" in raw:  # repo code: what it builds is not ours to remember
        return None
    libraries = [_package_stamp("torch"), _package_stamp("transformers")]
    if None in libraries:
        return None
    try:
        args = json.dumps(target.args, sort_keys=True)
    except (TypeError, ValueError):
        return None
    parts = {
        "schema": SCHEMA,
        "spec": target.spec,
        "config": hashlib.sha256(raw).hexdigest(),
        "args": args,
        "auto_class": target.auto_class,
        "libraries": libraries,
        "code": _code_stamp(),
        # limits a config must pass before it is built (CKPTDIFF_MAX_LAYERS...): an entry
        # built under raised limits is not read back under the defaults
        "limits": sorted((k, v) for k, v in os.environ.items() if k.startswith("CKPTDIFF_MAX_")),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --- the manifest as JSON, exactly ---------------------------------------------------------------


def _encode_value(value: Any) -> Any:
    """JSON for config and metadata values; tuples and sets tagged so they come back as such."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_value(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"__frozenset__": sorted(_encode_value(v) for v in value)}
    if isinstance(value, list):
        return [_encode_value(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not _TAGS & value.keys():
            return {k: _encode_value(v) for k, v in value.items()}
        # keys of other types (transformers' id2label: {0: "LABEL_0"}), kept as pairs
        return {"__dict__": [[_encode_value(k), _encode_value(v)] for k, v in value.items()]}
    raise TypeError(f"{type(value).__name__} is not representable")


_TAGS = {"__tuple__", "__frozenset__", "__dict__"}


def _decode_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "__tuple__" in value:
            return tuple(_decode_value(v) for v in value["__tuple__"])
        if len(value) == 1 and "__frozenset__" in value:
            return frozenset(_decode_value(v) for v in value["__frozenset__"])
        if len(value) == 1 and "__dict__" in value:
            return {_decode_value(k): _decode_value(v) for k, v in value["__dict__"]}
        return {k: _decode_value(v) for k, v in value.items()}
    return value


def _encode(m: Manifest) -> dict[str, Any]:
    specs = list(m.tensors.values())
    return {
        "source": m.source,
        "format": m.format,
        "tensors": [[s.key, list(s.shape), s.dtype, s.nbytes, s.file] for s in specs],
        "files": list(m.files),
        "metadata": _encode_value(dict(m.metadata)),
        "findings": [
            [f.kind, f.message, list(f.keys), f.severity, _encode_value(dict(f.data))]
            for f in m.findings
        ],
        "selected": m.selected,
        "candidates": list(m.candidates),
        "buffers": sorted(m.buffers),
        "non_persistent": sorted(m.non_persistent),
        "aliases": dict(m.aliases),
        "tied": [list(group) for group in m.tied],
        "config": None if m.config is None else _encode_value(dict(m.config)),
    }


def _decode(d: dict[str, Any]) -> Manifest:
    rows = d["tensors"]
    tensors = new_specs(
        [r[0] for r in rows],
        [tuple(r[1]) for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        None,
    )
    for r in rows:
        if r[4] is not None:  # targets carry no file; kept exact all the same
            object.__setattr__(tensors[r[0]], "file", r[4])
    return Manifest(
        source=d["source"],
        format=d["format"],
        tensors=tensors,
        files=tuple(d["files"]),
        metadata=_decode_value(d["metadata"]),
        findings=tuple(
            Finding(kind, message, tuple(keys), severity, _decode_value(data))
            for kind, message, keys, severity, data in d["findings"]
        ),
        selected=d["selected"],
        candidates=tuple(d["candidates"]),
        buffers=frozenset(d["buffers"]),
        non_persistent=frozenset(d["non_persistent"]),
        aliases=dict(d["aliases"]),
        tied=tuple(tuple(group) for group in d["tied"]),
        config=None if d["config"] is None else _decode_value(d["config"]),
    )


def _entry_path(key: str) -> str:
    return os.path.join(cache_dir(), f"{key}.json")


def load(target: TargetSpec) -> Manifest | None:
    """The cached manifest of ``target``, or None (not cached, disabled, absent, unreadable)."""
    if not enabled():
        return None
    key = cache_key(target)
    if key is None:
        return None
    path = _entry_path(key)
    try:
        if os.path.getsize(path) > MAX_ENTRY_BYTES:
            return None
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
        if entry.get("schema") != SCHEMA or entry.get("key") != key:
            return None
        return _decode(entry["manifest"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None  # absent, or damaged: the caller builds (and stores afresh)


def store(target: TargetSpec, manifest: Manifest) -> bool:
    """Remember ``manifest`` for ``target``; True when an entry was written.

    Nothing is written unless the entry reads back equal to ``manifest`` (every field), so a
    hit is always exactly what building would return. Failing to write is never an error.
    """
    if not enabled():
        return False
    key = cache_key(target)
    if key is None:
        return False
    try:
        encoded = _encode(manifest)
        text = json.dumps({"schema": SCHEMA, "key": key, "manifest": encoded})
        if _decode(json.loads(text)["manifest"]) != manifest:
            return False
        folder = cache_dir()
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, _entry_path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (OSError, TypeError, ValueError):
        return False
    return True
