"""Training-stack layouts: what wrote a checkpoint, and how to compare it with a model.

- :func:`read_layout_folder`: folders that are not one weights file (a PEFT adapter folder,
  a torch.distributed.checkpoint folder, a DeepSpeed save, model-parallel rank files);
- :func:`annotate`: names the layout of a manifest an ordinary reader returned (a PEFT adapter
  file, quantized weights, a DeepSpeed model-states file, ZeRO-3 placeholders);
- :func:`prepare_checkpoint` and :func:`layout_findings`: what ``check`` applies before and
  after diffing (quantized weights at their logical shapes, one model-parallel rank of N).

Torch-free: layouts are told from file names, small JSON files, key names and shapes.
"""

from __future__ import annotations

import json
import os
import re

from ckptdiff.types import Finding, Manifest, Report

__all__ = [
    "annotate",
    "layout_findings",
    "layout_of",
    "prepare_checkpoint",
    "read_layout_folder",
]

_CONSOLIDATED = re.compile(r"^consolidated\.([0-9]{1,9})\.pth$")
_MP_DIR = re.compile(r"^mp_rank_([0-9]{1,9})(?:_[0-9]{1,9})?$")
_MEGATRON_FILES = ("model_optim_rng.pt", "model_rng.pt")
MAX_SMALL_JSON = 1 << 20


def layout_of(m: Manifest) -> str | None:
    """The layout name a reader or :func:`annotate` recorded (``peft-lora``, ``dcp``...)."""
    layout = m.metadata.get("layout")
    return layout if isinstance(layout, str) else None


def read_layout_folder(path: str, source: str, *, select: str | None = None) -> Manifest | None:
    """Read a folder written by a training stack, or None when it is an ordinary folder.

    Supports, in order: a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.*``),
    a DCP folder (``.metadata``), a DeepSpeed save (``latest`` or ``*model_states.pt``), and
    model-parallel rank files (``consolidated.NN.pth``, ``mp_rank_NN/model_optim_rng.pt``).
    """
    from ckptdiff.readers.peft import find_adapter_file

    adapter = find_adapter_file(path)
    if adapter is not None:
        from ckptdiff.readers import read_file

        return annotate(read_file(adapter, source, select=select))
    from ckptdiff.readers.dcp import is_dcp_folder

    if is_dcp_folder(path):
        from ckptdiff.readers.dcp import read_dcp

        return read_dcp(path, source, select=select)
    from ckptdiff.readers.deepspeed import find_deepspeed_files, read_deepspeed

    if find_deepspeed_files(path, source) is not None:
        return read_deepspeed(path, source, select=select)
    ranks = _rank_files(path)
    if len(ranks) >= 2:
        return _read_ranks(path, ranks, source, select)
    return None


def _rank_files(path: str) -> list[str]:
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


def _small_json(path: str) -> dict | None:
    if not os.path.isfile(path) or os.path.getsize(path) > MAX_SMALL_JSON:
        return None
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _read_ranks(folder: str, files: list[str], source: str, select: str | None) -> Manifest:
    from ckptdiff.layouts.parallel import merge_manifests
    from ckptdiff.readers import read_file

    ranks = [read_file(f, source, select=select) for f in files]
    params = _small_json(os.path.join(folder, "params.json")) or {}
    hidden = params.get("dim") if type(params.get("dim")) is int else None
    if hidden is None:
        args = ranks[0].metadata.get("args")
        if isinstance(args, dict) and type(args.get("hidden_size")) is int:
            hidden = args["hidden_size"]
    return merge_manifests(
        ranks, source, rank_files=[os.path.relpath(f, folder) for f in files], hidden=hidden
    )


def annotate(m: Manifest) -> Manifest:
    """Name the layout of a manifest an ordinary reader returned (unchanged when plain).

    Recognises a PEFT adapter file (``adapter_config.json`` next to it, or adapter keys), a
    DeepSpeed model-states file (re-read with the DeepSpeed reader), and quantized weights.
    """
    if layout_of(m) is not None or not m.files:
        return m
    path = m.files[0]
    folder = os.path.dirname(os.path.abspath(path))
    from ckptdiff.readers.peft import (
        ADAPTER_FILES,
        annotate_adapter,
        looks_like_adapter,
        read_adapter_config,
    )

    if os.path.basename(path) in ADAPTER_FILES or looks_like_adapter(m):
        config = read_adapter_config(folder, m.source)
        if config is not None or looks_like_adapter(m):
            return annotate_adapter(m, config)
    from ckptdiff.readers.deepspeed import looks_like_deepspeed, read_deepspeed_file

    if m.format == "torch-zip" and looks_like_deepspeed(path) and m.selected == "module":
        return read_deepspeed_file(path, m.source, select=m.selected)
    from ckptdiff.layouts.quant import quant_finding

    finding = quant_finding(_with_config(m, folder))
    if finding is not None:
        metadata = {**m.metadata, "layout": finding.data["layout"]}
        return Manifest(**{**_fields(m), "metadata": metadata, "findings": (finding, *m.findings)})
    return m


def _fields(m: Manifest) -> dict:
    return {f: getattr(m, f) for f in m.__dataclass_fields__}


def _with_config(m: Manifest, folder: str) -> Manifest:
    """``m`` with config.json's ``quantization_config`` (transformers) or ``quantization`` (MLX)."""
    if "quantization_config" in m.metadata or "quantization" in m.metadata:
        return m
    config = _small_json(os.path.join(folder, "config.json")) or {}
    extra = {k: config[k] for k in ("quantization_config", "quantization") if k in config}
    return Manifest(**{**_fields(m), "metadata": {**m.metadata, **extra}}) if extra else m


def prepare_checkpoint(checkpoint: Manifest, target: Manifest) -> Manifest:
    """What ``check`` compares: quantized weights at their unquantized shapes."""
    from ckptdiff.layouts.quant import logical_view

    folder = os.path.dirname(os.path.abspath(checkpoint.files[0])) if checkpoint.files else ""
    return logical_view(_with_config(checkpoint, folder) if folder else checkpoint, target)


def layout_findings(report: Report, checkpoint: Manifest, target: Manifest) -> list[Finding]:
    """Findings ``check`` adds after diffing: one model-parallel rank of N checked alone."""
    from ckptdiff.layouts.parallel import shard_factor_finding

    found = shard_factor_finding(report, target)
    return [found] if found is not None else []
