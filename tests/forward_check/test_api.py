"""``ckptdiff.forward(model, inputs)``: the API twin of the command."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from torch import nn

import ckptdiff


class TwoTowers(nn.Module):
    """Text of 77 tokens into a head built for 76 positions."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.head = nn.Linear(76 * 8, 3)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids).flatten(1))


def test_forward_is_the_function_and_returns_a_report():
    report = ckptdiff.forward(TwoTowers(), {"input_ids": "2x77"})
    assert isinstance(report, ckptdiff.ForwardReport)
    assert not report.ok and report.exit_code == 1
    f = report.runs[0].failure
    assert (f.module, f.module_type, f.op) == ("head", "Linear", "torch.nn.functional.linear")
    assert json.loads(report.to_json())["runs"][0]["failure"]["operands"][0] == [
        "input",
        [1, 616],
        "float32",
    ]
    assert str(report).startswith("Forward pass of tests.forward_check.test_api:TwoTowers\n")
    assert ckptdiff.forward(TwoTowers(), {"input_ids": (4, 76)}).ok


def test_importing_ckptdiff_does_not_import_torch():
    code = "import sys, ckptdiff; ckptdiff.ForwardReport; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_instance_with_weights_runs_as_it_is_in_data_mode():
    model = TwoTowers()
    with torch.no_grad():
        model.head.bias.fill_(7.0)
    seen = []
    model.head.register_forward_hook(lambda _m, _a, out: seen.append(out.clone()))
    report = ckptdiff.forward(model, {"input_ids": (2, 76)}, mode="data", batch_sizes=[2])
    assert report.ok and len(seen) == 1
    assert seen[0].shape == (2, 3)
    assert model.head.bias[0].item() == 7.0  # the user's weights, untouched
    assert model.training  # the train/eval state is restored
