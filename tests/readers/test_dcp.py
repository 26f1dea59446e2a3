"""torch.distributed.checkpoint folders: global shapes from .metadata, model and optimizer parts."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import ckptdiff
from ckptdiff.cli import main
from ckptdiff.errors import SelectError
from ckptdiff.readers.dcp import split_parts
from fixtures import layouts as L
from tests.readers.conftest import mlp


def test_model_part_with_global_shapes(dcp_dir: Path) -> None:
    m = ckptdiff.read(str(dcp_dir))
    assert m.format == "dcp" and m.metadata["layout"] == "dcp"
    assert m.selected == "model"
    assert m.candidates == ("model", "optimizer")
    want = {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in mlp().state_dict().items()
    }
    assert {k: (t.shape, t.dtype) for k, t in m.tensors.items()} == want
    parts = m.metadata["parts"]
    assert parts["model"] == {"prefix": "model.", "tensors": 4, "objects": 0, "elements": 58}
    assert parts["optimizer"]["prefix"] == "optim." and parts["optimizer"]["tensors"] == 12
    layout = m.findings[0]
    assert layout.kind == "layout"
    assert "model under 'model.': 4 tensors" in layout.message
    assert "optimizer under 'optim.': 12 tensors" in layout.message
    assert "dcp_to_torch" in layout.message


def test_shapes_agree_with_torchs_own_metadata_reader(dcp_dir: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(dcp_dir)).read_metadata()
    want = {
        k: tuple(v.size)
        for k, v in meta.state_dict_metadata.items()
        if isinstance(v, TensorStorageMetadata)
    }
    got = {"model." + k: t.shape for k, t in ckptdiff.read(str(dcp_dir)).tensors.items()}
    got |= {
        "optim." + k: t.shape
        for k, t in ckptdiff.read(str(dcp_dir), select="optimizer").tensors.items()
    }
    assert got == want


def test_select_optimizer(dcp_dir: Path) -> None:
    m = ckptdiff.read(str(dcp_dir), select="optimizer")
    assert m.selected == "optimizer"
    assert m.tensors["state.0.weight.exp_avg"].shape == (8, 4)
    assert m.tensors["state.2.bias.exp_avg_sq"].shape == (2,)
    with pytest.raises(SelectError, match="Parts: model, optimizer"):
        ckptdiff.read(str(dcp_dir), select="ema")


def test_check_against_the_model(dcp_dir: Path) -> None:
    report = ckptdiff.check(mlp(), str(dcp_dir))
    assert report.ok and len(report.matched) == 4
    wrong = ckptdiff.check(
        torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.GELU(), torch.nn.Linear(16, 2)),
        str(dcp_dir),
    )
    assert {m.key for m in wrong.mismatched} == {"0.weight", "0.bias", "2.weight"}


def test_torchtitan_flat_layout(tmp_path: Path) -> None:
    folder = L.write_dcp(tmp_path / "step-10", mlp(), flat=True)
    m = ckptdiff.read(str(folder))
    assert set(m.tensors) == set(mlp().state_dict())
    assert m.candidates == ("model", "optimizer", "train_state")
    assert m.metadata["parts"]["model"]["prefix"] == ""
    assert ckptdiff.check(mlp(), str(folder)).ok


def test_missing_shard_is_an_error(dcp_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(dcp_dir, folder)
    for shard in folder.glob("*.distcp"):
        shard.unlink()
    m = ckptdiff.read(str(folder))
    (missing,) = [f for f in m.findings if f.kind == "shard_missing"]
    assert missing.severity == "error"
    assert len(m.tensors) == 4  # shapes still come from .metadata


def test_forbidden_global_in_metadata_is_reported(tmp_path: Path, runner) -> None:
    import dataclasses
    import os

    from torch.distributed.checkpoint import FileSystemReader

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    src = L.write_dcp(tmp_path / "ok", mlp(), optimizer=False)
    meta = FileSystemReader(str(src)).read_metadata()
    evil = dataclasses.replace(meta, planner_data=Evil())
    (src / ".metadata").write_bytes(pickle.dumps(evil))
    m = ckptdiff.read(str(src))
    assert [f.data["name"] for f in m.security_findings] == ["system"]
    assert len(m.tensors) == 4
    assert runner.invoke(main, ["inspect", str(src)]).exit_code == 3


def test_split_parts_bare_optimizer() -> None:
    parts = split_parts(["w", "b", "state.0.exp_avg", "param_groups.0.lr"])
    assert parts["model"] == ("", ["w", "b"])
    assert parts["optimizer"] == ("", ["state.0.exp_avg", "param_groups.0.lr"])


def test_cli_inspect(dcp_dir: Path, runner) -> None:
    result = runner.invoke(main, ["inspect", str(dcp_dir)])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert "(dcp, state dict at 'model')" in first
    assert "model [used] (4 tensors, 58 parameters), optimizer (12 tensors" in result.output


def test_reading_layouts_does_not_import_torch(
    dcp_dir: Path, lora_dir: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    ds = L.write_deepspeed(tmp_path / "ds", mlp(), stage=3)
    code = (
        "import sys, ckptdiff\n"
        f"for s in {[str(dcp_dir), str(lora_dir), str(ds)]!r}:\n"
        "    print(ckptdiff.read(s).metadata['layout'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["dcp", "peft-lora", "deepspeed-zero3"]
