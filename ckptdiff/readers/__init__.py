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

from ckptdiff.errors import SourceNotFoundError
from ckptdiff.gc_pause import gc_paused
from ckptdiff.readers.folder import resolve_folder
from ckptdiff.readers.weights_file import read_file
from ckptdiff.types import Finding, Manifest

__all__ = ["HUB_PREFIXES", "read", "read_file", "read_witnessed", "with_findings"]

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

    with witness() as seen, gc_paused():
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

        found = read_stack_folder(path, source, select=select)
        if found is not None:
            return found
        path = resolve_folder(path, source)
    if path.endswith(".index.json"):
        from ckptdiff.readers.sharded import read_sharded  # imports nothing when unused

        return annotate(read_sharded(path, source, select=select))
    return annotate(read_file(path, source, select=select))
