"""Regressions: explanations and suggestions that were wrong, each on real tiny models.

A wrong suggestion is worse than none: every test pins the exact suggestions, and checks that
what is marked verified really loads.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from ckptdiff import check
from ckptdiff.diagnosis.diagnose import diff_manifests
from ckptdiff.diagnosis.emit import fixed_config_of
from ckptdiff.keymap import KeyMap
from ckptdiff.readers import read
from ckptdiff.render.report import render_report_table
from ckptdiff.targets import build_target
from fixtures.tiny import SMALL_CLIP

from .conftest import manifest

transformers = pytest.importorskip("transformers")

LLAMA = "fixtures.models:build_llama"
CLIP = "fixtures.models:build_clip"


def suggestions(report):
    return {
        s.field: (s.current, s.suggested, s.verified or s.status)
        for s in report.suggestions
        if s.kind in ("config", "call")
    }


def kinds(report, kind):
    return [f for f in report.findings if f.kind == kind]


def save(model_or_sd, path):
    sd = model_or_sd if isinstance(model_or_sd, dict) else model_or_sd.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


def save_meta(build, path):
    """The state dict of ``build()`` made on meta, written as zeros (no init, no memory)."""
    with torch.device("meta"):
        model = build()
    return save(
        {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}, path
    )


def bert_config(**kw):
    args = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.BertConfig(**{**args, **kw})


def llama_config(**kw):
    args = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    return transformers.LlamaConfig(**{**args, **kw})


def folder(config, path):
    config.save_pretrained(str(path))
    return str(path)


# --- 1. renames on equal shapes across architectures ------------------------------------------


def test_bert_weights_against_a_llama_config_are_another_architecture(tmp_path):
    """Was: 8 'rename encoder.layer.#.output.LayerNorm -> layers.#.input_layernorm (same
    shapes)' warnings, as a key map marked verified."""
    ck = save(transformers.BertModel(bert_config()), tmp_path / "bert.safetensors")
    r = check(folder(llama_config(), tmp_path / "llama"), ck)
    (foreign,) = kinds(r, "other_architecture")
    assert foreign.message.startswith(
        "The checkpoint looks like another architecture: its keys are BERT-like "
        "(encoder.layer.*, LayerNorm), the target's Llama-like (layers.*.self_attn.q_proj); "
        "they share almost no key structure (0 of the target's 20 keys by name)"
    )
    assert r.suggestions == ()
    assert not kinds(r, "key_rename") and not kinds(r, "no_fix") and not kinds(r, "cause")
    assert r.aligned is None
    # it leads the explanation: the first finding after check's own coverage warnings
    explained = [f for f in r.findings if f.kind not in ("module_not_loaded",)]
    assert explained[0].kind == "other_architecture"


def test_a_part_of_the_model_is_not_another_architecture():
    tg = {f"block{j}.proj{j}.weight": (8, 8) for j in range(60)}
    part = {f"block{j}.proj{j}.weight": (8, 8) for j in range(4)}
    part["extra.weight"] = (4, 8)  # 4 of 60 target keys, a few of its many module names
    r = diff_manifests(manifest("c", part), manifest("t", tg))
    assert not kinds(r, "other_architecture")


def test_a_rename_on_shapes_alone_needs_the_rest_to_match_and_is_never_verified():
    body = {f"blocks.{i}.fc.weight": (8, 8) for i in range(4)}
    odd = {f"a.{i}.x.y.weight": (3, 8) for i in range(2)}
    ck = manifest("c", {**body, **odd})
    tg = manifest("t", {**body, **{f"b.{i}.z.weight": (3, 8) for i in range(2)}})
    r = diff_manifests(ck, tg)
    (s,) = [s for s in r.suggestions if s.kind == "key_map"]
    assert s.verified is False  # equal shapes and unrelated names prove nothing
    (f,) = kinds(r, "key_rename")
    assert f.data["basis"] == "shapes" and "check it before renaming" in f.message
    # the same rename with nothing else matching is a coincidence: not proposed at all
    ck2 = manifest("c", {**odd, "x.w": (5,)})
    tg2 = manifest("t", {**{f"b.{i}.z.weight": (3, 8) for i in range(2)}, "y.w": (7,)})
    assert not [s for s in diff_manifests(ck2, tg2).suggestions if s.kind == "key_map"]


