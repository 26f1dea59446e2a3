"""The class of a config without ``architectures``, chosen from the checkpoint's evidence."""

from __future__ import annotations

import json

import pytest

from ckptdiff import check
from ckptdiff.targets import build_target
from ckptdiff.targets.choose import candidate_classes
from fixtures import layouts as L
from fixtures.tiny_hf import save_tiny

pytest.importorskip("transformers")


def _without_architectures(folder) -> str:
    path = f"{folder}/config.json"
    config = json.loads(open(path).read())
    config.pop("architectures", None)
    with open(path, "w") as f:
        json.dump(config, f)
    return str(folder)


def test_peft_adapter_base_model_class(tmp_path):
    base = L.tiny_llama()
    base.config.save_pretrained(tmp_path / "base")
    config = _without_architectures(tmp_path / "base")
    adapter = L.write_peft(tmp_path / "lora", L.tiny_llama(), modules_to_save=["lm_head"])
    peft_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_cfg["auto_mapping"] is None or peft_cfg["auto_mapping"].get("base_model_class")
    peft_cfg["auto_mapping"] = {
        "base_model_class": "LlamaForCausalLM",
        "parent_library": "transformers.models.llama.modeling_llama",
    }
    (adapter / "adapter_config.json").write_text(json.dumps(peft_cfg))
    report = check(config, str(adapter))
    assert report.ok, str(report)
    (chosen,) = [f for f in report.findings if f.kind == "target_class"]
    assert chosen.data == {"class": "LlamaForCausalLM", "evidence": "peft_base_model_class"}
    assert "base_model_class is LlamaForCausalLM" in chosen.message
    assert not [f for f in report.findings if f.kind == "adapter_level"]


def test_peft_task_type_when_no_base_class(tmp_path):
    L.tiny_llama().config.save_pretrained(tmp_path / "base")
    config = _without_architectures(tmp_path / "base")
    adapter = L.write_peft(tmp_path / "lora", L.tiny_llama(), modules_to_save=["lm_head"])
    peft_cfg = json.loads((adapter / "adapter_config.json").read_text())
    peft_cfg["auto_mapping"], peft_cfg["task_type"] = None, "CAUSAL_LM"
    (adapter / "adapter_config.json").write_text(json.dumps(peft_cfg))
    report = check(config, str(adapter))
    assert report.ok
    (chosen,) = [f for f in report.findings if f.kind == "target_class"]
    assert chosen.data["class"] == "AutoModelForCausalLM"


def test_head_keys_pick_the_head_class(tmp_path):
    folder = _without_architectures(save_tiny("LlamaForCausalLM", tmp_path / "llama"))
    assert build_target(folder).metadata["class"].endswith("LlamaModel")  # no evidence
    report = check(folder, folder)
    assert report.ok
    (chosen,) = [f for f in report.findings if f.kind == "target_class"]
    assert chosen.data == {"class": "LlamaForCausalLM", "evidence": "checkpoint_keys"}
    assert "places the most checkpoint tensors" in chosen.message


def test_a_classifier_checkpoint(tmp_path):
    import transformers

    from fixtures.tiny_hf import tiny_config

    config = tiny_config("BertForMaskedLM")
    config.num_labels = 3
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    folder = _without_architectures(tmp_path / "clf")
    report = check(folder, folder)
    assert report.ok
    (chosen,) = [f for f in report.findings if f.kind == "target_class"]
    assert chosen.data["class"] == "BertForSequenceClassification"


def test_auto_class_still_wins(tmp_path):
    folder = _without_architectures(save_tiny("LlamaForCausalLM", tmp_path / "llama"))
    report = check(folder, folder, auto_class="AutoModel")
    assert not [f for f in report.findings if f.kind == "target_class"]
    assert [t.key for t in report.unexpected] == ["lm_head.weight"]


def test_a_base_checkpoint_keeps_the_base_class(tmp_path):
    import transformers

    from fixtures.tiny_hf import tiny_config

    transformers.LlamaModel(tiny_config("LlamaForCausalLM")).save_pretrained(tmp_path / "base")
    folder = _without_architectures(tmp_path / "base")
    report = check(folder, folder)
    assert report.ok and not [f for f in report.findings if f.kind == "target_class"]


def test_candidates_are_the_auto_mappings_classes():
    names = candidate_classes("llama")
    assert {"LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification"} <= set(names)
