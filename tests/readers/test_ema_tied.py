"""Several weight sets (EMA first, as timm), and tied weights stored once, across layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ckptdiff
from ckptdiff.cli import main
from fixtures import layouts as L


def _model() -> L.TinyLM:
    return L.TinyLM(width=16, vocab=32)


def test_ema_is_the_default_and_said(tmp_path: Path) -> None:
    path = L.write_ema(tmp_path, _model())
    m = ckptdiff.read(str(path))
    assert m.selected == "state_dict_ema"
    assert m.candidates == ("state_dict", "state_dict_ema")
    (f,) = [f for f in m.findings if f.kind == "container"]
    assert "EMA weights first, as timm loads them" in f.message
    assert f.data["candidate_sizes"]["state_dict"] == {"tensors": 9, "parameters": 1600}
    assert ckptdiff.check(_model(), str(path)).ok


def test_select_the_raw_weights(tmp_path: Path) -> None:
    path = L.write_ema(tmp_path, _model())
    m = ckptdiff.read(str(path), select="state_dict")
    assert m.selected == "state_dict"
    (f,) = [f for f in m.findings if f.kind == "container"]
    assert "as --select asked" in f.message


def test_model_ema_saved_from_ddp(tmp_path: Path) -> None:
    path = L.write_ema(tmp_path, _model(), ema_key="model_ema", ema_prefix="module.")
    report = ckptdiff.check(_model(), str(path))
    assert ckptdiff.read(str(path)).selected == "model_ema"
    assert any(
        s.kind == "key_map" and s.field == "--strip-prefix module." and s.verified
        for s in report.suggestions
    )


def test_cli_inspect_lists_every_set(tmp_path: Path, runner) -> None:
    path = L.write_ema(tmp_path, _model())
    result = runner.invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0
    assert (
        "State dicts in this file: state_dict (9 tensors, 1.6K parameters), state_dict_ema "
        "[used] (9 tensors, 1.6K parameters) (choose with --select)"
    ) in result.output


# --- tied weights stored once --------------------------------------------------------------


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(32, 16)
        self.head = torch.nn.Linear(16, 32, bias=False)
        self.head.weight = self.embed.weight


def test_safetensors_aliases_count_as_present(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    save_model(Tied(), str(tmp_path / "model.safetensors"))
    m = ckptdiff.read(str(tmp_path))
    assert list(m.tensors) == ["embed.weight"] and m.aliases == {"head.weight": "embed.weight"}
    report = ckptdiff.check(Tied(), str(tmp_path))
    assert report.ok and not report.missing


def test_tied_lm_head_absent_from_save_pretrained(tmp_path: Path) -> None:
    L.tiny_llama().save_pretrained(str(tmp_path))
    assert "lm_head.weight" not in ckptdiff.read(str(tmp_path)).tensors
    report = ckptdiff.check(L.tiny_llama(), str(tmp_path))
    assert report.ok and "lm_head.weight" in report.tied


def test_untied_lm_head_absent_is_missing(tmp_path: Path) -> None:
    L.tiny_llama().save_pretrained(str(tmp_path))
    report = ckptdiff.check(L.tiny_llama(tie_word_embeddings=False), str(tmp_path))
    assert [t.key for t in report.missing] == ["lm_head.weight"]


@pytest.mark.parametrize("layout", ["dcp", "deepspeed-zero3", "mp"])
def test_tied_head_across_layouts(tmp_path: Path, layout: str) -> None:
    model = Tied()
    if layout == "dcp":
        folder = L.write_dcp(tmp_path / "c", model, optimizer=False)
    elif layout == "deepspeed-zero3":
        folder = L.write_deepspeed(tmp_path / "c", model, stage=3)
    else:
        folder = L.write_mp_shards(tmp_path / "c", model, {}, 2)
    report = ckptdiff.check(Tied(), str(folder))
    assert report.ok and not report.missing
    assert set(report.matched) | set(report.tied) == {"embed.weight", "head.weight"}