def test_a_prefix_rule_never_moves_keys_that_load():
    body = {f"blocks.{i}.fc.weight": (8, 8) for i in range(4)}
    ck = manifest("c", {**body, "foo.0.weight": (3, 8), "foo.1.weight": (3, 8)})
    tg = manifest("t", {**body, "bar.0.weight": (3, 8), "bar.1.weight": (3, 8)})
    r = diff_manifests(ck, tg)
    (s,) = [s for s in r.suggestions if s.kind == "key_map"]
    assert s.suggested == [{"op": "rename", "pattern": r"^foo\.", "replacement": "bar."}]
    assert s.field == "--rename '^foo\\.=>bar.'" and s.status == "verified"
    assert diff_manifests(ck, tg, key_map=KeyMap.from_option_string(s.field)).ok


def test_a_rename_of_similar_names_is_still_proposed_and_verified():
    ck = manifest("c", {f"enc.layers.{i}.layer_norm1.weight": (4,) for i in range(3)})
    tg = manifest("t", {f"enc.layers.{i}.ln_1.weight": (4,) for i in range(3)})
    (s,) = [s for s in diff_manifests(ck, tg).suggestions if s.kind == "key_map"]
    assert s.verified


# --- 2. a factory's None default (num_kv_heads) -----------------------------------------------


def test_gqa_checkpoint_against_a_factory_that_defaults_num_kv_heads_to_none(tmp_path):
    """Was: no suggestion, and 'No verified fix from hidden_size = 32'."""
    from fixtures.models import build_llama

    args = dict(vocab_size=256, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128)
    ck = save(
        build_llama(**args, num_kv_heads=2, tie_word_embeddings=False), tmp_path / "m.safetensors"
    )
    r = check(LLAMA, ck, args={**args, "tie_word_embeddings": False})
    # heads 4 / kv 2 and heads 2 / kv 1 give the same shapes (head dim = hidden / heads)
    assert suggestions(r) == {"num_kv_heads": (None, 2, "undetermined")}
    assert not kinds(r, "no_fix")
    fixed = fixed_config_of(r)
    assert fixed is not None and fixed["num_kv_heads"] == 2
    assert check(LLAMA, ck, args=fixed).ok


def test_key_value_heads_or_query_heads_when_the_head_dim_is_free(tmp_path):
    """Was: num_key_value_heads = 4 verified for a checkpoint with 2 query heads of 16 (the
    target: 4 of 8, 2 key/value heads): 4 key/value heads of 8 fit the same shapes, so the
    head count stays the config's own, and the linear-attention heads beside it must not hide
    the other answer."""
    cls = getattr(transformers, "OlmoHybridConfig", None)
    if cls is None:
        pytest.skip("this transformers has no OlmoHybrid")
    args = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_key_value_heads=2,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=16,
        pad_token_id=0,
        eos_token_id=1,
        architectures=["OlmoHybridForCausalLM"],
    )
    ck = save_meta(
        lambda: transformers.OlmoHybridForCausalLM(cls(num_attention_heads=2, **args)),
        tmp_path / "m.safetensors",
    )
    r = check(folder(cls(num_attention_heads=4, **args), tmp_path / "cfg"), ck)
    assert suggestions(r) == {"num_key_value_heads": (2, 4, "undetermined")}
    (s,) = [s for s in r.suggestions if s.kind == "config"]
    assert "num_key_value_heads = 2, num_attention_heads = 2 fits as well" in s.message


