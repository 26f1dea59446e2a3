"""Local ``.safetensors`` files: header only, read with two small reads."""

from __future__ import annotations

import os

from ckptdiff.readers.safetensors_header import header_length, parse_header
from ckptdiff.types import Manifest, TensorSpec

__all__ = ["read_safetensors", "read_safetensors_specs", "aliases_from_metadata"]


def read_safetensors_specs(
    path: str, display: str | None = None
) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Read one file's tensor specs and ``__metadata__`` (the header, nothing else).

    Args:
        path: the file.
        display: the name to use in messages and ``TensorSpec.file`` (default: ``path``).

    Raises:
        ReadError: the header is truncated, not JSON, or inconsistent with the file.
    """
    name = display or path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = header_length(f.read(8), size, name)
        raw = f.read(n)
    return parse_header(raw, size - 8 - n, name)


def aliases_from_metadata(
    metadata: dict[str, str], tensors: dict[str, TensorSpec]
) -> dict[str, str]:
    """Tied tensors saved once: ``{dropped_key: kept_key}`` entries of ``__metadata__``.

    ``safetensors.torch.save_model`` drops the duplicates of shared tensors and records each
    dropped name against the one it kept.
    """
    return {k: v for k, v in metadata.items() if k not in tensors and v in tensors}


def read_safetensors(path: str, source: str | None = None) -> Manifest:
    """Read a ``.safetensors`` file into a :class:`Manifest` without touching tensor data.

    Example:
        >>> m = read_safetensors("model.safetensors")  # doctest: +SKIP
        >>> m.tensors["embeddings.word_embeddings.weight"].shape  # doctest: +SKIP
        (30522, 384)
    """
    tensors, metadata = read_safetensors_specs(path, os.path.basename(path))
    return Manifest(
        source=source or path,
        format="safetensors",
        tensors=tensors,
        files=(path,),
        metadata=metadata,
        aliases=aliases_from_metadata(metadata, tensors),
    )
