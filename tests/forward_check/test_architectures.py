"""Shape-only mode against the real thing, over many transformers architectures.

For each architecture a tiny config is built; the oracle is transformers itself, running the
same model on CPU with real tensors (no ckptdiff code involved). ``forward`` must agree: ok
where the real model runs, and, with the sequence made longer than the positions the config
allows, a failure where the real model fails.
"""

from __future__ import annotations

import json

import pytest
import torch

from ckptdiff.forward_check.api import forward

ARCHITECTURES = [
    "bert",
    "roberta",
    "distilbert",
    "albert",
    "electra",
    "gpt2",
    "gpt_neox",
    "opt",
    "llama",
    "mistral",
    "qwen2",
    "phi",
    "gemma",
]
TINY = {
    "hidden_size": 32,
    "n_embd": 32,
    "d_model": 32,
    "dim": 32,
    "embedding_size": 32,
    "num_hidden_layers": 2,
    "n_layer": 2,
    "n_layers": 2,
    "num_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "n_inner": 64,
    "hidden_dim": 64,
    "ffn_dim": 64,
    "word_embed_proj_dim": 32,
    "head_dim": 8,
    "vocab_size": 128,
    "max_position_embeddings": 32,
    "n_positions": 32,
}


def _config(model_type: str, tmp_path) -> tuple[str, object]:
    from transformers import AutoConfig

    fields = AutoConfig.for_model(model_type).to_dict()
    data = {k: v for k, v in TINY.items() if k in fields}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": model_type, **data}))
    return f"hf-config:{path}", AutoConfig.for_model(model_type, **data)


def _oracle(config: object, length: int) -> str | None:
    from transformers import AutoModel

    model = AutoModel.from_config(config).eval()
    try:
        with torch.no_grad():
            model(input_ids=torch.randint(0, 128, (2, length)))
    except Exception as e:  # noqa: BLE001 - the oracle's verdict
        return f"{type(e).__name__}: {e}"
    return None


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_shape_only_agrees_with_the_real_model(model_type, tmp_path):
    target, config = _config(model_type, tmp_path)
    for length in (16, 40):  # 40 is past the 32 positions of the absolute-position models
        report = forward(target, [f"input_ids=2x{length}"], batch_sizes=[2], auto_class="AutoModel")
        (run,) = report.runs
        real = _oracle(config, length)
        assert (run.status == "ok") == (real is None), (model_type, length, str(report), real)
        if real is not None:
            assert run.failure.module, str(report)  # a module path, not just the model
