"""The loader view: checkpoints compared as transformers' own conversion step hands them over."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptdiff import check
from ckptdiff.loading import loader_view
from ckptdiff.readers import read
from ckptdiff.targets import build_target
from fixtures.tiny_hf import save_tiny

transformers = pytest.importorskip("transformers")


def _edit(folder, fn) -> None:
    path = f"{folder}/model.safetensors"
    state = load_file(path)
    fn(state)
    save_file(state, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    return save_tiny("MixtralForCausalLM", tmp_path_factory.mktemp("m") / "mixtral")


def test_per_expert_moe_is_compatible_and_says_which_loader(mixtral):
    assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in read(mixtral).tensors
    report = check(mixtral, mixtral)
    assert report.ok
    (finding,) = [f for f in report.findings if f.kind == "loader_conversion"]
    assert finding.severity == "info"
    assert "MixtralForCausalLM (transformers" in finding.message
    assert finding.data["converted_tensors"] == 2 * 4 * 3  # 2 layers, 4 experts, w1 w2 w3
    assert finding.data["converted_parameters"] == 2 * 2  # gate_up_proj and down_proj


def test_raw_is_the_plain_load_state_dict_view(mixtral):
    report = check(mixtral, mixtral, raw=True)
    assert not report.ok
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in {
        t.key for t in report.unexpected
    }
    assert not [f for f in report.findings if f.kind == "loader_conversion"]


def test_shapes_are_computed_by_the_operations(mixtral):
    view = loader_view(read(mixtral), build_target(mixtral))
    fused = view.tensors["model.layers.1.mlp.experts.gate_up_proj"]
    assert fused.shape == (4, 2 * 48, 32)  # MergeModulelist then Concatenate(dim=1)
    sources = view.metadata["loaded_from"]["model.layers.1.mlp.experts.gate_up_proj"]
    assert len(sources) == 8 and all(".block_sparse_moe.experts." in s for s in sources)


def test_a_resized_expert_is_named_by_its_checkpoint_keys(tmp_path):
    folder = save_tiny("MixtralForCausalLM", tmp_path / "m")

    def grow(state):  # every expert of layer 0 saved 50 wide instead of 48
        for key in list(state):
            if key.startswith("model.layers.0.block_sparse_moe.experts.") and "w2" in key:
                state[key] = torch.zeros(32, 50)

    _edit(folder, grow)
    report = check(folder, folder)
    (m,) = report.mismatched
    assert (m.key, m.checkpoint_shape, m.target_shape) == (
        "model.layers.0.mlp.experts.down_proj",
        (4, 32, 50),
        (4, 32, 48),
    )
    (behind,) = [f for f in report.findings if f.kind == "loaded_from"]
    assert "model.layers.0.block_sparse_moe.experts.0.w2.weight" in behind.message
    assert "model.layers.0.mlp.experts.down_proj <- " in behind.message


def test_a_missing_expert_fails_the_conversion_as_transformers_does(tmp_path):
    folder = save_tiny("MixtralForCausalLM", tmp_path / "m")
    _edit(folder, lambda s: s.pop("model.layers.1.block_sparse_moe.experts.3.w1.weight"))
    report = check(folder, folder)
    assert [t.key for t in report.missing] == ["model.layers.1.mlp.experts.gate_up_proj"]
    (failed,) = [f for f in report.findings if f.kind == "loader_conversion_failed"]
    assert failed.severity == "error" and "MergeModulelist, Concatenate" in failed.message


def test_vision_language_original_layout(tmp_path):
    folder = save_tiny("LlavaForConditionalGeneration", tmp_path / "llava")
    keys = set(read(folder).tensors)
    assert "language_model.model.embed_tokens.weight" in keys  # the original layout
    report = check(folder, folder)
    assert report.ok and len(report.matched) == len(keys)


def test_unplaced_keys_keep_their_checkpoint_names(tmp_path):
    folder = save_tiny("LlavaForConditionalGeneration", tmp_path / "llava")
    _edit(folder, lambda s: s.__setitem__("language_model.model.extra.weight", torch.zeros(2)))
    report = check(folder, folder)
    assert [t.key for t in report.unexpected] == ["language_model.model.extra.weight"]
    view = loader_view(read(folder), build_target(folder))
    assert view.metadata["loaded_as"]["language_model.model.extra.weight"] == [
        "model.language_model.extra.weight"
    ]


def test_legacy_gamma_beta_names_load(tmp_path):
    folder = save_tiny("BertForMaskedLM", tmp_path / "bert")

    def legacy(state):
        for key in list(state):
            if "LayerNorm.weight" in key:
                state[key.replace("LayerNorm.weight", "LayerNorm.gamma")] = state.pop(key)
            elif "LayerNorm.bias" in key:
                state[key.replace("LayerNorm.bias", "LayerNorm.beta")] = state.pop(key)

    _edit(folder, legacy)
    assert check(folder, folder).ok
    assert not check(folder, folder, raw=True).ok


def test_an_operation_that_needs_values_is_one_finding(tmp_path, monkeypatch):
    from transformers import conversion_mapping
    from transformers.core_model_loading import ConversionOps, WeightConverter

    class Dequantize(ConversionOps):  # reads a scale's value, as dequantizers do
        def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
            (tensors,) = input_dict.values()
            return {target_patterns[0]: tensors[0] * float(tensors[0].max().item())}

    folder = save_tiny("LlamaForCausalLM", tmp_path / "llama")
    _edit(
        folder,
        lambda s: s.__setitem__(
            "model.layers.0.mlp.down_proj.qweight", s.pop("model.layers.0.mlp.down_proj.weight")
        ),
    )
    conversion_mapping.get_checkpoint_conversion_mapping("llama")
    table = dict(conversion_mapping._checkpoint_conversion_mapping_cache)
    table["llama"] = [WeightConverter("down_proj.qweight", "down_proj.weight", [Dequantize()])]
    monkeypatch.setattr(conversion_mapping, "_checkpoint_conversion_mapping_cache", table)
    report = check(folder, folder)
    (finding,) = [f for f in report.findings if f.kind == "loader_conversion_undetermined"]
    assert "needs the tensors' values" in finding.message and "Dequantize" in finding.message
    assert finding.keys == ("model.layers.0.mlp.down_proj.qweight",)
