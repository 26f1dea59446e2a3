"""A plain nn.Module is judged as load_state_dict(strict=True) judges it; constructors that
torch.load their own weights build on meta."""

from __future__ import annotations

import textwrap

import torch
from safetensors.torch import save_file
from torch import nn

from ckptdiff import check
from ckptdiff.cli import main

SELF_LOADING = textwrap.dedent("""
    import os, torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, weights):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            if weights:
                self.load_state_dict(torch.load(weights, map_location="cpu"))

    def build(weights=os.path.join(os.path.dirname(__file__), "net.pt")):
        return Net(weights)
""")


class Aliased(nn.Module):
    """LPIPS-style: one module reachable under two names (``lin0`` and ``lins.0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(2, 2)
        self.lins = nn.ModuleList([self.lin0])


def test_constructor_that_torch_loads_its_weights(tmp_path, runner):
    (tmp_path / "selfload.py").write_text(SELF_LOADING)
    torch.save(nn.Linear(4, 3).state_dict(), tmp_path / "raw.pt")
    torch.save({"fc." + k: v for k, v in nn.Linear(4, 3).state_dict().items()}, tmp_path / "net.pt")
    report = check(f"{tmp_path}/selfload.py:build", str(tmp_path / "net.pt"))
    assert report.ok


def test_a_constructor_load_that_fails_says_which_call(tmp_path, runner):
    (tmp_path / "selfload.py").write_text(SELF_LOADING)
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "ck.pt")
    result = runner.invoke(
        main, ["check", str(tmp_path / "ck.pt"), "-m", f"{tmp_path}/selfload.py:build"]
    )
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "torch.load(" in line and "net.pt" in line and "inside the model's constructor" in line


def test_aliased_module_needs_both_names_as_strict_loading_does(tmp_path):
    model = Aliased()
    path = tmp_path / "one_name.safetensors"
    save_file({"lin0.weight": torch.zeros(2, 2), "lin0.bias": torch.zeros(2)}, path)
    report = check(model, str(path))
    oracle = model.load_state_dict(
        {"lin0.weight": torch.zeros(2, 2), "lin0.bias": torch.zeros(2)}, strict=False
    )
    assert (
        {t.key for t in report.missing}
        == set(oracle.missing_keys)
        == {"lins.0.weight", "lins.0.bias"}
    )
    assert not report.ok
