"""What check says about modules the checkpoint supplies nothing of."""

from __future__ import annotations

import torch

import ckptdiff


class Two(torch.nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.vision = torch.nn.Linear(width, width)
        self.text = torch.nn.Linear(4, 4)


def _not_loaded(report):
    return [f for f in report.findings if f.kind == "module_not_loaded"]


def test_absent_branch_is_named_as_staying_at_init(tmp_path):
    path = tmp_path / "vision_only.pt"
    torch.save({k: v for k, v in Two().state_dict().items() if k.startswith("vision.")}, path)
    (f,) = _not_loaded(ckptdiff.check(Two(), str(path)))
    assert f.keys == ("text",) and "stay at its initial values" in f.message


def test_branches_present_with_other_shapes_are_one_finding(tmp_path):
    path = tmp_path / "wide.pt"
    wide = Two(width=16).state_dict()
    torch.save(wide, path)
    (f,) = _not_loaded(ckptdiff.check(Two(width=8), str(path)))
    assert f.keys == ("vision",) and f.data["mismatched"] == 2
    assert "load_state_dict raises" in f.message


def test_with_a_found_key_map_modules_are_judged_with_it(tmp_path):
    path = tmp_path / "ddp.pt"
    torch.save(
        {"module." + k: v for k, v in Two().state_dict().items() if k.startswith("vision.")}, path
    )
    report = ckptdiff.check(Two(), str(path))
    assert report.aligned is not None
    (moved,) = [f for f in report.findings if f.kind == "key_map_coverage"]
    assert moved.message.startswith("Without the key map ('--strip-prefix module.'), nothing loads")
    assert moved.data["before"] == 0.0 and moved.data["after"] == round(72 / 92, 6)  # vision only
    assert (moved.data["supplied_tensors_after"], moved.data["expected_tensors"]) == (2, 4)
    # not "none of the whole model": only the text branch stays at its initial values
    (f,) = _not_loaded(report)
    assert f.keys == ("text",) and f.data["with_key_map"]
    assert f.message.startswith("Even with the key map, the checkpoint supplies none of 'text'")


def test_with_a_found_key_map_that_loads_everything_nothing_is_unloaded(tmp_path):
    path = tmp_path / "ddp.pt"
    torch.save({"module." + k: v for k, v in Two().state_dict().items()}, path)
    report = ckptdiff.check(Two(), str(path))
    assert not _not_loaded(report)
    (moved,) = [f for f in report.findings if f.kind == "key_map_coverage"]
    assert moved.severity == "warning"
    assert "from 0.0% as-is to 100.0% with the key map applied (4 of 4 tensors)" in moved.message


def test_without_a_key_map_there_is_no_coverage_move(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(Two().state_dict(), path)
    report = ckptdiff.check(Two(), str(path))
    assert report.aligned is None
    assert not [f for f in report.findings if f.kind == "key_map_coverage"]
