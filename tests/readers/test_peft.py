"""PEFT adapters: read with their config, checked against the base model they are meant for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from torch import nn

import ckptdiff
from ckptdiff.adapter import check_adapter, level_change
from ckptdiff.cli import main
from ckptdiff.readers.peft import parse_adapter_key
from ckptdiff.targets import build_target
from fixtures import layouts as L


def _kinds(report: ckptdiff.Report) -> dict[str, str]:
    return {f.kind: f.severity for f in report.findings}


def test_read_names_the_layout_and_keeps_saved_keys(lora_dir: Path) -> None:
    m = ckptdiff.read(str(lora_dir))
    assert m.format == "safetensors"
    assert m.metadata["layout"] == "peft-lora"
    assert m.metadata["peft"]["r"] == 4
    assert sorted(m.metadata["peft"]["target_modules"]) == ["q_proj", "v_proj"]
    layers = "base_model.model.model.layers"
    assert m.tensors[f"{layers}.0.self_attn.q_proj.lora_A.weight"].shape == (4, 16)
    # v_proj is [8, 16] (one kv head of 8): lora_B has its 8 out-features
    assert m.tensors[f"{layers}.1.self_attn.v_proj.lora_B.weight"].shape == (8, 4)
    assert m.tensors["base_model.model.lm_head.weight"].shape == (64, 16)  # modules_to_save copy
    (layout,) = [f for f in m.findings if f.kind == "layout"]
    assert "PEFT LORA adapter for LlamaForCausalLM (r=4, alpha=8)" in layout.message
    assert "8 adapter tensors on 4 modules" in layout.message
    assert "modules_to_save" in layout.message


def test_adapter_file_alone_is_recognised(lora_dir: Path) -> None:
    m = ckptdiff.read(str(lora_dir / "adapter_model.safetensors"))
    assert m.metadata["layout"] == "peft-lora"


def test_bin_adapter(tmp_path: Path) -> None:
    folder = L.write_peft(tmp_path / "a", L.tiny_llama(), safetensors=False)
    m = ckptdiff.read(str(folder))
    assert m.format == "torch-zip" and m.metadata["layout"] == "peft-lora"
    assert ckptdiff.check(L.tiny_llama(), str(folder)).ok


def test_check_against_its_base_is_clean(lora_dir: Path) -> None:
    report = ckptdiff.check(L.tiny_llama(), str(lora_dir))
    assert report.ok and report.exit_code == 0
    assert len(report.matched) == 9  # 8 LoRA tensors + the lm_head copy
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in report.matched
    assert "lm_head.weight" in report.matched
    assert _kinds(report) == {"layout": "info"}


def test_base_of_another_size_names_in_and_out_features(lora_dir: Path) -> None:
    report = ckptdiff.check(L.tiny_llama(hidden_size=32, intermediate_size=64), str(lora_dir))
    assert report.exit_code == 1
    kinds = _kinds(report)
    assert kinds["lora_in_features"] == "error"
    assert kinds["lora_out_features"] == "error"
    assert kinds["modules_to_save_shape"] == "error"
    mism = {m.key: m for m in report.mismatched}
    a = mism["model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert (a.checkpoint_shape, a.target_shape) == ((4, 16), (4, 32))
    b = mism["model.layers.0.self_attn.v_proj.lora_B.weight"]
    assert (b.checkpoint_shape, b.target_shape) == ((8, 4), (16, 4))


def test_rank_differs_from_config(lora_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a"
    shutil.copytree(lora_dir, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["r"] = 8
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    report = ckptdiff.check(L.tiny_llama(), str(folder))
    (rank,) = [f for f in report.findings if f.kind == "lora_rank"]
    assert rank.severity == "error"
    assert rank.data == {"checkpoint_rank": 4, "config_rank": 8}
    assert "adapter_config.json r=8" in rank.message
    assert len(report.mismatched) == 8 and report.exit_code == 1


def test_moved_language_model_level(old_layout_lora: Path) -> None:
    report = ckptdiff.check(L.tiny_vlm(), str(old_layout_lora))
    assert report.exit_code == 1
    assert not report.matched
    assert "model.layers.0.q_proj.lora_A.weight" in {t.key for t in report.unexpected}
    assert "model.language_model.layers.0.q_proj.lora_A.weight" in {t.key for t in report.missing}
    (level,) = [f for f in report.findings if f.kind == "adapter_level"]
    assert level.data["strip"] == "model." and level.data["add"] == "model.language_model."
    assert "extra 'language_model.' level" in level.message
    assert level.data["ok_after"] is True
    assert _kinds(report)["adapter_matches_nothing"] == "error"
    (suggestion,) = report.suggestions
    assert suggestion.kind == "key_map" and suggestion.verified
    # the rules it gives make the adapter fit
    fixed = ckptdiff.check(L.tiny_vlm(), str(old_layout_lora), key_map=suggestion.suggested)
    assert fixed.ok and len(fixed.matched) == 8


def test_reverse_level_change_wording() -> None:
    assert "lacks the 'language_model.' level" in level_change("model.language_model.", "model.")


def test_adapter_matching_nothing_is_a_loud_error(lora_dir: Path) -> None:
    base = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    report = ckptdiff.check(base, str(lora_dir))
    assert report.exit_code == 1
    kinds = _kinds(report)
    assert kinds["adapter_matches_nothing"] == "error"
    assert kinds["target_modules_absent"] == "error"
    nothing = next(f for f in report.findings if f.kind == "adapter_matches_nothing")
    assert "none of the adapter's 8 LoRA tensors" in nothing.message
    # coverage counts the adapter's own tensors: nothing lands, and it does not read 0/0 = 100%
    whole = report.coverage[0]
    assert whole.module == "" and whole.share == 0.0
    assert (whole.supplied_tensors, whole.expected_tensors) == (0, 9)  # 8 LoRA + the lm_head copy


def test_coverage_counts_adapter_tensors_the_base_has_no_place_for(lora_dir: Path) -> None:
    base = L.tiny_llama(num_hidden_layers=1)  # layer 1's four LoRA tensors find no module
    report = ckptdiff.check(base, str(lora_dir))
    whole = report.coverage[0]
    assert len(report.unexpected) == 4
    assert (whole.supplied_tensors, whole.expected_tensors) == (5, 9)


def test_check_against_a_base_drops_the_advice_to_do_so(lora_dir: Path) -> None:
    advice = "ckptdiff check ADAPTER --model BASE"
    (read_layout,) = [f for f in ckptdiff.read(str(lora_dir)).findings if f.kind == "layout"]
    assert advice in read_layout.message  # inspect still says it
    (layout,) = [
        f for f in ckptdiff.check(L.tiny_llama(), str(lora_dir)).findings if f.kind == "layout"
    ]
    assert advice not in layout.message
    assert layout.message.startswith("PEFT LORA adapter for LlamaForCausalLM (r=4, alpha=8)")


def test_cli_check_exit_codes(lora_dir: Path, old_layout_lora: Path, runner) -> None:
    ok = runner.invoke(main, ["check", str(lora_dir), "--model", "fixtures.layouts:tiny_llama"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(
        main, ["check", str(old_layout_lora), "--model", "fixtures.layouts:tiny_vlm"]
    )
    assert bad.exit_code == 1
    assert "language_model." in bad.output
    assert "none of the adapter's 8 LoRA tensors" in bad.output


def test_cli_inspect_names_the_layout(lora_dir: Path, runner) -> None:
    result = runner.invoke(main, ["inspect", str(lora_dir)])
    assert result.exit_code == 0
    assert "(safetensors, layout peft-lora)" in result.output.splitlines()[0]


def test_peft_model_instance_as_base(lora_dir: Path) -> None:
    from peft import PeftModel

    wrapped = PeftModel.from_pretrained(L.tiny_llama(), str(lora_dir))
    assert ckptdiff.check(wrapped, str(lora_dir)).ok


def test_check_adapter_on_manifests(lora_dir: Path) -> None:
    report = check_adapter(build_target(L.tiny_llama()), ckptdiff.read(str(lora_dir)))
    assert report.ok


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("m.q.lora_A.weight", ("m.q", "lora_A", None, "weight")),
        ("m.q.lora_B.default.weight", ("m.q", "lora_B", "default", "weight")),
        ("m.q.lora_A.lora.weight", ("m.q", "lora_A", "lora", "weight")),
        ("emb.lora_embedding_A", ("emb", "lora_embedding_A", None, None)),
        ("m.q.lora_magnitude_vector", ("m.q", "lora_magnitude_vector", None, None)),
        ("lm_head.weight", None),
    ],
)
def test_parse_adapter_key(key: str, parsed: tuple | None) -> None:
    got = parse_adapter_key(key)
    assert (None if got is None else (got.module, got.param, got.adapter_name, got.leaf)) == parsed


def test_adapter_name_segment_lora(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    keys = {
        f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{ab}.lora.weight": torch.zeros(
            (4, 16) if ab == "A" else (16, 4)
        )
        for i in range(2)
        for ab in "AB"
    }
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})
    )
    save_file(keys, str(tmp_path / "adapter_model.safetensors"))
    report = ckptdiff.check(L.tiny_llama(), str(tmp_path))
    named = next(f for f in report.findings if f.kind == "adapter_name_in_keys")
    assert "collides with PEFT's 'lora_' parameter prefix" in named.message
