"""The one verifier: statuses proven on the emitted config, real transformers models on meta.

Checkpoints are written from a model built on meta with the mutated config (zeros of the
right shapes); the oracle is the mutated model itself, never ckptdiff.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ckptdiff import check
from ckptdiff.cli import main
from ckptdiff.diagnosis.verify import Fix, apply_fix, judge
from ckptdiff.targets import build_target

transformers = pytest.importorskip("transformers")


def write(model, path):
    save_file({k: torch.zeros(v.shape) for k, v in model.state_dict().items()}, str(path))
    return str(path)


def on_meta(cls, config):
    with torch.device("meta"):
        return cls(config)


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def qwen(**kw):
    args = dict(
        vocab_size=100,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
        architectures=["Qwen2ForCausalLM"],
    )
    return transformers.Qwen2Config(**{**args, **kw})


def test_width_and_kv_heads_are_solved_together_and_heads_are_undetermined(tmp_path):
    """Qwen2, hidden 48 / kv 2 against hidden 32 / kv 4: once proposed as num_attention_heads
    4 -> 7 "verified" with no fix for hidden_size, and an emitted config that did not fit."""
    truth = qwen(hidden_size=48, num_attention_heads=6, num_key_value_heads=2)
    ck = write(on_meta(transformers.Qwen2ForCausalLM, truth), tmp_path / "ck.safetensors")
    qwen().save_pretrained(tmp_path / "target")
    out = tmp_path / "fixed.json"
    r = CliRunner().invoke(
        main,
        [
            "check",
            ck,
            "--model",
            str(tmp_path / "target"),
            "--format",
            "json",
            "--emit-config",
            str(out),
        ],
    )
    assert r.exit_code == 1, r.output
    got = {
        s["field"]: (s["suggested"], s["status"], s["verified"])
        for s in json.loads(r.stdout)["suggestions"]
    }
    assert got["hidden_size"] == (48, "verified", True)
    # heads x head_dim is all the shapes show: 6 x 8 and 12 x 4 fit alike
    assert got["num_attention_heads"][1:] == ("undetermined", False)
    assert got["num_key_value_heads"][1:] == ("undetermined", False)
    emitted = transformers.Qwen2Config.from_json_file(str(out))
    assert shapes(on_meta(transformers.Qwen2ForCausalLM, emitted)) == shapes(
        on_meta(transformers.Qwen2ForCausalLM, truth)
    )


def test_kv_heads_with_an_explicit_head_dim_are_verified(tmp_path):
    """With head_dim fixed in the config, k/v rows pin num_key_value_heads: verified."""
    truth = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        num_hidden_layers=1,
        architectures=["LlamaForCausalLM"],
    )
    ck = write(on_meta(transformers.LlamaForCausalLM, truth), tmp_path / "ck.safetensors")
    base = truth.to_dict() | {"num_key_value_heads": 4}
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text(json.dumps(base))
    r = check(str(tmp_path / "t"), ck)
    (s,) = [s for s in r.suggestions if s.kind == "config"]
    assert (s.field, s.suggested, s.status) == ("num_key_value_heads", 2, "verified")


def mllama_config(vocab=1000):
    text = dict(
        vocab_size=vocab,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        cross_attention_layers=[1],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    vision = dict(
        hidden_size=32,
        attention_heads=4,
        num_hidden_layers=2,
        num_global_layers=1,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
        vision_output_dim=64,
        intermediate_layers_indices=[0],
        max_num_tiles=4,
    )
    return transformers.MllamaConfig(
        text_config=text, vision_config=vision, architectures=["MllamaForConditionalGeneration"]
    )


def test_mllama_resized_gets_the_call_not_a_field(tmp_path):
    """Its embedding has vocab_size + 8 rows by design: no vocab_size reproduces a model
    resized with resize_token_embeddings(1016); the call, made on meta, does."""
    model = on_meta(transformers.MllamaForConditionalGeneration, mllama_config())
    model.resize_token_embeddings(1016, mean_resizing=False)
    ck = write(model, tmp_path / "ck.safetensors")
    mllama_config().save_pretrained(tmp_path / "target")
    r = check(str(tmp_path / "target"), ck)
    assert [(s.kind, s.suggested, s.status) for s in r.suggestions] == [
        ("call", "model.resize_token_embeddings(1016)", "verified")
    ]
    assert r.fixed_config is None


def test_judge_statuses_on_a_real_rebuild(tmp_path):
    """verified / partial / unverified from one whole comparison each."""
    qwen().save_pretrained(tmp_path / "t")
    target = build_target(str(tmp_path / "t"))
    ck_model = on_meta(transformers.Qwen2ForCausalLM, qwen(intermediate_size=96, vocab_size=120))
    ck = build_target(ck_model)
    before = check(target, ck)
    mlp = {k for k in target.tensors if "mlp" in k}
    vocab = {"model.embed_tokens.weight", "lm_head.weight"}
    both = apply_fix(ck, target, Fix({"intermediate_size": 96, "vocab_size": 120}))
    assert judge(both, before, mlp).status == "verified"
    only_mlp = apply_fix(ck, target, Fix({"intermediate_size": 96}))
    assert judge(only_mlp, before, mlp | vocab).status == "partial"
    assert judge(only_mlp, before, mlp | vocab).still_differ == tuple(sorted(vocab))
    broken = apply_fix(ck, target, Fix({"hidden_size": 40}))
    assert judge(broken, before, {"model.norm.weight"}).status == "unverified"
    fails = apply_fix(ck, target, Fix({"hidden_act": "no-such-activation"}))
    assert fails.report is None and judge(fails, before, mlp).status == "unverified"


def test_hf_vit_into_a_timm_vit_is_one_naming_convention_finding(tmp_path):
    """Once: 30+ 'verified' key maps pairing attention.query with blocks.0.mlp.fc2 and
    classifier with attn.proj, and a '384 classes' cause, over 256 lines."""
    cfg = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=32,
        patch_size=8,
        num_labels=10,
    )
    ck = write(on_meta(transformers.ViTForImageClassification, cfg), tmp_path / "hf.safetensors")
    args = [
        "--arg",
        "img_size=32",
        "--arg",
        "patch_size=8",
        "--arg",
        "embed_dim=64",
        "--arg",
        "depth=3",
        "--arg",
        "num_classes=10",
    ]
    model = "tests.diagnosis.other_layouts:timm_vit"
    r = CliRunner().invoke(main, ["check", ck, "--model", model, *args])
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert len(lines) <= 40, r.stdout
    assert "Different naming conventions" in r.stdout and "no safe key map" in r.stdout
    assert "Suggestions" not in r.stdout and "classes" not in r.stdout
    data = json.loads(
        CliRunner().invoke(main, ["check", ck, "--model", model, *args, "--format", "json"]).stdout
    )
    assert data["suggestions"] == [] and data["after_key_map"] is None
    (f,) = [f for f in data["findings"] if f["kind"] == "naming_convention"]
    assert f["checkpoint_family"] == "transformers ViT-like"
    assert f["target_family"] == "timm ViT-like"


def test_resnet_visual_tower_against_a_vit_config_gets_no_patch_size(tmp_path):
    """OpenCLIP RN50 weights against a ViT config: vision_cfg.patch_size=3 was 'verified'."""
    from tests.diagnosis.other_layouts import resnet_clip

    text = {"width": 32, "layers": 2, "heads": 2, "context_length": 16, "vocab_size": 100}
    ck = write(resnet_clip(64, text), tmp_path / "rn.safetensors")
    vit = {
        "embed_dim": 64,
        "text_cfg": text,
        "vision_cfg": {"width": 32, "layers": 2, "heads": 2, "patch_size": 16, "image_size": 64},
    }
    r = check("fixtures.models:build_clip", ck, config=vit)
    assert [s for s in r.suggestions if s.kind == "config"] == []
    (f,) = [f for f in r.findings if f.kind == "foreign_branch"]
    assert f.keys == ("visual",) and "visual.layer1.*" in f.message
    assert not [f for f in r.findings if f.kind == "cause"]
    assert r.fixed_config is None


def test_a_patch_size_no_kernel_shows_is_undetermined(tmp_path):
    """LeViT's conv stem has no patch-sized kernel: patch 3 at image 32 and patch 4 at image
    40 give the same 10 x 10 grid, so neither value is verified (patch 3 once was)."""

    def levit(image):
        return transformers.LevitConfig(
            image_size=image,
            patch_size=4,
            hidden_sizes=[32, 48, 64],
            num_attention_heads=[2, 2, 2],
            depths=[1, 1, 1],
            key_dim=[8, 8, 8],
            num_labels=3,
            architectures=["LevitForImageClassification"],
        )

    ck = write(
        on_meta(transformers.LevitForImageClassification, levit(40)), tmp_path / "ck.safetensors"
    )
    levit(32).save_pretrained(tmp_path / "t")
    r = check(str(tmp_path / "t"), ck)
    statuses = {s.field: s.status for s in r.suggestions if s.kind == "config"}
    assert statuses and "verified" not in statuses.values(), statuses
