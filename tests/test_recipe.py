"""The README's recipe for fine-tune scripts, run as written on real tensors."""

from __future__ import annotations

import pytest
import torch

import ckptdiff
from ckptdiff.errors import IncompatibleCheckpointError
from ckptdiff.keymap import KeyMap


class Net(torch.nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.LayerNorm(width))
        self.head = torch.nn.Linear(width, 3)


def test_recipe_loads_a_ddp_lightning_checkpoint(tmp_path):
    trained = Net()
    path = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}, "epoch": 3},
        path,
    )
    model = Net()

    report = ckptdiff.check(model, str(path))
    fixed = report.aligned or report
    fixed.raise_for_incompatible()
    state = torch.load(path, weights_only=True, mmap=True)["state_dict"]
    result = model.load_state_dict(KeyMap.from_rules(report.load_key_map).remap_state_dict(state))

    assert not report.ok and fixed.ok
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)


def test_recipe_stops_before_loading_the_wrong_width(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": Net(width=16).state_dict()}, path)
    report = ckptdiff.check(Net(width=8), str(path))
    with pytest.raises(IncompatibleCheckpointError, match=r"encoder\.0\.weight"):
        (report.aligned or report).raise_for_incompatible()


def test_remap_state_dict_transposes_real_tensors():
    km = KeyMap.from_rules(
        [
            {"op": "strip_prefix", "prefix": "transformer."},
            {"op": "transpose", "pattern": r"\.c_attn\.weight$"},
        ]
    )
    w = torch.arange(6.0).reshape(2, 3)
    out = km.remap_state_dict({"transformer.h.0.c_attn.weight": w, "transformer.h.0.b": w})
    torch.testing.assert_close(out["h.0.c_attn.weight"], w.t())
    assert out["h.0.b"] is w