def test_key_value_biases_of_another_size_are_not_a_hidden_width(tmp_path):
    """Was: 'hidden width: 8 in the checkpoint vs 16 in the target' beside the grouped-query
    cause, for a Qwen2 checkpoint with 1 key/value head where the config says 2: the k/v
    biases differ, the query rows and every norm agree."""
    args = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        architectures=["Qwen2ForCausalLM"],
    )
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(num_key_value_heads=1, **args))
    ck = save(model, tmp_path / "m.safetensors")
    target = folder(transformers.Qwen2Config(num_key_value_heads=2, **args), tmp_path / "cfg")
    r = check(target, ck)
    (cause,) = kinds(r, "cause")
    assert cause.data["cause"] == "kv_heads"
    assert "= 1 key/value head of 8 (head_dim from 4 heads)" in cause.message
    assert suggestions(r) == {"num_key_value_heads": (2, 1, "undetermined")}


def test_transformers_config_keeps_num_key_value_heads(tmp_path):
    ck = save(
        transformers.LlamaForCausalLM(llama_config(hidden_size=64, num_key_value_heads=2)),
        tmp_path / "gqa.safetensors",
    )
    target = folder(
        llama_config(hidden_size=64, architectures=["LlamaForCausalLM"]), tmp_path / "mha"
    )
    r = check(target, ck)
    assert suggestions(r) == {"num_key_value_heads": (4, 2, True)}


# --- 3. the position grid alone: the image size -----------------------------------------------


def test_open_clip_grid_with_the_same_patch_solves_the_image_size(tmp_path):
    """Was: 'No verified fix from vision_cfg.patch_size = 9' and no image size."""
    from fixtures.models import build_clip

    big = {**SMALL_CLIP, "vision_cfg": {**SMALL_CLIP["vision_cfg"], "image_size": 48}}
    ck = save(build_clip(**big), tmp_path / "clip48.safetensors")
    r = check(CLIP, ck, config=SMALL_CLIP)
    assert suggestions(r) == {"vision_cfg.image_size": (32, 48, True)}
    assert not kinds(r, "no_fix")
    assert check(CLIP, ck, config=SMALL_CLIP, args={"vision_cfg.image_size": 48}).ok


def test_hf_clip_vision_224_config_for_a_336_checkpoint(tmp_path):
    cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        architectures=["CLIPVisionModel"],
    )
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(image_size=336, **cfg))
    ck = save(model, tmp_path / "v336.safetensors")
    target = folder(transformers.CLIPVisionConfig(image_size=224, **cfg), tmp_path / "v224")
    r = check(target, ck)
    assert suggestions(r) == {"image_size": (224, 336, True)}
    assert not kinds(r, "no_fix") and not kinds(r, "undetermined")
    assert check(target, ck, args={"image_size": 336}).ok


# --- 4. vocabulary rows only on embeddings and LM heads ---------------------------------------


def test_a_wider_bert_is_not_added_tokens(tmp_path):
    """Was: 'vocabulary rows: encoder.layer.0.attention.output.dense.weight 48 vs 32'."""
    ck = save(transformers.BertModel(bert_config(hidden_size=48)), tmp_path / "w48.safetensors")
    r = check(folder(bert_config(), tmp_path / "bert"), ck)
    causes = {f.data["cause"]: f for f in kinds(r, "cause")}
    assert set(causes) == {"width"}
    assert suggestions(r) == {"hidden_size": (32, 48, True)}


def test_a_wider_roberta_classifier_is_not_another_class_count(tmp_path):
    """Was: 'class count of the head: 48 classes in the checkpoint vs 32' for the bias of
    RoBERTa's classifier.dense, the hidden dense before the output projection."""
    args = dict(
        vocab_size=100,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        architectures=["RobertaForSequenceClassification"],
    )
    model = transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(hidden_size=48, **args)
    )
    ck = save(model, tmp_path / "w48.safetensors")
    r = check(folder(transformers.RobertaConfig(hidden_size=32, **args), tmp_path / "cfg"), ck)
    assert {f.data["cause"] for f in kinds(r, "cause")} == {"width"}
    assert suggestions(r)["hidden_size"] == (32, 48, True)


