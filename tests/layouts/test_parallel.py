"""Model-parallel rank files: a uniform 1/N split, detected and merged to logical shapes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import ckptdiff
from ckptdiff.layouts.parallel import split_dims
from ckptdiff.types import TensorSpec as T
from fixtures import layouts as L


def _model() -> L.TinyLM:
    torch.manual_seed(0)
    return L.TinyLM(width=16, vocab=48)


#: column-parallel q_proj and lm_head (rows), row-parallel v_proj (columns), norms replicated
DIMS = {"q_proj": 0, "lm_head": 0, "v_proj": 1}


def _dims(model: torch.nn.Module) -> dict[str, int | None]:
    return {
        k: next((d for n, d in DIMS.items() if n in k and k.endswith("weight")), None)
        for k in model.state_dict()
    }


@pytest.mark.parametrize("style", ["meta", "deepspeed"])
def test_ranks_merge_to_the_model(tmp_path: Path, style: str) -> None:
    model = _model()
    folder = L.write_mp_shards(tmp_path / "ckpt", model, _dims(model), 2, style=style)
    m = ckptdiff.read(str(folder))
    assert m.metadata["layout"] == "model-parallel"
    assert m.metadata["mp_world_size"] == 2
    assert {k: t.shape for k, t in m.tensors.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    layout = m.findings[0]
    assert layout.data["split_dims"] == {k: d for k, d in _dims(model).items() if d is not None}
    assert "2 ranks" in layout.message and "hidden width 16" in layout.message
    assert ckptdiff.check(_model(), str(folder)).ok


def test_params_json_gives_the_width(tmp_path: Path) -> None:
    model = _model()
    folder = L.write_mp_shards(
        tmp_path / "ckpt", model, _dims(model), 4, params={"dim": 16, "n_layers": 2}
    )
    m = ckptdiff.read(str(folder))
    assert m.metadata["hidden"] == 16 and m.metadata["mp_world_size"] == 4
    assert m.tensors["lm_head.weight"].shape == (48, 16)


def test_one_rank_against_the_whole_model(tmp_path: Path) -> None:
    model = _model()
    folder = L.write_mp_shards(tmp_path / "ckpt", model, _dims(model), 2)
    report = ckptdiff.check(_model(), str(folder / "consolidated.00.pth"))
    assert report.exit_code == 1
    shard = report.findings[0]
    assert shard.kind == "mp_shard" and shard.severity == "error"
    assert shard.data == {"mp_world_size": 2, "dims": {0: 3, 1: 2}, "cut": 5, "matrices": 5}
    assert "one of 2 model-parallel shards" in shard.message


def test_ranks_with_other_keys(tmp_path: Path) -> None:
    model = _model()
    folder = L.write_mp_shards(tmp_path / "ckpt", model, _dims(model), 2)
    torch.save({"other.weight": torch.zeros(2)}, folder / "consolidated.01.pth")
    m = ckptdiff.read(str(folder))
    assert any(f.kind == "mp_keys_differ" and f.severity == "error" for f in m.findings)


def test_split_dims_rules() -> None:
    specs = {
        "tok_embeddings.weight": T("tok_embeddings.weight", (100, 8), "f"),  # Meta: cut on dim
        "wq.weight": T("wq.weight", (8, 16), "f"),
        "wo.weight": T("wo.weight", (16, 8), "f"),
        "w1.weight": T("w1.weight", (20, 16), "f"),
        "w1.bias": T("w1.bias", (20,), "f"),
        "wo.bias": T("wo.bias", (16,), "f"),
        "norm.weight": T("norm.weight", (16,), "f"),
    }
    assert split_dims(specs, 2, 16) == {
        "tok_embeddings.weight": 1,
        "wq.weight": 0,
        "wo.weight": 1,
        "w1.weight": 0,
        "w1.bias": 0,
        "wo.bias": None,
        "norm.weight": None,
    }


def _llama_dims(model: torch.nn.Module) -> dict[str, int | None]:
    """Megatron's cut of a Llama: column-parallel q/k/v/gate/up/lm_head and the vocabulary,
    row-parallel o/down; norms replicated."""
    rows = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head", "embed_tokens")
    cols = ("o_proj", "down_proj")
    return {
        k: 0 if any(r in k for r in rows) else 1 if any(c in k for c in cols) else None
        for k in model.state_dict()
    }


def test_one_llama_rank_is_a_shard(tmp_path: Path) -> None:
    model = L.tiny_llama(num_key_value_heads=2, tie_word_embeddings=False)
    folder = L.write_mp_shards(tmp_path / "ckpt", model, _llama_dims(model), 2)
    report = ckptdiff.check(
        L.tiny_llama(num_key_value_heads=2, tie_word_embeddings=False),
        str(folder / "consolidated.00.pth"),
    )
    (shard,) = [f for f in report.findings if f.kind == "mp_shard"]
    assert shard.data["mp_world_size"] == 2 and shard.data["cut"] == shard.data["matrices"] == 16
    assert not any(f.data.get("cause") == "kv_heads" for f in report.findings)


def test_grouped_query_attention_is_not_a_shard(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    gqa = L.tiny_llama(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    path = tmp_path / "gqa.safetensors"
    save_file({k: v.contiguous() for k, v in gqa.state_dict().items()}, str(path))
    report = ckptdiff.check(
        L.tiny_llama(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
        str(path),
    )
    assert len(report.mismatched) == 4  # k_proj and v_proj of both layers, half the rows
    assert not [f for f in report.findings if f.kind == "mp_shard"]
    assert any(f.data.get("cause") == "kv_heads" for f in report.findings)


def test_few_halved_matrices_are_not_a_shard() -> None:
    """Two halved tables among many whole matrices (a vocabulary half the size) is no cut."""
    from ckptdiff.layouts.parallel import shard_factor_finding
    from ckptdiff.types import Manifest, Mismatch, Report

    target = Manifest(
        "t",
        "meta-model",
        {
            k: T(k, s, "f")
            for k, s in [
                ("embed.weight", (64, 16)),
                ("head.weight", (64, 16)),
                ("a.weight", (16, 16)),
                ("b.weight", (16, 16)),
                ("c.weight", (16, 16)),
            ]
        },
    )
    report = Report(
        "c",
        "t",
        "safetensors",
        "meta-model",
        mismatched=(
            Mismatch("embed.weight", (32, 16), (64, 16), "f", "f"),
            Mismatch("head.weight", (32, 16), (64, 16), "f", "f"),
        ),
        matched=("a.weight", "b.weight", "c.weight"),
    )
    assert shard_factor_finding(report, target) is None
    whole = replace(report, matched=("a.weight",))
    assert shard_factor_finding(whole, target) is not None
