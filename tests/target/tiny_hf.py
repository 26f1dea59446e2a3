"""Tiny transformers configs (real weights fit in a few kB) for tests that load with the real
loader, and a saver that writes what ``save_pretrained`` writes."""

from __future__ import annotations

import os
from typing import Any

TEXT = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 97,
    "max_position_embeddings": 64,
}
MOE = {
    **TEXT,
    "num_local_experts": 4,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 24,
    "shared_expert_intermediate_size": 24,
}
CLIP_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
}


def tiny_config(name: str) -> Any:
    """A tiny config of the architecture ``name`` (a model class name of transformers)."""
    import transformers as t

    if name == "BertForMaskedLM":
        return t.BertConfig(**{**TEXT, "num_key_value_heads": None}, type_vocab_size=2)
    if name == "GPT2LMHeadModel":
        return t.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64)
    if name == "LlamaForCausalLM":
        return t.LlamaConfig(**TEXT)
    if name == "MixtralForCausalLM":
        return t.MixtralConfig(**TEXT, num_local_experts=4, num_experts_per_tok=2)
    if name == "Qwen2MoeForCausalLM":
        return t.Qwen2MoeConfig(**{k: v for k, v in MOE.items() if k != "num_local_experts"})
    if name == "OlmoeForCausalLM":
        return t.OlmoeConfig(**{k: v for k, v in MOE.items() if k in TEXT}, num_experts=4,
                             num_experts_per_tok=2)
    if name == "T5ForConditionalGeneration":
        return t.T5Config(d_model=32, d_ff=48, num_layers=2, num_heads=4, d_kv=8, vocab_size=97)
    if name == "LlavaForConditionalGeneration":
        return t.LlavaConfig(
            text_config={"model_type": "llama", **TEXT}, vision_config=CLIP_VISION,
            image_token_index=96, vision_feature_layer=-1)
    if name == "MllamaForConditionalGeneration":
        return t.MllamaConfig(
            text_config={**TEXT, "num_hidden_layers": 2, "cross_attention_layers": [1],
                         "rope_scaling": None, "vocab_size": 97, "pad_token_id": 0},
            vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                           "num_global_layers": 1, "num_attention_heads": 4, "image_size": 16,
                           "patch_size": 8, "max_num_tiles": 4, "vision_output_dim": 64,
                           "intermediate_layers_indices": [0]},
            image_token_index=96)
    if name == "CLIPModel":
        return t.CLIPConfig(
            text_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "vocab_size": 97,
                         "max_position_embeddings": 16},
            vision_config={k: v for k, v in CLIP_VISION.items() if k != "model_type"},
            projection_dim=16)
    raise KeyError(name)


#: the sample of the loading-info comparison
SAMPLE = (
    "BertForMaskedLM",
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "OlmoeForCausalLM",
    "T5ForConditionalGeneration",
    "LlavaForConditionalGeneration",
    "MllamaForConditionalGeneration",
    "CLIPModel",
)


def save_tiny(name: str, folder: str | os.PathLike[str], **config_changes: Any) -> str:
    """``save_pretrained`` of a real tiny ``name`` (real CPU weights) into ``folder``."""
    import torch
    import transformers as t

    config = tiny_config(name)
    for k, v in config_changes.items():
        setattr(config, k, v)
    torch.manual_seed(0)
    model = getattr(t, name)(config)
    model.save_pretrained(folder)
    return os.fspath(folder)