def test_added_tokens_are_still_vocabulary_rows(tmp_path):
    model = transformers.BertModel(bert_config())
    sd = dict(model.state_dict())
    sd["embeddings.word_embeddings.weight"] = torch.zeros(108, 32)
    r = check(folder(bert_config(), tmp_path / "bert"), save(sd, tmp_path / "v.safetensors"))
    (vocab,) = [f for f in kinds(r, "cause") if f.data["cause"] == "vocab"]
    assert vocab.data["keys"] == ["embeddings.word_embeddings.weight"]
    assert suggestions(r)["vocab_size"] == (100, 108, True)
    assert not kinds(r, "undetermined")  # the heads do not matter to a vocabulary


# --- 5. Conv1D vs Linear: which side is which --------------------------------------------------


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    sd = transformers.GPT2LMHeadModel(cfg).state_dict()
    return cfg, {k: v for k, v in sd.items() if k != "lm_head.weight"}


def test_linear_checkpoint_into_gpt2_conv1d(tmp_path):
    """Was: 'stored transposed ([in, out], as GPT-2's Conv1D)', of a checkpoint stored
    [out, in]."""
    cfg, sd = _gpt2()
    linear = {
        k: v.t() if v.dim() == 2 and re.search(r"c_(attn|proj|fc)\.weight$", k) else v
        for k, v in sd.items()
    }
    ck = save(linear, tmp_path / "linear.safetensors")
    r = check(folder(cfg, tmp_path / "gpt2"), ck)
    (t,) = kinds(r, "transposed")
    assert t.data["checkpoint_layout"] == "linear"
    assert t.message.startswith(
        "6 weights: the checkpoint stores them as [out, in] (nn.Linear); the target (GPT-2's "
        "Conv1D) expects [in, out]: transpose them (.t())"
    )
    assert r.aligned is not None and r.aligned.ok


def test_gpt2_conv1d_checkpoint_into_linear_model(tmp_path):
    _, sd = _gpt2()
    ck = read(save(sd, tmp_path / "gpt2.safetensors"))
    target = build_target("tests.diagnosis.test_scenarios:build_linear_gpt", args={"positions": 64})
    r = diff_manifests(ck, target)
    (t,) = kinds(r, "transposed")
    assert t.data["checkpoint_layout"] == "conv1d"
    assert t.message.startswith(
        "6 weights: the checkpoint stores them as [in, out] (GPT-2's Conv1D); the target "
        "expects [out, in] (nn.Linear): transpose them (.t())"
    )


# --- 6. heads: a new one, a tied one, a causal-LM one -----------------------------------------


def test_a_new_classifier_head_is_the_start_of_a_fine_tune(tmp_path):
    """Was: 'No verified config fix ... the checkpoint is not this model at another size'."""
    ck = save(transformers.BertModel(bert_config()), tmp_path / "bert.safetensors")
    target = folder(bert_config(), tmp_path / "cfg")
    r = check(target, ck, auto_class="BertForSequenceClassification")
    (head,) = kinds(r, "new_head")
    assert head.message == (
        "A new head the checkpoint does not have (classifier.*): it starts from its initial "
        "values, as in any fine-tune from this checkpoint."
    )
    assert head.severity == "info"
    assert set(head.keys) == {"classifier.weight", "classifier.bias"}
    assert not kinds(r, "no_fix") and not kinds(r, "undetermined")
    assert r.suggestions == ()


def test_untied_config_for_a_checkpoint_saved_tied(tmp_path):
    model = transformers.LlamaForCausalLM(llama_config(tie_word_embeddings=True))
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ck = save(sd, tmp_path / "tied.safetensors")
    target = folder(llama_config(architectures=["LlamaForCausalLM"]), tmp_path / "untied")
    r = check(target, ck)
    assert suggestions(r) == {"tie_word_embeddings": (False, True, True)}
    assert not kinds(r, "no_fix")
    fixed = fixed_config_of(r)
    assert fixed is not None and fixed["tie_word_embeddings"] is True
    assert check(target, ck, args={"tie_word_embeddings": True}).ok


