"""Which weights a folder means: an index, a preferred name, or its one weights file.

One rule for a local folder and a hub repo's folder alike: :func:`choose_weights` works on file
names, :func:`resolve_folder` lists a local folder's files for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ckptdiff.errors import SourceNotFoundError, UnsupportedFormatError

__all__ = ["WEIGHT_EXTENSIONS", "WEIGHT_FILE_NAMES", "choose_weights", "resolve_folder"]

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


def choose_weights(names: Iterable[str], where: str) -> str:
    """Pick the weights among a folder's file names.

    An index first, then ``model.safetensors``, ``pytorch_model.bin``, ``adapter_model.*``,
    then the folder's one index or one weights file (one ``.safetensors`` among others).

    Args:
        names: the names of the files directly in the folder.
        where: the folder as the user named it, for messages.

    Raises:
        SourceNotFoundError: no weights.
        UnsupportedFormatError: several weight files and no index to say which.

    Example:
        >>> choose_weights(["config.json", "model.safetensors", "pytorch_model.bin"], "x")
        'model.safetensors'
    """
    present = sorted(set(names))
    for name in WEIGHT_FILE_NAMES:
        if name in present:
            return name
    indexes = [n for n in present if n.endswith(".index.json")]
    if len(indexes) == 1:
        return indexes[0]
    weights = [n for n in present if n.endswith(WEIGHT_EXTENSIONS)]
    safetensors = [n for n in weights if n.endswith(".safetensors")]
    if len(weights) == 1:
        return weights[0]
    if len(safetensors) == 1:
        return safetensors[0]
    if not weights:
        raise SourceNotFoundError(
            f"Cannot read '{where}' (folder): it holds no weights. Looked for "
            f"{', '.join(WEIGHT_FILE_NAMES[:4])} and files ending in "
            f"{', '.join(WEIGHT_EXTENSIONS)}."
        )
    raise UnsupportedFormatError(
        f"Cannot read '{where}' (folder): it holds {len(weights)} weight files and no "
        f"index ({', '.join(weights[:5])}{', ...' if len(weights) > 5 else ''}). Name one file."
    )


def resolve_folder(path: str, source: str) -> str:
    """The path of a local folder's weights (see :func:`choose_weights`).

    Raises:
        SourceNotFoundError: the folder holds no weights.
        UnsupportedFormatError: several weight files and no index to say which.
    """
    files = [e for e in os.listdir(path) if os.path.isfile(os.path.join(path, e))]
    return os.path.join(path, choose_weights(files, source))
