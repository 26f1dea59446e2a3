"""Training-stack layouts and adapter configs under attack: no pickle goes unscanned, real
writers scan clean, config regexes are matched within a time bound."""

from __future__ import annotations

import json
import shutil
import sys
import time
import zipfile
from pathlib import Path

import pytest
from torch import nn

import ckptdiff
from ckptdiff.cli import main
from ckptdiff.errors import ReadError
from fixtures import layouts as L
from fixtures.hostile import ROUTES, _s


def _poison(path: Path, canary: Path) -> None:
    """Add ``extra: os.system(...)`` to the root dict of a torch zip's data.pkl."""
    with zipfile.ZipFile(path) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    out = []
    for name, data in entries:
        if name.endswith("data.pkl"):
            data = data[:-1] + _s("extra") + ROUTES["global_reduce"][1](str(canary)) + b"s."
        out.append((name, data))
    with zipfile.ZipFile(path, "w") as z:
        for name, data in out:
            z.writestr(name, data)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _both(runner, folder: Path) -> tuple[int, int]:
    inspect = runner.invoke(main, ["inspect", str(folder)])
    scan = runner.invoke(main, ["scan", str(folder)])
    return inspect.exit_code, scan.exit_code


@pytest.mark.parametrize(
    "victim",
    [
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ],
)
def test_deepspeed_files_not_read_for_tensors_are_still_scanned(runner, tmp_path, victim):
    root = L.write_deepspeed(tmp_path / "ds", _mlp(), stage=3, dp=2)
    assert _both(runner, root) == (0, 0)
    target = next(root.rglob(victim))
    canary = tmp_path / "CANARY"
    _poison(target, canary)
    result = runner.invoke(main, ["inspect", str(root)])
    assert result.exit_code == 3 and "os.system" in result.output, result.output
    assert runner.invoke(main, ["scan", str(root)]).exit_code == 3
    assert not canary.exists()


def test_model_parallel_ranks_past_0_are_scanned(runner, tmp_path):
    model = _mlp()
    folder = L.write_mp_shards(tmp_path / "mp", model, {"0.weight": 0, "2.weight": 1})
    assert _both(runner, folder) == (0, 0)
    rank1 = sorted(folder.glob("consolidated.*.pth"))[1]
    _poison(rank1, tmp_path / "CANARY")
    result = runner.invoke(main, ["inspect", str(folder)])
    assert result.exit_code == 3 and "os.system" in result.output, result.output


def test_a_real_dcp_folder_scans_clean_and_a_poisoned_metadata_does_not(runner, tmp_path):
    folder = L.write_dcp(tmp_path / "dcp")
    result = runner.invoke(main, ["scan", str(folder)])
    assert result.exit_code == 0, result.output
    assert "dcp-metadata" in result.output
    meta = folder / ".metadata"
    meta.write_bytes(meta.read_bytes()[:-1] + ROUTES["global_reduce"][1]("x") + b"0.")
    assert runner.invoke(main, ["scan", str(folder)]).exit_code == 3
    assert runner.invoke(main, ["inspect", str(folder)]).exit_code == 3


@pytest.fixture
def adapter(lora_dir, tmp_path):
    folder = tmp_path / "lora"
    shutil.copytree(lora_dir, folder)

    def with_targets(targets, **more):
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg.update(target_modules=targets, **more)
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        return folder

    return with_targets


@pytest.mark.parametrize("pattern", ["(.|.)*Q", "(a*)*$", "(x+x+)+y", ".*" * 50 + "Q"])
def test_backtracking_target_modules_end_within_the_bound(adapter, pattern):
    folder = adapter(pattern)
    start = time.monotonic()
    try:
        ckptdiff.check(L.tiny_llama(), str(folder))
    except ReadError as e:
        assert "target_modules regex" in str(e)
    assert time.monotonic() - start < 20


def test_without_a_bounded_engine_nested_quantifiers_are_refused(adapter, monkeypatch):
    from ckptdiff.adapter import expected

    monkeypatch.setitem(sys.modules, "regex", None)
    expected._config_regex.cache_clear()
    folder = adapter("(.|.)*Q")
    with pytest.raises(ReadError, match="nests quantifiers"):
        ckptdiff.check(L.tiny_llama(), str(folder))
    expected._config_regex.cache_clear()


def test_an_invalid_target_modules_regex_is_one_line_exit_2(adapter, runner):
    folder = adapter("q_proj(")
    result = runner.invoke(main, ["check", str(folder), "--model", "fixtures.layouts:tiny_llama"])
    assert result.exit_code == 2, result.output
    assert "is not a valid regex" in result.stderr and result.stderr.count("\n") == 1


def test_a_plain_target_modules_regex_matches_as_peft_does(adapter):
    folder = adapter(r".*\.(q_proj|v_proj)")
    assert ckptdiff.check(L.tiny_llama(), str(folder)).ok