def test_causal_lm_checkpoint_against_a_base_model_config(tmp_path):
    """A config without architectures is built as the class the checkpoint's keys fit."""
    ck = save(transformers.LlamaForCausalLM(llama_config()), tmp_path / "lm.safetensors")
    target = folder(llama_config(), tmp_path / "base")  # no architectures
    r = check(target, ck)
    assert r.ok
    (f,) = kinds(r, "target_class")
    assert f.data["class"] == "LlamaForCausalLM"
    # --auto-class still wins: the headless model has no place for lm_head
    r = check(target, ck, auto_class="LlamaModel")
    (f,) = kinds(r, "causal_lm_head")
    assert "build LlamaForCausalLM" in f.message


# --- 7. what the shapes cannot tell, kept short -----------------------------------------------


def test_undetermined_lists_heads_not_activations_or_labels(tmp_path):
    ck = save(transformers.BertModel(bert_config(hidden_size=48)), tmp_path / "w48.safetensors")
    r = check(folder(bert_config(), tmp_path / "bert"), ck)
    (und,) = kinds(r, "undetermined")
    assert und.data["fields"] == ["num_attention_heads"]
    assert und.message.endswith("was trained with): num_attention_heads.")
    assert "hidden_act" in und.data["other"] and "layer_norm_eps" in und.data["other"]
    assert not [f for f in und.data["other"] if "label" in f]


# --- 8. evidence counts keys --------------------------------------------------------------------


def test_evidence_counts_every_renamed_key(tmp_path):
    model = transformers.BertModel(bert_config())
    old = {"weight": "gamma", "bias": "beta"}
    sd = {
        re.sub(r"LayerNorm\.(weight|bias)$", lambda m: "LayerNorm." + old[m[1]], k): v
        for k, v in model.state_dict().items()
    }
    gamma = tmp_path / "gamma.bin"
    torch.save(sd, gamma)
    base = save(model, tmp_path / "bert.safetensors")
    r = diff_manifests(read(str(gamma)), read(base))
    (s,) = [s for s in r.suggestions if s.kind == "key_map"]
    assert len(s.evidence) == 6 and s.evidence[-1] == "... 5 more"  # 10 renamed keys
    assert "-> embeddings.LayerNorm.bias (+9 more)" in render_report_table(r)


def test_evidence_counts_every_transposed_weight(tmp_path):
    _, sd = _gpt2()
    ck = read(save(sd, tmp_path / "gpt2.safetensors"))
    target = build_target("tests.diagnosis.test_scenarios:build_linear_gpt", args={"positions": 64})
    r = diff_manifests(ck, target)
    (s,) = [s for s in r.suggestions if s.kind == "key_map"]
    assert s.evidence[-1] == "... 3 more"  # 6 mismatched + 2 square weights
    assert ": .t() (+7 more)" in render_report_table(r)


def test_config_evidence_counts_keys(tmp_path):
    ck = save(transformers.BertModel(bert_config(hidden_size=48)), tmp_path / "w48.safetensors")
    r = check(folder(bert_config(), tmp_path / "bert"), ck)
    (s,) = [s for s in r.suggestions if s.field == "hidden_size"]
    assert s.data["explains"] == 37 and s.evidence[-1] == "... 32 more"
    assert "(+36 more)" in render_report_table(r)


# --- 7. an ignore list that hides layers ------------------------------------------------------


class _Ignoring(torch.nn.Module):
    """Mimi's way: the class ignores every unexpected key under ``encoder.``."""

    _keys_to_ignore_on_load_unexpected = [r"^encoder\."]

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Module()
        self.encoder.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(layers))


def build_ignoring(layers: int = 2) -> torch.nn.Module:
    return _Ignoring(layers)


