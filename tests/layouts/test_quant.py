"""Quantized weights: the scheme named, packed tensors compared at their logical shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ckptdiff
from ckptdiff.cli import main
from ckptdiff.layouts.quant import detect_quantization, logical_view
from fixtures import layouts as L


def _model(width: int = 16) -> L.TinyLM:
    torch.manual_seed(0)
    return L.TinyLM(width=width, vocab=32)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


WRITERS = [
    (L.write_gptq, "gptq", "GPTQ 4-bit, group 8", 15),
    (L.write_awq, "awq", "AWQ 4-bit, group 8", 10),
    (L.write_bnb4, "bnb-4bit", "bitsandbytes 4-bit", 15),
    (L.write_fp8, "fp8", "fp8", 5),
    (L.write_mlx, "mlx", "MLX affine 4-bit, group 8", 10),
]


@pytest.mark.parametrize(("write", "scheme", "label", "side"), WRITERS)
def test_scheme_named_and_checked_at_logical_shapes(
    tmp_path: Path, write, scheme: str, label: str, side: int
) -> None:
    path = write(tmp_path / scheme, _model())
    m = ckptdiff.read(str(path))
    assert m.metadata["layout"] == scheme
    (layout,) = [f for f in m.findings if f.kind == "layout"]
    assert f"quantized weights: {label}; 5 packed weights and {side} side tensors" in layout.message
    logical = logical_view(m, ckptdiff.targets.build_target(_model()))
    assert {k: t.shape for k, t in logical.tensors.items()} == _shapes(_model())
    report = ckptdiff.check(_model(), str(path))
    assert report.ok, report
    (quant,) = [f for f in report.findings if f.kind == "quantized"]
    assert quant.severity == "warning" and quant.data["scheme"] == scheme


@pytest.mark.parametrize(("write", "scheme"), [(w, s) for w, s, _, _ in WRITERS if s != "bnb-4bit"])
def test_wrong_width_is_reported_at_logical_shapes(tmp_path: Path, write, scheme: str) -> None:
    path = write(tmp_path / scheme, _model())
    report = ckptdiff.check(_model(width=32), str(path))
    mism = {m.key: m for m in report.mismatched}
    assert (
        mism["model.layers.0.q_proj.weight"].checkpoint_shape,
        mism["model.layers.0.q_proj.weight"].target_shape,
    ) == ((16, 16), (32, 32))
    assert not any(k.endswith(("qweight", "scales", "qzeros", "biases")) for k in mism)


def test_bnb4_weight_of_another_element_count(tmp_path: Path) -> None:
    path = L.write_bnb4(tmp_path / "bnb", _model())
    report = ckptdiff.check(_model(width=32), str(path))
    quant = next(f for f in report.findings if f.kind == "quantized")
    assert "only their element count is known" in quant.message
    assert report.mismatched[0].checkpoint_shape == (512,)


def test_gptq_group_per_row(tmp_path: Path) -> None:
    path = L.write_gptq(tmp_path / "g", _model(), group=-1)
    (tmp_path / "g" / "config.json").unlink()  # the group comes from the scales' rows alone
    q = detect_quantization(ckptdiff.read(str(path)))
    assert (q.scheme, q.bits, q.group_size) == ("gptq", 4, -1)
    assert q.label == "GPTQ 4-bit, group per row"


def test_plain_checkpoint_is_left_alone(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    save_model(_model(), str(tmp_path / "model.safetensors"))
    m = ckptdiff.read(str(tmp_path))
    assert "layout" not in m.metadata
    assert logical_view(m) is m


def test_cli_inspect_shows_the_mapping(tmp_path: Path, runner) -> None:
    path = L.write_gptq(tmp_path / "g", _model())
    result = runner.invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0
    assert "(safetensors, layout gptq)" in result.output.splitlines()[0]
    assert (
        "model.layers.0.q_proj.qweight [2, 16] int32 -> model.layers.0.q_proj.weight [16x16]"
        in result.output
    )
