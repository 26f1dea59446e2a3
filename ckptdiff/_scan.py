"""``scan``: what is unsafe in checkpoints, without loading them: security findings only.

A source is a file, a folder (every weights file below it, found by content or extension) or a
hub repo. In a folder each file is judged as a checkpoint of the folder it sits in, and a link
out of that folder is a finding, never followed. One poisoned file is that file's result,
never the end of the scan.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.errors import CkptDiffError, ReadError, UnsafeCheckpointError
from ckptdiff.types import Finding, Manifest

__all__ = ["ScanResult", "scan_file", "scan_source"]

#: Formats a folder scan reads (sniffed by content); other files are skipped unless their
#: extension says weights.
_SCANNED_KINDS = {"safetensors", "zip", "pickle", "npy-object", "tar", "7z", "special"}
_WEIGHTS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".pickle",
    ".npy",
    ".joblib",
    ".model",
    ".tar",
    ".index.json",
)


@dataclass
class ScanResult:
    """One scanned file: ``clean``, ``flagged`` (security findings) or ``unreadable``."""

    path: str
    status: str
    format: str = ""
    tensors: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "path": self.path,
            "status": self.status,
            "format": self.format,
            "tensors": self.tensors,
            "findings": self.findings,
            "error": self.error or None,
        }


def _finding(kind: str, message: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"kind": kind, "message": message, "keys": list(keys), "severity": "security"}


def _as_dict(f: Finding) -> dict[str, Any]:
    return {"kind": f.kind, "message": f.message, "keys": list(f.keys), "severity": f.severity}


def _scanned(shown: str, manifest: Manifest) -> ScanResult:
    """A file read to its end: flagged by its security findings, else clean."""
    findings = [_as_dict(f) for f in manifest.security_findings]
    status = "flagged" if findings else "clean"
    return ScanResult(shown, status, manifest.format, len(manifest.tensors), findings)


def _walk(root: str) -> Iterator[tuple[str, str]]:
    """``(path, path relative to root)`` of every file below ``root``; links are not followed
    into folders, so link loops end."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        links = sorted(d for d in dirs if os.path.islink(os.path.join(folder, d)))
        for name in sorted(files) + links:
            path = os.path.join(folder, name)
            yield path, os.path.relpath(path, root).replace(os.sep, "/")


def _wanted(path: str) -> bool:
    from ckptdiff.readers.sniff import sniff_file

    if path.endswith(_WEIGHTS_SUFFIXES):
        return True
    try:
        kind = sniff_file(path) if os.path.isfile(path) else None
    except OSError:
        return False
    if kind == "pickle":  # a text file may start with an opcode letter: DeepSpeed's `latest`
        return _walks_as_pickle(path)
    return kind in _SCANNED_KINDS


def _walks_as_pickle(path: str) -> bool:
    """Whether the first 64 kB of a file read as pickle opcodes (a text file does not)."""
    import io
    import pickletools

    with open(path, "rb") as f:
        head = f.read(1 << 16)
    try:
        for _ in pickletools.genops(io.BytesIO(head)):
            pass
    except ValueError as e:
        return "exhausted" in str(e)  # cut at 64 kB: a longer pickle
    except Exception:
        return False
    return True


def scan_file(path: str, shown: str) -> ScanResult:
    """Read one file for its findings (an index: only its shard names)."""
    from ckptdiff.readers import read_file, read_witnessed

    try:
        if path.endswith(".index.json"):
            return _scan_index(path, shown)
        if not os.path.exists(path):
            return ScanResult(shown, "unreadable", error="a broken link or a link loop")
        if os.path.basename(path) == ".metadata":
            return _scan_dcp_metadata(path, shown)
        if path.endswith(".distcp") and os.path.isfile(
            os.path.join(os.path.dirname(path), ".metadata")
        ):
            return _scan_distcp(path, shown)
        manifest = read_witnessed(shown, lambda: read_file(path, shown))
    except UnsafeCheckpointError as e:
        return ScanResult(shown, "flagged", findings=[_finding("unsafe_file", str(e))])
    except CkptDiffError as e:
        return ScanResult(shown, "unreadable", error=str(e))
    except OSError as e:
        return ScanResult(shown, "unreadable", error=f"Cannot read '{shown}': {e.strerror}.")
    except Exception as e:  # one poisoned file is that file's row, never the end of the scan
        problem = " ".join(str(e).split())[:200]
        return ScanResult(
            shown, "unreadable", error=f"Cannot read '{shown}': {type(e).__name__}: {problem}."
        )
    return _scanned(shown, manifest)


