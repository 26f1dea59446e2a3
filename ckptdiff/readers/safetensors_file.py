"""``.safetensors`` files: the header only, read from any byte source in one or two reads."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from ckptdiff.readers.byte_source import ByteSource, LocalFile
from ckptdiff.readers.safetensors_header import MAX_HEADER_SIZE, header_length, parse_header
from ckptdiff.types import Manifest, TensorSpec

__all__ = [
    "aliases_from_metadata",
    "first_read_size",
    "read_safetensors",
    "read_safetensors_source",
    "read_safetensors_specs",
]


def read_safetensors_specs(
    src: ByteSource, name: str, head: bytes = b"", *, ordered: bool = True
) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """One file's tensor specs and ``__metadata__`` (the header, nothing else).

    Args:
        src: the file.
        name: the name used in messages and :attr:`TensorSpec.file`.
        head: bytes already read from offset 0 (the header's rest is read when they fall
            short; with none, the 8-byte length then the header: two reads).
        ordered: specs in natural key order (else the header's; see :func:`parse_header`).

    Raises:
        ReadError: the header is truncated, not JSON, or inconsistent with the file.
    """
    if len(head) < 8:
        head = src.read(0, 8)
    n = header_length(head[:8], src.size, name)
    if len(head) >= 8 + n:
        raw = head[8 : 8 + n]
    else:
        raw = head[8:] + src.read(len(head), 8 + n - len(head))
    data_size = src.size - 8 - n if src.size is not None else None
    return parse_header(raw, data_size, name, ordered=ordered)


def aliases_from_metadata(
    metadata: dict[str, str], tensors: dict[str, TensorSpec]
) -> dict[str, str]:
    """Tied tensors saved once: ``{dropped_key: kept_key}`` entries of ``__metadata__``.

    ``safetensors.torch.save_model`` drops the duplicates of shared tensors and records each
    dropped name against the one it kept.
    """
    return {k: v for k, v in metadata.items() if k not in tensors and v in tensors}


def read_safetensors_source(
    src: ByteSource, *, source: str, name: str, head: bytes = b"", ordered: bool = True
) -> Manifest:
    """A safetensors file's :class:`Manifest`, from its header (see
    :func:`read_safetensors_specs`)."""
    tensors, metadata = read_safetensors_specs(src, name, head, ordered=ordered)
    return Manifest(
        source=source,
        format="safetensors",
        tensors=tensors,
        files=(src.location,),
        metadata=metadata,
        aliases=aliases_from_metadata(metadata, tensors),
    )


def read_safetensors(path: str, source: str | None = None) -> Manifest:
    """Read a local ``.safetensors`` file into a :class:`Manifest` without touching tensor data.

    Example:
        >>> m = read_safetensors("model.safetensors")  # doctest: +SKIP
        >>> m.tensors["embeddings.word_embeddings.weight"].shape  # doctest: +SKIP
        (30522, 384)
    """
    with LocalFile.open(path) as src:
        return read_safetensors_source(src, source=source or path, name=os.path.basename(path))


#: Per tensor entry of a safetensors header, beyond its key and offsets: the JSON around them,
#: the longest dtype code (``F8_E4M3``) and a shape of two six-digit dimensions.
_ENTRY_BYTES = len('"":{"dtype":"F8_E4M3","shape":[123456,123456],"data_offsets":[,]},')
#: The 8-byte length, braces, ``__metadata__`` as transformers writes it, padding to 8 bytes.
_HEADER_EXTRA_BYTES = 8 + 2 + len('"__metadata__":{"format":"pt"},') + 7


def first_read_size(keys: Iterable[str], file_size: int | None) -> int:
    """Bytes that hold a safetensors shard's whole header, from what the index says of it.

    The index names every tensor of the shard; with the shard's size (from the repo listing)
    bounding the digits of its data offsets, the header's length is known within a few bytes a
    tensor. Asking for that much fetches the header in one request and little of the weights;
    a header that is longer after all (long ``__metadata__``) costs a second request, as before.

    Example:
        >>> first_read_size(["model.norm.weight"], 10**9)
        151
    """
    digits = len(str(file_size)) if file_size is not None else 20
    entry = _ENTRY_BYTES + 2 * digits
    size = _HEADER_EXTRA_BYTES + sum(len(json.dumps(k)) - 2 + entry for k in keys)
    if file_size is not None:
        size = min(size, file_size)
    return min(size, MAX_HEADER_SIZE + 8)
