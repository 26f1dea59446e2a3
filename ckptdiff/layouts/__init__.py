"""Training-stack layouts as transforms of manifests: what ``check`` compares, and what it adds.

- :func:`prepare_checkpoint`: quantized weights at their logical (unquantized) shapes
  (:mod:`~ckptdiff.layouts.quant`);
- :func:`layout_findings`: one model-parallel rank of N checked alone
  (:mod:`~ckptdiff.layouts.parallel`, which also merges the ranks of a model-parallel save);
- :func:`layout_of`: the layout a reader named (``peft-lora``, ``dcp``, ``deepspeed-zero3``...).

Reading the folders and files training stacks write is the readers' job
(:mod:`ckptdiff.readers.stacks`, :mod:`ckptdiff.readers.annotate`); nothing here imports a
reader. Torch-free: works on manifests, and on the small JSON files next to the weights.
"""

from __future__ import annotations

import dataclasses
import json
import os

from ckptdiff.layouts.parallel import shard_factor_finding
from ckptdiff.layouts.quant import logical_view
from ckptdiff.types import Finding, Manifest, Report

__all__ = [
    "MAX_SMALL_JSON",
    "layout_findings",
    "layout_of",
    "prepare_checkpoint",
    "read_small_json",
    "with_folder_config",
]

#: Largest JSON file read next to the weights (``config.json``, ``params.json``).
MAX_SMALL_JSON = 1 << 20


def layout_of(m: Manifest) -> str | None:
    """The layout name a reader recorded (``peft-lora``, ``dcp``...)."""
    layout = m.metadata.get("layout")
    return layout if isinstance(layout, str) else None


def read_small_json(path: str) -> dict | None:
    """The JSON object in the file at ``path``; None when it is missing, over
    :data:`MAX_SMALL_JSON` bytes, or not a JSON object."""
    if not os.path.isfile(path) or os.path.getsize(path) > MAX_SMALL_JSON:
        return None
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def with_folder_config(m: Manifest, folder: str) -> Manifest:
    """``m`` with ``folder/config.json``'s ``quantization_config`` (transformers) or
    ``quantization`` (MLX), unless its own metadata has one."""
    if "quantization_config" in m.metadata or "quantization" in m.metadata:
        return m
    config = read_small_json(os.path.join(folder, "config.json")) or {}
    extra = {k: config[k] for k in ("quantization_config", "quantization") if k in config}
    return dataclasses.replace(m, metadata={**m.metadata, **extra}) if extra else m


def prepare_checkpoint(checkpoint: Manifest, target: Manifest) -> Manifest:
    """What ``check`` compares: quantized weights at their unquantized shapes."""
    folder = os.path.dirname(os.path.abspath(checkpoint.files[0])) if checkpoint.files else ""
    return logical_view(with_folder_config(checkpoint, folder) if folder else checkpoint, target)


def layout_findings(report: Report, checkpoint: Manifest, target: Manifest) -> list[Finding]:
    """Findings ``check`` adds after diffing: one model-parallel rank of N checked alone."""
    found = shard_factor_finding(report, target)
    return [found] if found is not None else []
