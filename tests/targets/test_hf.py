"""transformers configs as targets: built by transformers itself, on meta, with its load rules."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import torch
from safetensors.torch import save_file

from ckptdiff import check
from ckptdiff.errors import TargetError
from ckptdiff.targets import build_target, rebuild, target_spec
from ckptdiff.targets.module import manifest_from_module
from fixtures.tiny import TINY_BERT

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    CLIPConfig,
    CLIPModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
)

TINY_LLAMA = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
TINY_CLIP_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=99,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
TINY_CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)


def tiny(name: str):
    """(config, model class) of a tiny real transformers model."""
    if name == "bert":
        return BertConfig(**TINY_BERT, architectures=["BertModel"]), BertModel
    if name == "llama":
        return LlamaConfig(**TINY_LLAMA, architectures=["LlamaForCausalLM"]), LlamaForCausalLM
    if name == "clip":
        config = CLIPConfig(
            text_config=TINY_CLIP_TEXT,
            vision_config=TINY_CLIP_VISION,
            projection_dim=16,
            architectures=["CLIPModel"],
        )
        return config, CLIPModel
    raise ValueError(name)


def layout(m) -> dict:
    return {
        "tensors": {k: (t.shape, t.dtype) for k, t in m.tensors.items()},
        "buffers": m.buffers,
        "non_persistent": m.non_persistent,
        "tied": m.tied,
        "aliases": dict(m.aliases),
    }


def saved(tmp_path, name: str, model) -> str:
    """``save_pretrained`` into tmp_path/name: what users have on disk."""
    folder = tmp_path / name
    model.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("name", ["bert", "llama", "clip"])
def test_tiny_configs_build_on_meta_like_on_cpu(tmp_path, name):
    config, cls = tiny(name)
    config.save_pretrained(tmp_path)
    meta = build_target(f"hf-config:{tmp_path / 'config.json'}")
    cpu = manifest_from_module(cls(config), source="cpu")
    assert layout(meta) == layout(cpu)
    assert meta.metadata["class"].endswith("." + cls.__name__)
    assert meta.config["model_type"] == config.model_type
    assert meta.metadata["target"] == {
        "kind": "hf-config",
        "spec": f"hf-config:{tmp_path / 'config.json'}",
        "args": {},
        "auto_class": None,
    }


def test_folder_and_plain_json_path_are_transformers_targets(tmp_path):
    config, _ = tiny("bert")
    config.save_pretrained(tmp_path)
    assert target_spec(str(tmp_path)).kind == "hf-config"
    assert target_spec(str(tmp_path / "config.json")).kind == "hf-config"
    assert len(build_target(str(tmp_path))) == len(build_target(str(tmp_path / "config.json")))


def test_auto_class_and_nested_overrides(tmp_path):
    config, _ = tiny("clip")
    config.save_pretrained(tmp_path)
    m = build_target(
        str(tmp_path),
        auto_class="AutoModel",
        args=["text_config.vocab_size=123", "projection_dim=24"],
    )
    assert m.tensors["text_model.embeddings.token_embedding.weight"].shape == (123, 32)
    assert m.tensors["text_projection.weight"].shape == (24, 32)
    assert m.config["text_config"]["vocab_size"] == 123
    vision = build_target(str(tmp_path), auto_class="CLIPVisionModel")  # takes vision_config
    assert any(k.endswith("embeddings.patch_embedding.weight") for k in vision.tensors)
    assert not any("text" in k or "token_embedding" in k for k in vision.tensors)


def test_llama_3_8b_sized_config_builds_on_meta(tmp_path):
    LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
        dtype="bfloat16",
    ).save_pretrained(tmp_path)
    m = build_target(str(tmp_path))
    assert m.parameter_count == 8_030_261_248
    assert m.tensors["model.layers.31.self_attn.k_proj.weight"].shape == (1024, 4096)
    assert m.tensors["lm_head.weight"].dtype == "bfloat16"  # built in the config's dtype
    assert m.tied == ()


def test_tied_lm_head_absent_from_checkpoint_is_tied_not_missing(tmp_path):
    config, cls = tiny("llama")
    folder = saved(tmp_path, "llama", cls(config))
    from ckptdiff.readers import read

    assert "lm_head.weight" not in read(folder).tensors  # save_pretrained stores it once
    report = check(folder, folder)
    assert report.ok
    assert report.tied == ("lm_head.weight",)
    assert not report.missing


def test_untied_lm_head_absent_from_checkpoint_is_missing(tmp_path):
    config, cls = tiny("llama")
    folder = saved(tmp_path, "llama", cls(config))
    report = check(folder, folder, args={"tie_word_embeddings": False})
    assert not report.ok
    assert [t.key for t in report.missing] == ["lm_head.weight"]


def test_legacy_persistent_buffers_are_ignored_by_the_models_own_patterns(tmp_path):
    # old GPT-2 checkpoints carry the causal mask `h.N.attn.bias`; GPT2Model ignores it
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=16, architectures=["GPT2Model"]
    )
    model = GPT2Model(config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    save_file(state, tmp_path / "model.safetensors")
    config.save_pretrained(tmp_path)
    target = build_target(str(tmp_path))
    assert "attn.bias" in target.metadata["ignore_unexpected"]
    report = check(target, tmp_path / "model.safetensors")
    assert report.ok
    assert [t.key for t in report.ignored] == ["h.0.attn.bias", "h.1.attn.bias"]


# --- the real all-MiniLM-L6-v2 checkpoint -----------------------------------------------------


def test_minilm_against_its_own_config_is_compatible(minilm_dir):
    report = check(f"hf-config:{minilm_dir / 'config.json'}", minilm_dir)
    assert report.ok
    assert len(report.matched) == 103
    # a persistent buffer when it was saved (transformers 4.8), non-persistent now
    assert [t.key for t in report.ignored] == ["embeddings.position_ids"]
    assert not report.unexpected
    assert report.coverage[0].share == 1.0


def test_minilm_against_a_768_wide_config_is_not(minilm_dir, tmp_path):
    config = json.loads((minilm_dir / "config.json").read_text())
    config["hidden_size"] = 768
    (tmp_path / "config.json").write_text(json.dumps(config))
    report = check(f"hf-config:{tmp_path / 'config.json'}", minilm_dir)
    assert not report.ok
    by_key = {m.key: m for m in report.mismatched}
    assert by_key["embeddings.word_embeddings.weight"].checkpoint_shape == (30522, 384)
    assert by_key["embeddings.word_embeddings.weight"].target_shape == (30522, 768)
    assert by_key["encoder.layer.5.attention.self.query.weight"].target_shape == (768, 768)
    assert len(report.mismatched) == 97  # all but the six 1536-wide intermediate biases


def test_base_model_checkpoint_into_a_head_model_misses_only_the_head(minilm_dir):
    report = check(str(minilm_dir), minilm_dir, auto_class="BertForSequenceClassification")
    assert [t.key for t in report.missing] == ["classifier.bias", "classifier.weight"]
    assert not report.unexpected and not report.mismatched
    assert len(report.matched) == 103
    assert report.key_map == ({"op": "add_prefix", "prefix": "bert."},)
    prefix = [f for f in report.findings if f.kind == "base_model_prefix"]
    assert prefix and prefix[0].severity == "info" and prefix[0].data["prefix"] == "bert."
    # the new head is named once, as the normal start of a fine-tune, not as a failure
    (head,) = [f for f in report.findings if f.kind == "new_head"]
    assert head.data["modules"] == ["classifier"] and head.severity == "info"
    assert not [f for f in report.findings if f.kind == "module_not_loaded"]


def test_head_model_checkpoint_into_the_base_model_drops_the_prefix(tmp_path):
    config = BertConfig(**TINY_BERT, num_labels=3)
    folder = saved(tmp_path, "clf", BertForSequenceClassification(config))
    report = check(folder, folder, auto_class="BertModel")
    assert [t.key for t in report.unexpected] == ["classifier.bias", "classifier.weight"]
    assert not report.missing and not report.mismatched
    assert report.key_map == ({"op": "strip_prefix", "prefix": "bert."},)


def test_prefix_is_added_around_head_keys_the_checkpoint_already_has(tmp_path):
    # a base checkpoint that also carries an unprefixed head: transformers matches key by key
    config = BertConfig(**TINY_BERT, num_labels=2, architectures=["BertForSequenceClassification"])
    head_model = BertForSequenceClassification(config)
    state = {k.removeprefix("bert."): v.clone() for k, v in head_model.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    config.save_pretrained(tmp_path)
    report = check(str(tmp_path), tmp_path / "model.safetensors")
    assert report.ok, str(report)


def test_hf_model_instance_is_checked_as_it_is_and_rebuilds_from_its_config(tmp_path):
    config, cls = tiny("bert")
    model = cls(config)
    folder = saved(tmp_path, "bert", model)
    assert check(model, folder).ok
    spec = target_spec(model)
    assert spec.kind == "hf-class"
    wider = rebuild(spec, {"intermediate_size": 48})
    assert wider.tensors["encoder.layer.0.intermediate.dense.weight"].shape == (48, 32)
    again = rebuild(build_target(model), {"intermediate_size": 40})  # from the manifest alone
    assert again.tensors["encoder.layer.0.intermediate.dense.weight"].shape == (40, 32)
    assert next(model.parameters()).device.type == "cpu"  # the instance was not touched


def test_rebuild_a_config_target_with_overrides(tmp_path):
    config, _ = tiny("llama")
    config.save_pretrained(tmp_path)
    base = build_target(str(tmp_path))
    bigger = rebuild(base, {"vocab_size": 128, "num_hidden_layers": 3})
    assert bigger.tensors["model.embed_tokens.weight"].shape == (128, 32)
    assert "model.layers.2.mlp.up_proj.weight" in bigger.tensors
    assert base.tensors["model.embed_tokens.weight"].shape == (99, 32)


# --- errors ---------------------------------------------------------------------------------


def test_transformers_missing_says_how_to_install(tmp_path, monkeypatch):
    config, _ = tiny("bert")
    config.save_pretrained(tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(TargetError, match=re.escape("pip install 'ckptdiff[hf]'")):
        build_target(f"hf-config:{tmp_path}")


def test_unknown_architecture_points_to_auto_class(tmp_path):
    config, _ = tiny("bert")
    config.architectures = ["BertForSomethingNew"]
    config.save_pretrained(tmp_path)
    with pytest.raises(
        TargetError,
        match=re.escape(
            "has no class 'BertForSomethingNew' (the config's architectures[0]). "
            "Pass --auto-class AutoModel"
        ),
    ):
        build_target(str(tmp_path))
    assert len(build_target(str(tmp_path), auto_class="AutoModel")) > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"hidden_size": 8}, "the config names no model_type"),
        ({"model_type": "no-such-model"}, "knows no model_type 'no-such-model'"),
        (
            {"model_type": "custom", "auto_map": {"AutoModel": "m.M"}},
            "needs custom code (m.py, through auto_map), which ckptdiff never runs.",
        ),
    ],
)
def test_configs_transformers_cannot_build(tmp_path, content, message):
    (tmp_path / "config.json").write_text(json.dumps(content))
    with pytest.raises(TargetError, match=re.escape(message)):
        build_target(f"hf-config:{tmp_path}")


def test_missing_config_file(tmp_path):
    with pytest.raises(TargetError, match="no such config file"):
        build_target(f"hf-config:{tmp_path / 'nope.json'}")


def test_hub_target_offline_is_one_target_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        TargetError,
        match=re.escape(
            "Cannot build 'hf://nobody/nothing' (fetching config.json from nobody/nothing)"
        ),
    ):
        build_target("hf://nobody/nothing")


def test_copied_minilm_folder_is_a_target(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
    assert build_target(str(tmp_path)).metadata["base_model_prefix"] == "bert"


def test_unknown_override_fields_are_target_errors(tmp_path):
    config, _ = tiny("bert")
    config.save_pretrained(tmp_path)
    with pytest.raises(TargetError) as e:
        build_target(str(tmp_path), args=["vocab_szie=30527", "hiden_size=384"])
    assert "unknown config field 'vocab_szie' for BertConfig (did you mean vocab_size?)" in str(
        e.value
    )
    assert "unknown config field 'hiden_size' for BertConfig (did you mean hidden_size?)" in str(
        e.value
    )
    with pytest.raises(TargetError, match="unknown config field 'nonexistent_field'"):
        build_target(str(tmp_path), config={"nonexistent_field": 3})  # --config keys too


def test_unknown_fields_of_sub_configs(tmp_path):
    config, _ = tiny("clip")
    config.save_pretrained(tmp_path)
    with pytest.raises(
        TargetError,
        match=re.escape(
            "unknown config field 'text_config.vocab_szie' for CLIPTextConfig "
            "(did you mean text_config.vocab_size?)"
        ),
    ):
        build_target(str(tmp_path), args=["text_config.vocab_szie=5"])


@pytest.mark.parametrize(
    "arg",
    [
        "num_labels=3",  # a property
        "label2id.extra=7",  # a free-form dict field
        "torch_dtype=float16",  # a legacy alias __init__ still reads
    ],
)
def test_known_spellings_of_config_fields_are_accepted(tmp_path, arg):
    config, _ = tiny("bert")
    config.save_pretrained(tmp_path)
    assert len(build_target(str(tmp_path), args=[arg])) > 0


def test_aliases_and_legacy_keywords_are_fields(tmp_path):
    GPT2Config(
        n_embd=32, n_layer=1, n_head=4, vocab_size=99, n_positions=16, architectures=["GPT2Model"]
    ).save_pretrained(tmp_path / "gpt2")
    m = build_target(str(tmp_path / "gpt2"), args=["hidden_size=64"])  # attribute_map alias
    assert m.tensors["wte.weight"].shape == (99, 64)
    LlamaConfig(**TINY_LLAMA).save_pretrained(tmp_path / "llama")
    assert len(build_target(str(tmp_path / "llama"), args=["rope_theta=500000.0"])) > 0


def test_cli_unknown_arg_field_exits_2(runner, tmp_path):
    from ckptdiff.cli import main

    config, cls = tiny("bert")
    folder = saved(tmp_path, "bert", cls(config))
    result = runner.invoke(main, ["check", folder, "--model", folder, "--arg", "vocab_szie=3"])
    assert result.exit_code == 2
    assert "unknown config field 'vocab_szie' for BertConfig (did you mean vocab_size?)" in (
        result.output
    )