def test_an_ignore_list_does_not_hide_a_deeper_checkpoint(tmp_path):
    """Was: 'compatible', the extra layer listed as ignored, harmless (MimiModel ignores
    ^encoder\\. and ^decoder\\.: from_pretrained drops a third layer without a word)."""
    ck = save(build_ignoring(3), tmp_path / "deep.safetensors")
    spec = "tests.diagnosis.test_wrong_answers:build_ignoring"
    r = check(spec, ck)
    assert not r.ok
    assert {t.key for t in r.unexpected} == {"encoder.layers.2.weight", "encoder.layers.2.bias"}
    (hidden,) = kinds(r, "ignore_rule_hides_layers")
    assert "_keys_to_ignore_on_load_unexpected: ^encoder\\." in hidden.message
    assert suggestions(r) == {"layers": (2, 3, True)}
    # keys the list was written for stay ignored
    sd = {**build_ignoring(2).state_dict(), "encoder.extra.weight": torch.zeros(2)}
    r = check(spec, save(sd, tmp_path / "extra.safetensors"))
    assert r.ok and [t.key for t in r.ignored] == ["encoder.extra.weight"]


def test_an_ignore_list_of_missing_keys_does_not_hide_a_shallower_checkpoint():
    body = {f"enc.layers.{i}.weight": (4, 4) for i in range(2)}
    ck = manifest("c", body)
    tg = manifest(
        "t", {**body, "enc.layers.2.weight": (4, 4)}, metadata={"ignore_missing": [r"^enc\."]}
    )
    r = diff_manifests(ck, tg)
    assert [t.key for t in r.missing] == ["enc.layers.2.weight"] and not r.ignored
    (hidden,) = kinds(r, "ignore_rule_hides_layers")
    assert hidden.data["side"] == "target"
    # the same list over a key of a layer the checkpoint has: ignored, as the loader does
    tg = manifest(
        "t", {**body, "enc.layers.1.extra": (2,)}, metadata={"ignore_missing": [r"^enc\."]}
    )
    r = diff_manifests(ck, tg)
    assert r.ok and [t.key for t in r.ignored] == ["enc.layers.1.extra"]


# --- 8. per-layer lists the config class derives ------------------------------------------------


def test_a_deeper_moe_checkpoint_gets_the_layer_types_its_config_class_derives(tmp_path):
    """Was: num_hidden_layers = 3 'partial': the derived mlp_layer_types [dense, sparse] was
    cycled to [dense, sparse, dense] where the class derives [dense, sparse, sparse]."""
    cls = getattr(transformers, "Glm4MoeLiteConfig", None)
    if cls is None:
        pytest.skip("this transformers has no Glm4MoeLite")
    args = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        pad_token_id=0,
        architectures=["Glm4MoeLiteForCausalLM"],
    )
    ck = save_meta(
        lambda: transformers.Glm4MoeLiteForCausalLM(cls(num_hidden_layers=3, **args)),
        tmp_path / "m.safetensors",
    )
    target = folder(cls(num_hidden_layers=2, **args), tmp_path / "cfg")
    r = check(target, ck)
    assert suggestions(r) == {"num_hidden_layers": (2, 3, True)}
    fixed = fixed_config_of(r)
    assert fixed is not None and fixed["mlp_layer_types"] is None  # the class derives it
    built = cls.from_dict(fixed)
    assert built.mlp_layer_types == ["dense", "sparse", "sparse"]
    assert check(target, ck, args={"num_hidden_layers": 3, "mlp_layer_types": None}).ok


def test_a_vocabulary_field_that_sizes_its_own_weights_does_not_follow_another(tmp_path):
    """Was: decoder_config.vocab_size = 136 added 'as well, if it repeats' the encoder's, which
    broke Dia's decoder embeddings: the encoder's own fix went from verified to partial."""
    cls = getattr(transformers, "DiaConfig", None)
    if cls is None:
        pytest.skip("this transformers has no Dia")
    small = dict(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=128,
    )
    decoder = dict(
        small,
        cross_num_attention_heads=4,
        cross_head_dim=8,
        cross_num_key_value_heads=2,
        cross_hidden_size=32,
        pad_token_id=124,
        eos_token_id=121,
        bos_token_id=122,
    )

    def dia(encoder_vocab: int) -> Any:
        return cls(
            encoder_config={**small, "vocab_size": encoder_vocab},
            decoder_config=decoder,
            architectures=["DiaForConditionalGeneration"],
        )

    ck = save_meta(
        lambda: transformers.DiaForConditionalGeneration(dia(136)), tmp_path / "m.safetensors"
    )
    r = check(folder(dia(128), tmp_path / "cfg"), ck)
    assert suggestions(r) == {"encoder_config.vocab_size": (128, 136, True)}


