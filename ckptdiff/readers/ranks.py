"""Model-parallel rank files: one file per rank, merged into the logical model's manifest.

Meta's ``consolidated.NN.pth`` (with ``params.json``) and Megatron's
``mp_rank_NN/model_optim_rng.pt``: each rank file is read as an ordinary weights file
(:func:`~ckptdiff.readers.weights_file.read_file`), and the
ranks are merged by :func:`ckptdiff.layouts.parallel.merge_manifests`, which infers the split
dimensions from the model's hidden width.
"""

from __future__ import annotations

import os
import re

from ckptdiff.layouts import read_small_json
from ckptdiff.layouts.parallel import merge_manifests
from ckptdiff.readers.weights_file import read_file
from ckptdiff.types import Manifest

__all__ = ["rank_files", "read_ranks"]

_CONSOLIDATED = re.compile(r"^consolidated\.([0-9]{1,9})\.pth$")
_MP_DIR = re.compile(r"^mp_rank_([0-9]{1,9})(?:_[0-9]{1,9})?$")
_MEGATRON_FILES = ("model_optim_rng.pt", "model_rng.pt")


def rank_files(path: str) -> list[str]:
    """The rank files of a folder, rank 0 first (empty when it holds none)."""
    names = sorted(os.listdir(path))
    consolidated = sorted((int(m.group(1)), n) for n in names if (m := _CONSOLIDATED.match(n)))
    if consolidated:
        return [os.path.join(path, n) for _, n in consolidated]
    out = []
    for n in names:
        m = _MP_DIR.match(n)
        if m and os.path.isdir(os.path.join(path, n)):
            for f in _MEGATRON_FILES:
                if os.path.isfile(os.path.join(path, n, f)):
                    out.append((int(m.group(1)), os.path.join(path, n, f)))
                    break
    return [f for _, f in sorted(out)]


def read_ranks(folder: str, files: list[str], source: str, *, select: str | None) -> Manifest:
    """Read every rank file and merge them (hidden width from ``params.json``'s ``dim``, else
    the training args' ``hidden_size``)."""
    ranks = [read_file(f, source, select=select) for f in files]
    params = read_small_json(os.path.join(folder, "params.json")) or {}
    hidden = params.get("dim") if type(params.get("dim")) is int else None
    if hidden is None:
        args = ranks[0].metadata.get("args")
        if isinstance(args, dict) and type(args.get("hidden_size")) is int:
            hidden = args["hidden_size"]
    return merge_manifests(
        ranks, source, rank_files=[os.path.relpath(f, folder) for f in files], hidden=hidden
    )
