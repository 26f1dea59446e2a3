"""DeepSpeed saves: ZeRO-3 placeholders resolved from param_shapes, ZeRO-2 module, mp ranks."""

from __future__ import annotations

from pathlib import Path

import torch

import ckptdiff
from ckptdiff.cli import main
from fixtures import layouts as L
from fixtures.torch_files import TinyNet


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_zero3_placeholders_get_their_global_shapes(tmp_path: Path) -> None:
    folder = L.write_deepspeed(tmp_path / "ckpt", TinyNet(), stage=3, dp=2)
    m = ckptdiff.read(str(folder))
    assert m.format == "deepspeed" and m.metadata["layout"] == "deepspeed-zero3"
    assert m.selected == "module"
    assert {k: t.shape for k, t in m.tensors.items()} == _shapes(TinyNet())
    assert m.tensors["conv.weight"].dtype == "float32"  # as zero_to_fp32.py writes it
    assert m.tensors["bn.num_batches_tracked"].dtype == "int64"  # a buffer, stored whole
    layout = m.findings[0]
    assert layout.kind == "layout" and layout.severity == "warning"
    assert "6 of the module's 9 tensors are ZeRO-3 placeholders" in layout.message
    assert "zero_to_fp32.py" in layout.message
    assert "2 data-parallel ranks" in layout.message


def test_zero3_check_is_not_a_wall_of_mismatches(tmp_path: Path) -> None:
    folder = L.write_deepspeed(tmp_path / "ckpt", TinyNet(), stage=3)
    report = ckptdiff.check(TinyNet(), str(folder))
    assert report.ok and not report.mismatched
    assert any("zero_to_fp32.py" in f.message for f in report.findings)


def test_zero3_without_param_shapes(tmp_path: Path) -> None:
    folder = L.write_deepspeed(tmp_path / "ckpt", TinyNet(), stage=3, param_shapes=False)
    m = ckptdiff.read(str(folder))
    assert m.metadata["layout"] == "deepspeed-zero3"
    assert m.findings[0].severity == "error"
    assert "cannot be told" in m.findings[0].message
    report = ckptdiff.check(TinyNet(), str(folder))
    assert report.exit_code == 1
    assert any(f.data.get("cause") == "zero3" for f in report.findings)


def test_one_zero3_file(tmp_path: Path) -> None:
    folder = L.write_deepspeed(tmp_path / "ckpt", TinyNet(), stage=3)
    path = folder / "global_step10" / "zero_pp_rank_1_mp_rank_00_model_states.pt"
    m = ckptdiff.read(str(path))
    assert m.metadata["layout"] == "deepspeed-zero3"
    assert {k: t.shape for k, t in m.tensors.items()} == _shapes(TinyNet())


def test_zero2_module_as_stored(tmp_path: Path) -> None:
    folder = L.write_deepspeed(tmp_path / "ckpt", TinyNet(), stage=2)
    m = ckptdiff.read(str(folder))
    assert m.metadata["layout"] == "deepspeed-zero2"
    path = folder / "global_step10" / "mp_rank_00_model_states.pt"
    module = torch.load(path, map_location="meta", weights_only=True)["module"]
    assert {k: (t.shape, t.dtype) for k, t in m.tensors.items()} == {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.items()
    }
    report = ckptdiff.check(TinyNet(), str(folder))
    assert report.ok and len(report.dtype_changes) == 8  # bf16 weights and float buffers


def test_tag_folder_directly(tmp_path: Path) -> None:
    folder = L.write_deepspeed(tmp_path / "ckpt", TinyNet(), stage=3)
    assert ckptdiff.read(str(folder / "global_step10")).metadata["layout"] == "deepspeed-zero3"


def test_cli_inspect(tmp_path: Path, runner) -> None:
    folder = L.write_deepspeed(tmp_path / "ckpt", TinyNet(), stage=3)
    result = runner.invoke(main, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert "(deepspeed, layout deepspeed-zero3, state dict at 'module')" in result.output
