"""Config fixes inferred by probing the builder on meta, and verified by rebuilding."""

from __future__ import annotations

import json
import time

import pytest

from ckptdiff.diagnosis.diagnose import diff_manifests
from ckptdiff.diagnosis.emit import fixed_config_of
from ckptdiff.targets import build_target, rebuild
from fixtures.models import VIT_B_16, VIT_L_14, VIT_L_14_336

CLIP = "fixtures.models:build_clip"
LLAMA = "fixtures.models:build_llama"


def config_suggestions(report):
    return {
        s.field: (s.current, s.suggested, s.verified or s.status)
        for s in report.suggestions
        if s.kind == "config"
    }


def kinds(report, kind):
    return [f for f in report.findings if f.kind == kind]


def test_vit_l14_weights_into_a_vit_b16_config():
    """Scenario 1 (Chinese-CLIP#302): width, layers, patch size and the text tower, verified."""
    ck = build_target(CLIP, config=VIT_L_14)
    target = build_target(CLIP, config=VIT_B_16)
    start = time.perf_counter()
    r = diff_manifests(ck, target)
    elapsed = time.perf_counter() - start
    assert config_suggestions(r) == {
        "embed_dim": (512, 768, True),
        "vision_cfg.width": (768, 1024, True),
        "vision_cfg.layers": (12, 24, True),
        "vision_cfg.patch_size": (16, 14, True),
        "text_cfg.width": (512, 768, True),
        # needed so that width 1024 builds (1024 % 12 != 0); shapes cannot tell heads
        "vision_cfg.heads": (12, 16, "undetermined"),
    }
    heads = next(s for s in r.suggestions if s.field == "vision_cfg.heads")
    assert heads.data["determined"] is False
    (und,) = kinds(r, "undetermined")
    assert "vision_cfg.heads" in und.data["fields"] and "text_cfg.heads" in und.data["fields"]
    causes = {f.data["cause"]: f for f in kinds(r, "cause")}
    assert causes["depth"].message.startswith(
        "depth: the checkpoint has 24 layers in visual.transformer.resblocks, the target 12"
    )
    widths = [
        (f.data["checkpoint"], f.data["target"])
        for f in kinds(r, "cause")
        if f.data["cause"] == "width"
    ]
    assert widths == [(1024, 768), (768, 512)]  # vision tower, text tower
    assert causes["patch_size"].data["checkpoint"] == 14
    assert causes["position_grid"].data["grid"] == {"checkpoint": 16, "target": 14}
    # the fixed config really builds into the checkpoint's layout
    fixed = fixed_config_of(r)
    assert fixed is not None
    assert diff_manifests(ck, build_target(CLIP, config=fixed), suggest=False).ok
    assert elapsed < 30, elapsed


def test_vit_l14_336_image_size_comes_from_the_position_grid():
    ck = build_target(CLIP, config=VIT_L_14_336)
    r = diff_manifests(ck, build_target(CLIP, config=VIT_B_16))
    got = config_suggestions(r)
    assert got["vision_cfg.image_size"] == (224, 336, True)
    assert got["vision_cfg.patch_size"] == (16, 14, True)
    grid = next(f for f in kinds(r, "cause") if f.data["cause"] == "position_grid")
    assert "577 = 24*24+1 (patch 14: image 336)" in grid.message


def _llama(vocab: int, **kw):
    args = dict(
        vocab_size=vocab,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        tie_word_embeddings=False,
    )
    return build_target(LLAMA, args={**args, **kw})


def test_added_tokens_suggest_vocab_size_and_no_call_a_factory_model_lacks():
    """Scenario 2: embed and head rows 32000 -> 32005; the fixture model has no
    resize_token_embeddings, so the call (which could not be made) is not suggested."""
    r = diff_manifests(_llama(32005), _llama(32000))
    assert config_suggestions(r) == {"vocab_size": (32000, 32005, True)}
    assert [s for s in r.suggestions if s.kind == "call"] == []
    vocab = next(f for f in kinds(r, "cause") if f.data["cause"] == "vocab")
    assert vocab.data["checkpoint"] == 32005 and vocab.data["target"] == 32000


def _hf_llama(tmp_path, name, vocab):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        architectures=["LlamaForCausalLM"],
    )
    cfg.save_pretrained(tmp_path / name)
    return build_target(f"hf-config:{tmp_path / name}")


