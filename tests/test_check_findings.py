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