# --- 9. recurrent layers: the index is in the leaf name ---------------------------------------


class _Tagger(torch.nn.Module):
    def __init__(self, layers: int, rnn: str, bidirectional: bool) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[rnn]
        self.rnn = cls(8, 8, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.out = torch.nn.Linear(16 if bidirectional else 8, 5)


def build_tagger(layers: int = 2, rnn: str = "lstm", bidirectional: bool = False) -> _Tagger:
    return _Tagger(layers, rnn, bidirectional)


@pytest.mark.parametrize(("rnn", "bidirectional"), [("lstm", False), ("gru", True)])
def test_a_deeper_lstm_or_gru_is_depth(tmp_path, rnn, bidirectional):
    """Was: 'No verified config fix ... no numeric config field of the target changes these
    shapes' for weight_ih_l2 and weight_ih_l3 of a 4-layer nn.LSTM against 2 layers."""
    ck = save(build_tagger(4, rnn, bidirectional), tmp_path / "deep.safetensors")
    args = {"rnn": rnn, "bidirectional": bidirectional}
    r = check("tests.diagnosis.test_wrong_answers:build_tagger", ck, args=args)
    (depth,) = [f for f in kinds(r, "cause") if f.data["cause"] == "depth"]
    assert depth.data["container"] == "rnn.*_l"
    assert (depth.data["checkpoint"], depth.data["target"]) == (4, 2)
    assert suggestions(r) == {"layers": (2, 4, True)}
    assert not kinds(r, "no_fix")
    (s,) = [s for s in r.suggestions if s.kind == "config"]
    assert s.evidence[-1] == "rnn.*_l: 4 layers vs 2"


def test_a_gru_checkpoint_against_an_lstm_is_the_cell_type_not_a_width(tmp_path):
    """Was: 'hidden width: 48 in the checkpoint vs 64 in the target': a GRU's 3 gates of 16
    rows against an LSTM's 4."""
    ck = save(build_tagger(2, "gru", False), tmp_path / "gru.safetensors")
    r = check("tests.diagnosis.test_wrong_answers:build_tagger", ck)
    (cause,) = kinds(r, "cause")
    assert cause.data["cause"] == "rnn_cell"
    assert (cause.data["checkpoint"], cause.data["target"]) == ("GRU", "LSTM")
    assert "48 vs 64 rows at hidden size 8" not in cause.message  # hidden 8: 24 vs 32
    assert "24 vs 32 rows at hidden size 8" in cause.message
    assert len(cause.keys) == 8


class _Wide(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = torch.nn.Linear(width, width * 4)
        self.b = torch.nn.Linear(width * 4, width)
        self.n = torch.nn.LayerNorm(width)


def build_wide(width: int = 16) -> _Wide:
    return _Wide(width)


def test_a_uniform_width_scale_is_said_as_one(tmp_path):
    """Was: 'hidden width: 128 in the checkpoint vs 16' alone, for a model 8x wider in every
    dimension (the MLP's 512 vs 64 too)."""
    ck = save(build_wide(128), tmp_path / "wide.safetensors")
    r = check("tests.diagnosis.test_wrong_answers:build_wide", ck)
    (cause,) = kinds(r, "cause")
    assert cause.message.startswith(
        "hidden width: 128 in the checkpoint vs 16 in the target (8x, as is 512 vs 64), "
        "across 6 keys"
    )
    assert suggestions(r) == {"width": (16, 128, True)}
