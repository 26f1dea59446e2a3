"""Shared targets for the forward tests: tiny transformers configs, the CoCa-like config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

COCA_CONFIG = Path(__file__).parents[2] / "ckptdiff" / "examples" / "coca_roberta-ViT-B-32.json"
#: Depth cut to one block per tower: the failures are the same, the runs faster.
COCA_SHALLOW = {"vision_cfg.layers": 1, "multimodal_cfg.layers": 1, "text_cfg.hf_layers": 1}


def write_config(folder: Path, name: str, data: dict) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return f"hf-config:{path}"


@pytest.fixture
def tiny_bert(tmp_path: Path) -> str:
    return write_config(
        tmp_path,
        "bert",
        {
            "model_type": "bert",
            "architectures": ["BertModel"],
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "vocab_size": 1000,
            "max_position_embeddings": 64,
        },
    )


@pytest.fixture
def tiny_gpt2(tmp_path: Path) -> str:
    return write_config(
        tmp_path,
        "gpt2",
        {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "vocab_size": 1000,
            "n_positions": 64,
        },
    )


@pytest.fixture
def coca_batch(tmp_path: Path) -> Path:
    """A collated CoCa batch tokenized by RoBERTa: ids and labels up to 50264."""
    import torch

    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, 50265, (2, 77), generator=g)
    text[:, 0] = 0
    text[0, 5] = 50264
    text[1, 60:] = 1
    path = tmp_path / "batch.pt"
    torch.save({"image": torch.randn(2, 3, 224, 224), "text": text, "labels": text.clone()}, path)
    return path