def test_added_tokens_into_a_transformers_model_get_the_call_made_on_meta(tmp_path):
    r = diff_manifests(_hf_llama(tmp_path, "a", 1005), _hf_llama(tmp_path, "b", 1000))
    assert config_suggestions(r) == {"vocab_size": (1000, 1005, True)}
    (call,) = [s for s in r.suggestions if s.kind == "call"]
    assert call.field == "resize_token_embeddings" and call.status == "verified"
    assert call.suggested == "model.resize_token_embeddings(1005)"
    assert "pad_to_multiple_of" not in call.data and call.data["grown_by"] == 5


def test_padded_vocab_mentions_pad_to_multiple_of(tmp_path):
    r = diff_manifests(_hf_llama(tmp_path, "a", 1024), _hf_llama(tmp_path, "b", 1000))
    (call,) = [s for s in r.suggestions if s.kind == "call"]
    assert call.data["pad_to_multiple_of"] == 64
    assert "pad_to_multiple_of=64" in call.message


def test_gqa_mlp_and_vocab_together():
    """A2 (HiDream-I1#4): Llama-3-style weights into Llama-2 defaults, at toy sizes."""
    ck = _llama(1280, num_kv_heads=1, intermediate_size=224)
    r = diff_manifests(ck, _llama(320))
    got = config_suggestions(r)
    assert got["vocab_size"] == (320, 1280, True)
    assert got["intermediate_size"] == (128, 224, True)
    causes = {f.data["cause"] for f in kinds(r, "cause")}
    assert {"kv_heads", "mlp", "vocab"} <= causes
    # num_kv_heads is None in the base config (the factory's default): probed from explicit
    # values, it alone moves only the k/v rows, and 1 rebuilds them; but with the head dim
    # derived from the heads, 2 heads of 1 key/value head fit as well: undetermined
    assert got["num_kv_heads"] == (None, 1, "undetermined")
    assert not kinds(r, "no_fix")
    assert diff_manifests(ck, build_target(LLAMA, config=fixed_config_of(r)), suggest=False).ok


def test_no_verified_fix_when_shapes_cannot_be_reproduced():
    """A key no config field moves: say so, suggest nothing."""
    target = _llama(320)
    ck_tensors = dict(target.tensors)
    spec = ck_tensors["model.norm.weight"]
    ck_tensors["model.norm.weight"] = type(spec)(spec.key, (65,), spec.dtype)
    from dataclasses import replace

    ck = replace(
        target, source="ck", format="safetensors", tensors=ck_tensors, config=None, metadata={}
    )
    r = diff_manifests(ck, target)
    assert config_suggestions(r) == {}
    (nofix,) = [f for f in kinds(r, "no_fix") if f.data.get("field") == "hidden_size"]
    assert "No verified fix from hidden_size = 65" in nofix.message
    assert fixed_config_of(r) is None


def test_no_fix_names_the_reason_for_foreign_shapes():
    target = build_target(CLIP, config=VIT_B_16)
    from dataclasses import replace

    t = dict(target.tensors)
    t["logit_scale"] = replace(t["logit_scale"], shape=(3, 3))
    ck = replace(target, source="ck", format="safetensors", tensors=t, config=None, metadata={})
    r = diff_manifests(ck, target)
    assert config_suggestions(r) == {}
    (nofix,) = kinds(r, "no_fix")
    assert "no numeric config field of the target changes these shapes" in nofix.message


def _mllama_config(tmp_path, vocab: int = 320):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MllamaConfig(
        text_config=dict(
            vocab_size=vocab,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            cross_attention_layers=[1],
        ),
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=4,
            intermediate_size=64,
            image_size=28,
            patch_size=14,
            vision_output_dim=64,
            intermediate_layers_indices=[0],
        ),
        architectures=["MllamaForConditionalGeneration"],
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return f"hf-config:{path}"


def test_mllama_embedding_is_vocab_plus_8_and_probing_knows_it(tmp_path):
    """B1: mllama's embed has vocab_size + 8 rows, its head vocab_size; +5 added tokens."""
    spec = _mllama_config(tmp_path)
    target = build_target(spec)
    ck = rebuild(target, {"text_config.vocab_size": 325})
    rows = {
        k: v.shape[0]
        for k, v in ck.tensors.items()
        if k.endswith(("embed_tokens.weight", "lm_head.weight"))
    }
    assert sorted(rows.values()) == [325, 333]
    r = diff_manifests(ck, target)
    got = config_suggestions(r)
    assert got["text_config.vocab_size"] == (320, 325, True)
    # no resize call to the embedding's rows, which would be wrong here
    assert not [s for s in r.suggestions if s.kind == "call"]
    assert kinds(r, "vocab_offset")
    assert not kinds(r, "inconsistent")  # the +8 is by design, not a disagreement
