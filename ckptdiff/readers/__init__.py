"""Readers: turn a source string into a :class:`~ckptdiff.types.Manifest`, lazily.

No module in this package imports torch, reads tensor data, or runs code from a pickle.

Resolution by cases, in order:
1. a hub source (``hf://...``, ``https://huggingface.co/...``);
2. a folder written by a training stack (:func:`ckptdiff.readers.stacks.read_stack_folder`: a
   PEFT adapter, a torch.distributed.checkpoint folder, a DeepSpeed save, model-parallel ranks);
   else a ``*.index.json`` inside it, else ``model.safetensors``, else ``pytorch_model.bin``,
   else the single weights file it holds;
3. a ``*.index.json`` file: a sharded checkpoint;
4. any other file, by its magic bytes: safetensors, torch zip, pickle (legacy torch or plain).

Local manifests then get their layout named (:func:`ckptdiff.readers.annotate.annotate`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from ckptdiff.errors import SelectError, SourceNotFoundError, UnsupportedFormatError
from ckptdiff.readers.sniff import FORMAT_NAMES, sniff_file
from ckptdiff.types import Finding, Manifest

__all__ = ["read", "read_witnessed", "resolve_folder", "WEIGHT_FILE_NAMES", "WEIGHT_EXTENSIONS"]

#: Preferred weight files in a folder, in order (Hugging Face layout first).
WEIGHT_FILE_NAMES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
#: Extensions that hold weights when a folder has no file of a preferred name.
WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")

HUB_PREFIXES = ("hf://", "https://huggingface.co/", "http://huggingface.co/")


def read(source: str, *, select: str | None = None) -> Manifest:
    """Read a checkpoint's keys, shapes and dtypes without reading tensor data.

    Args:
        source: a file, a folder, or a ``*.index.json`` (hub sources: ``hf://org/repo``).
        select: for nested pickled containers, the path of the state dict to use
            (``state_dict``, ``model_ema``, ``model.state_dict``...).

    Returns:
        The source's :class:`Manifest`.

    Raises:
        SourceNotFoundError: no such file, or a folder with no weights.
        ReadError: the file is truncated, corrupt, or of an unsupported kind.
        SelectError: ``select`` names nothing, or the container is ambiguous.

    Example:
        >>> m = read("pytorch_model.bin")  # doctest: +SKIP
        >>> len(m.tensors), m.format  # doctest: +SKIP
        (105, 'torch-zip')
    """
    return read_witnessed(source, lambda: _read(source, select))


def read_witnessed(source: str, fn: Callable[[], Manifest]) -> Manifest:
    """``fn()`` (a read of ``source``), with every pickle it opens accounted for.

    A reader may open a pickle only for shapes (an optimizer file), skip it (another rank's
    file) or fail on a later record: the security findings of every pickle it unpickled still
    reach the manifest, and a failure after a payload is the payload (exit 3), not
    "unreadable".

    Raises:
        UnsafeUnreadableError: a pickle named a forbidden global, then reading failed.
    """
    from ckptdiff.errors import UnsafeCheckpointError, UnsafeUnreadableError
    from ckptdiff.readers.unpickler.witness import witness
    from ckptdiff.terminal import printable

    with witness() as seen:
        try:
            manifest = fn()
        except UnsafeCheckpointError:
            raise
        except Exception as e:
            if not seen:
                raise
            names = ", ".join(dict.fromkeys(repr(f.keys[0]) for f in seen if f.keys))
            problem = " ".join(str(e).split())[:300] or type(e).__name__
            raise UnsafeUnreadableError(
                f"Cannot read '{printable(source)}': a pickle in it names {names[:300]}, outside "
                "the allow-list (torch.load(weights_only=False) would import and call it), "
                f"and then: {printable(problem).rstrip('.')}. Do not load this file."
            ) from e
    return with_findings(manifest, seen)


def with_findings(manifest: Manifest, findings: list[Finding]) -> Manifest:
    """``manifest`` with the security findings it does not already hold added."""
    have = {(f.kind, f.keys) for f in manifest.findings}
    missing: dict[tuple[str, tuple[str, ...]], Finding] = {}
    for f in findings:
        if (f.kind, f.keys) not in have:
            where = (f.data or {}).get("pickle")
            message = f"{where}: {f.message}" if where else f.message
            missing.setdefault((f.kind, f.keys), dataclasses.replace(f, message=message))
    if not missing:
        return manifest
    return dataclasses.replace(manifest, findings=(*manifest.findings, *missing.values()))


def _read(source: str, select: str | None) -> Manifest:
    if source.startswith(HUB_PREFIXES) or source.startswith(("http://", "https://")):
        from ckptdiff.readers.hub import read_hub

        return read_hub(source, select=select)
    path = os.path.expanduser(source)
    if not os.path.exists(path):
        raise SourceNotFoundError(f"Cannot read '{source}': no such file or folder.")
    from ckptdiff.readers.annotate import annotate

    if os.path.isdir(path):
        from ckptdiff.readers.stacks import read_stack_folder

        found = read_stack_folder(path, source, select=select, read_file=read_file)
        if found is not None:
            return found
        path = resolve_folder(path, source)
    if path.endswith(".index.json"):
        from ckptdiff.readers.sharded import read_sharded

        return annotate(read_sharded(path, source, select=select))
    return annotate(read_file(path, source, select=select))


def read_file(path: str, source: str, *, select: str | None = None) -> Manifest:
    """Read one (unsharded) weights file, dispatching on its magic bytes."""
    size = os.path.getsize(path)
    kind = sniff_file(path, size)
    if kind == "safetensors":
        from ckptdiff.readers.safetensors_file import read_safetensors

        if select:
            raise SelectError(
                f"Cannot read '{source}' (--select {select}): a safetensors file is one flat "
                "list of tensors; --select applies to pickled containers (.pt, .ckpt, .bin)."
            )
        return read_safetensors(path, source)
    if kind == "zip":
        from ckptdiff.readers.torch_zip import read_torch_zip

        return read_torch_zip(path, source, select=select)
    if kind == "pickle":
        from ckptdiff.readers.torch_legacy import read_pickle_file

        return read_pickle_file(path, source, select=select)
    if kind in ("npy-object", "tar"):
        _scan_embedded_pickles(path, kind, source)
    if kind == "empty":
        from ckptdiff.errors import ReadError

        raise ReadError(f"Cannot read '{source}': the file is empty (0 bytes).")
    raise UnsupportedFormatError(
        f"Cannot read '{source}': this is {FORMAT_NAMES[kind]}, not a checkpoint ckptdiff "
        "reads (safetensors, torch .pt/.pth/.bin/.ckpt, or a *.index.json)."
    )


#: The largest pickle inside a tar or .npy file that is walked for its globals.
_MAX_EMBEDDED_PICKLE = 64 << 20


def _scan_embedded_pickles(path: str, kind: str, source: str) -> None:
    """Unpickle (with fakes) the pickles of a format ckptdiff does not read: the members of a
    pre-1.6 torch tar (``sys_info``, ``pickle``, ``storages``, ``tensors``) and the body of a
    numpy object array. Their findings reach the caller through
    :func:`~ckptdiff.readers.unpickler.witness`; failures to parse are not this file's verdict.
    """
    import tarfile

    from ckptdiff.errors import ReadError
    from ckptdiff.readers.unpickler.restricted import unpickle

    blobs: list[tuple[str, bytes]] = []
    if kind == "tar":
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar.getmembers()[:64]:
                    if member.isfile() and member.size <= _MAX_EMBEDDED_PICKLE:
                        f = tar.extractfile(member)
                        if f is not None:
                            blobs.append((member.name, f.read()))
        except (tarfile.TarError, OSError, EOFError):
            return
    else:
        with open(path, "rb") as f:
            head = f.read(10)
            length = int.from_bytes(head[8:10], "little") if head[6:7] == b"\x01" else (
                int.from_bytes(f.read(2), "little") << 16 | int.from_bytes(head[8:10], "little")
            )  # fmt: skip
            f.seek(10 + length if head[6:7] == b"\x01" else 12 + length)
            blobs.append(("array", f.read(_MAX_EMBEDDED_PICKLE)))
    for context, data in blobs:
        try:
            unpickle(data, source, context=context, storage_form="none")
        except ReadError:
            continue


def resolve_folder(path: str, source: str) -> str:
    """Pick the weights of a folder: an index, a preferred name, or its one weights file.

    Raises:
        SourceNotFoundError: the folder holds no weights.
        UnsupportedFormatError: several weight files and no index to say which.
    """
    for name in WEIGHT_FILE_NAMES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    entries = sorted(os.listdir(path))
    indexes = [e for e in entries if e.endswith(".index.json")]
    if len(indexes) == 1:
        return os.path.join(path, indexes[0])
    weights = [
        e
        for e in entries
        if e.endswith(WEIGHT_EXTENSIONS) and os.path.isfile(os.path.join(path, e))
    ]
    safetensors = [e for e in weights if e.endswith(".safetensors")]
    if len(weights) == 1:
        return os.path.join(path, weights[0])
    if len(safetensors) == 1:
        return os.path.join(path, safetensors[0])
    if not weights:
        raise SourceNotFoundError(
            f"Cannot read '{source}' (folder): it holds no weights. Looked for "
            f"{', '.join(WEIGHT_FILE_NAMES[:4])} and files ending in "
            f"{', '.join(WEIGHT_EXTENSIONS)}."
        )
    raise UnsupportedFormatError(
        f"Cannot read '{source}' (folder): it holds {len(weights)} weight files and no "
        f"index ({', '.join(weights[:5])}{', ...' if len(weights) > 5 else ''}). Name one file."
    )