def _scan_dcp_metadata(path: str, shown: str) -> ScanResult:
    """A torch.distributed.checkpoint ``.metadata`` pickle, judged by DCP's own allow-list (its
    record types), as ``inspect`` of the folder reads it."""
    from ckptdiff.readers.dcp import DCP_GLOBALS
    from ckptdiff.readers.unpickler import MAX_PICKLE_SIZE
    from ckptdiff.readers.unpickler.restricted import unpickle

    with open(path, "rb") as f:
        data = f.read(MAX_PICKLE_SIZE + 1)
    unpickled = unpickle(
        data, shown, context=".metadata", storage_form="none", extra_globals=DCP_GLOBALS
    )
    findings = [_as_dict(f) for f in unpickled.findings if f.severity == "security"]
    return ScanResult(shown, "flagged" if findings else "clean", "dcp-metadata", 0, findings)


def _scan_distcp(path: str, shown: str) -> ScanResult:
    """A DCP data file: each ``torch.save`` archive in it that ``.metadata`` names, scanned by
    its own zip directory (the file is a concatenation of archives, not one zip)."""
    from ckptdiff.readers.dcp import blob_findings, distcp_blobs

    blobs = distcp_blobs(os.path.dirname(path), os.path.basename(path), shown)
    findings: list[dict[str, Any]] = []
    problems: list[str] = []
    with open(path, "rb") as f:
        for offset, length in blobs:
            try:
                found = blob_findings(f, offset, length, shown)
            except ReadError as e:
                problems.append(str(e))
                continue
            findings += [
                {
                    "kind": x.kind,
                    "message": f"blob at byte {offset}: {x.message}",
                    "keys": list(x.keys),
                    "severity": x.severity,
                }
                for x in found
            ]
    status = "flagged" if findings else "unreadable" if problems else "clean"
    return ScanResult(shown, status, "dcp-data", len(blobs), findings, "; ".join(problems[:2]))


def _scan_index(path: str, shown: str) -> ScanResult:
    from ckptdiff.readers.sharded import confined_path, load_index

    weight_map, _ = load_index(path, shown)
    findings = []
    problems = []
    folder = os.path.dirname(os.path.abspath(path))
    real_root = os.path.realpath(folder)
    for name in dict.fromkeys(weight_map.values()):
        try:
            shard = confined_path(folder, name, shown, real_root=real_root)
        except UnsafeCheckpointError as e:
            findings.append(_finding("path_escape", str(e), (name,)))
            continue
        except (ValueError, OSError) as e:  # a NUL byte in the name, a name too long
            problems.append(f"shard name {name!r}: {e}")
            continue
        if os.path.isfile(shard):  # each shard the index names is scanned with it
            result = scan_file(shard, os.path.join(os.path.dirname(shown), name))
            findings += result.findings
            if result.error:
                problems.append(result.error)
    status = "flagged" if findings else "unreadable" if problems else "clean"
    return ScanResult(shown, status, "index", len(weight_map), findings, "; ".join(problems[:3]))


def scan_source(source: str) -> list[ScanResult]:
    """Scan one source: a file, a folder (every weights file below it) or a hub repo.

    In a folder, every file and index is judged as a checkpoint of the folder it sits in, so a
    subfolder gets the same verdicts whether it is scanned alone or as part of its parent.
    """
    from ckptdiff.readers import HUB_PREFIXES, read

    if source.startswith(HUB_PREFIXES):
        try:
            manifest = read(source)
        except UnsafeCheckpointError as e:
            return [ScanResult(source, "flagged", findings=[_finding("unsafe_file", str(e))])]
        except CkptDiffError as e:
            return [ScanResult(source, "unreadable", error=str(e))]
        return [_scanned(source, manifest)]
    path = os.path.expanduser(source)
    if not os.path.isdir(path):
        if not os.path.lexists(path):
            missing = f"Cannot read '{source}': no such file or folder."
            return [ScanResult(source, "unreadable", error=missing)]
        return [scan_file(path, source)]
    results = []
    for full, rel in _walk(path):
        shown = os.path.join(source, rel)
        if os.path.islink(full):
            escape = _link_escape(full, shown)
            if escape is not None:
                results.append(ScanResult(shown, "flagged", findings=[escape]))
                continue
            if os.path.isdir(full):
                continue
        if _wanted(full):
            results.append(scan_file(full, shown))
    return results


def _link_escape(full: str, shown: str) -> dict[str, Any] | None:
    """The finding for a link that leaves the folder it sits in, else None.

    Each link is judged against its own folder, the checkpoint folder a reader pointed at that
    folder would confine itself to, whatever folder the scan started from: a verdict does not
    depend on where the scan starts. Links into a Hugging Face cache's own blobs stay inside.
    """
    from ckptdiff.readers.sharded import confined_path

    folder, name = os.path.split(full)
    try:
        confined_path(folder, name, shown)
    except UnsafeCheckpointError:
        target = os.path.realpath(full)
        message = (
            f"Cannot read '{shown}': it is a link to {target}, outside the checkpoint's folder "
            f"'{os.path.dirname(shown) or '.'}'. Refusing to follow it."
        )
        return _finding("path_escape", message, (name,))
    return None
