"""Every fixture factory builds on meta exactly as it builds on CPU (tiny configs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckptdiff.targets import build_target
from ckptdiff.targets.module import manifest_from_module
from ckptdiff.types import Manifest
from fixtures import models
from fixtures.models import build_clip, build_llama, build_with_init_on_cpu
from fixtures.tiny import TINY_CLIP, TINY_LLAMA

CONFIGS = Path(models.__file__).parent / "configs" / "open_clip"


def layout(m: Manifest) -> dict:
    """What a meta build must reproduce: every key's shape and dtype, buffers, ties."""
    return {
        "tensors": {k: (t.shape, t.dtype, t.nbytes) for k, t in m.tensors.items()},
        "order": list(m.tensors),
        "buffers": m.buffers,
        "non_persistent": m.non_persistent,
        "tied": m.tied,
        "aliases": dict(m.aliases),
    }


CASES = [
    ("build_clip", build_clip, TINY_CLIP),
    ("build_clip", build_clip, {**TINY_CLIP, "precision": "fp16"}),
    ("build_llama", build_llama, TINY_LLAMA),
    ("build_llama", build_llama, {**TINY_LLAMA, "tie_word_embeddings": False}),
    ("build_with_init_on_cpu", build_with_init_on_cpu, {"width": 8, "depth": 3}),
]


@pytest.mark.parametrize(("name", "factory", "kwargs"), CASES)
def test_meta_build_equals_cpu_build(name, factory, kwargs):
    meta = build_target(f"fixtures.models:{name}", args=kwargs)
    cpu_model = factory(**kwargs)
    assert next(cpu_model.parameters()).device.type == "cpu"
    cpu = manifest_from_module(cpu_model, source="cpu")
    assert layout(meta) == layout(cpu)
    assert meta.format == "meta-model"
    assert meta.config == kwargs


def test_clip_keys_follow_open_clip():
    m = build_target("fixtures.models:build_clip", args=TINY_CLIP)
    shapes = {k: t.shape for k, t in m.tensors.items()}
    w, p, grid = 16, 4, 16 // 4
    assert shapes["visual.conv1.weight"] == (w, 3, p, p)
    assert shapes["visual.class_embedding"] == (w,)
    assert shapes["visual.positional_embedding"] == (grid * grid + 1, w)
    assert shapes["visual.transformer.resblocks.1.attn.in_proj_weight"] == (3 * w, w)
    assert shapes["visual.transformer.resblocks.1.attn.in_proj_bias"] == (3 * w,)
    assert shapes["visual.transformer.resblocks.1.attn.out_proj.weight"] == (w, w)
    assert shapes["visual.transformer.resblocks.1.mlp.c_fc.weight"] == (4 * w, w)
    assert shapes["visual.transformer.resblocks.1.mlp.c_proj.bias"] == (w,)
    assert shapes["visual.ln_post.weight"] == (w,)
    assert shapes["visual.proj"] == (w, 8)
    assert shapes["token_embedding.weight"] == (50, 16)
    assert shapes["positional_embedding"] == (8, 16)
    assert shapes["transformer.resblocks.0.ln_1.bias"] == (16,)
    assert shapes["ln_final.weight"] == (16,)
    assert shapes["text_projection"] == (16, 8)
    assert shapes["logit_scale"] == ()
    assert m.metadata["non_persistent_buffers"] == ["attn_mask"]
    assert "attn_mask" not in m.tensors


def test_llama_keys_follow_hugging_face():
    m = build_target("fixtures.models:build_llama", args=TINY_LLAMA)
    shapes = {k: t.shape for k, t in m.tensors.items()}
    assert shapes["model.embed_tokens.weight"] == (64, 16)
    assert shapes["model.layers.1.self_attn.q_proj.weight"] == (16, 16)
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (8, 16)  # 2 kv heads of 4 dims
    assert shapes["model.layers.1.self_attn.o_proj.weight"] == (16, 16)
    assert shapes["model.layers.1.mlp.gate_proj.weight"] == (32, 16)
    assert shapes["model.layers.1.mlp.down_proj.weight"] == (16, 32)
    assert shapes["model.layers.1.input_layernorm.weight"] == (16,)
    assert shapes["model.layers.1.post_attention_layernorm.weight"] == (16,)
    assert shapes["model.norm.weight"] == (16,)
    assert shapes["lm_head.weight"] == (64, 16)
    assert m.metadata["shared_tensors"] == [["model.embed_tokens.weight", "lm_head.weight"]]
    assert m.metadata["non_persistent_buffers"] == ["model.rotary_emb.inv_freq"]


def test_cpu_init_factory_records_both_buffer_kinds():
    m = build_target("fixtures.models:build_with_init_on_cpu", args={"device": "cuda"})
    assert m.buffers == {"running_scale"}
    assert m.metadata["non_persistent_buffers"] == ["causal_mask"]
    assert "running_scale" in m.tensors and "causal_mask" not in m.tensors
    assert {t.dtype for t in m.tensors.values()} == {"float16"}


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("ViT-B-16", models.VIT_B_16),
        ("ViT-B-32", models.VIT_B_32),
        ("ViT-L-14", models.VIT_L_14),
        ("ViT-L-14-336", models.VIT_L_14_336),
    ],
)
def test_preset_json_files_equal_module_presets(name, preset):
    assert json.loads((CONFIGS / f"{name}.json").read_text()) == preset


@pytest.mark.parametrize(
    ("name", "positions", "width", "patch", "layers", "embed"),
    [
        ("ViT-B-16", 197, 768, 16, 12, 512),
        ("ViT-B-32", 50, 768, 32, 12, 512),
        ("ViT-L-14", 257, 1024, 14, 24, 768),
        ("ViT-L-14-336", 577, 1024, 14, 24, 768),
    ],
)
def test_presets_build_on_meta_with_open_clip_shapes(name, positions, width, patch, layers, embed):
    m = build_target("fixtures.models:build_clip", config=CONFIGS / f"{name}.json")
    assert m.tensors["visual.positional_embedding"].shape == (positions, width)
    assert m.tensors["visual.conv1.weight"].shape == (width, 3, patch, patch)
    assert f"visual.transformer.resblocks.{layers - 1}.ln_1.weight" in m.tensors
    assert f"visual.transformer.resblocks.{layers}.ln_1.weight" not in m.tensors
    assert m.tensors["visual.proj"].shape == (width, embed)
    assert m.tensors["token_embedding.weight"].shape == (49408, embed if embed == 768 else 512)


def test_vit_b16_parameter_count_matches_open_clip():
    # open_clip reports 149.62M parameters for ViT-B-16
    m = build_target("fixtures.models:build_clip", args=models.VIT_B_16)
    assert round(m.parameter_count / 1e6, 2) == 149.62


def test_build_clip_rejects_unknown_settings():
    with pytest.raises(TypeError, match="vision_typo"):
        build_clip(vision_typo=1)
    build_clip(**TINY_CLIP, quick_gelu=True)  # open_clip keys without weights are accepted


def test_fixtures_run_forward_on_cpu():
    clip = build_clip(**TINY_CLIP)
    image = clip.visual(torch.zeros(2, 3, 16, 16))
    text = clip.encode_text(torch.ones(2, 8, dtype=torch.long))
    assert image.shape == text.shape == (2, 8)
