"""A misspelt config.json field is a finding: transformers keeps it silently, unused."""

from __future__ import annotations

import json

import pytest

from ckptdiff._audit import audit
from ckptdiff.targets import build_target
from fixtures.tiny_hf import save_tiny

pytest.importorskip("transformers")


def test_hiden_size_is_a_finding_with_did_you_mean(tmp_path):
    folder = save_tiny("LlamaForCausalLM", tmp_path / "llama")
    config = json.loads((folder_path := tmp_path / "llama" / "config.json").read_text())
    config["hiden_size"] = config.pop("hidden_size")
    folder_path.write_text(json.dumps(config))
    (typo,) = [f for f in build_target(folder).findings if f.kind == "config_unknown_field"]
    assert typo.data["did_you_mean"] == "hidden_size" and typo.keys == ("hiden_size",)
    assert "did you mean 'hidden_size'?" in typo.message
    result = audit(folder)
    assert not result.ok  # the model is built 4096 wide: the weights do not fit, and it says why
    assert "config_unknown_field" in {f.kind for f in result.all_findings}


def test_a_sub_config_typo_names_its_path(tmp_path):
    folder = save_tiny("LlavaForConditionalGeneration", tmp_path / "llava")
    path = tmp_path / "llava" / "config.json"
    config = json.loads(path.read_text())
    config["text_config"]["vocab_sise"] = config["text_config"].pop("vocab_size")
    path.write_text(json.dumps(config))
    (typo,) = [f for f in build_target(folder).findings if f.kind == "config_unknown_field"]
    assert typo.keys == ("text_config.vocab_sise",)
    assert typo.data["did_you_mean"] == "text_config.vocab_size"


def test_saved_configs_have_no_typos(tmp_path):
    for name in (
        "LlamaForCausalLM",
        "MixtralForCausalLM",
        "LlavaForConditionalGeneration",
        "MllamaForConditionalGeneration",
        "T5ForConditionalGeneration",
        "CLIPModel",
    ):
        folder = save_tiny(name, tmp_path / name)
        assert not [f for f in build_target(folder).findings if f.kind == "config_unknown_field"]
