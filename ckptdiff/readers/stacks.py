"""Folders written by training stacks: told apart by their files, read by their own readers.

In order: a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.*``,
:mod:`~ckptdiff.readers.peft`), a torch.distributed.checkpoint folder (``.metadata``,
:mod:`~ckptdiff.readers.dcp`), a DeepSpeed save (``latest`` or ``*model_states.pt``,
:mod:`~ckptdiff.readers.deepspeed`) and model-parallel rank files (``consolidated.NN.pth``,
``mp_rank_NN/model_optim_rng.pt``, :mod:`~ckptdiff.readers.ranks`).

Torch-free: a folder's stack is told from file names and small JSON files.
"""

from __future__ import annotations

from ckptdiff.readers.annotate import annotate
from ckptdiff.readers.dcp import is_dcp_folder, read_dcp
from ckptdiff.readers.deepspeed import find_deepspeed_files, read_deepspeed
from ckptdiff.readers.peft import find_adapter_file
from ckptdiff.readers.ranks import rank_files, read_ranks
from ckptdiff.readers.weights_file import read_file
from ckptdiff.types import Manifest

__all__ = ["read_stack_folder"]


def read_stack_folder(path: str, source: str, *, select: str | None = None) -> Manifest | None:
    """Read a folder written by a training stack, or None when it is an ordinary folder.

    Args:
        path: the folder.
        source: the source string as the user gave it.
        select: the state dict to use inside pickled containers.

    Returns:
        The folder's manifest, its layout named; None for a folder no stack wrote.

    Raises:
        ReadError, SelectError, UnsafeCheckpointError: as the stack's reader.
    """
    adapter = find_adapter_file(path)
    if adapter is not None:
        return annotate(read_file(adapter, source, select=select))
    if is_dcp_folder(path):
        return read_dcp(path, source, select=select)
    if find_deepspeed_files(path, source) is not None:
        return read_deepspeed(path, source, select=select)
    ranks = rank_files(path)
    if len(ranks) >= 2:
        return read_ranks(path, ranks, source, select=select)
    return None
