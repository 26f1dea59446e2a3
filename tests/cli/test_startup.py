"""Startup: the package and the CLI import what a command uses, nothing more."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from ckptdiff.cli import LAZY_COMMANDS, main


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_package_imports_nothing_of_it():
    loaded = _modules_after("import ckptdiff")
    assert {m for m in loaded if m.startswith("ckptdiff")} == {"ckptdiff"}
    assert "click" not in loaded and "torch" not in loaded


def test_public_names_load_on_first_use_and_stay_functions():
    import ckptdiff

    assert callable(ckptdiff.check) and ckptdiff.check.__module__ == "ckptdiff._check"
    assert callable(ckptdiff.diff) and ckptdiff.diff.__name__ == "diff_sources"
    assert ckptdiff.Report.__name__ == "Report" and ckptdiff.read.__module__ == "ckptdiff.readers"
    assert set(ckptdiff.__all__) <= set(dir(ckptdiff))
    with pytest.raises(AttributeError):
        ckptdiff.no_such_name  # noqa: B018


def test_help_and_inspect_import_only_what_they_use(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"layers.0.w": torch.zeros(2), "layers.1.w": torch.zeros(2)}, str(path))
    run = (
        "from ckptdiff.cli import main\nimport sys\nsys.argv = {!r}\ntry:\n    main()\n"
        "except SystemExit:\n    pass"
    )
    help_ = _modules_after(run.format(["ckptdiff", "--help"]))
    assert not {m for m in help_ if m.startswith("ckptdiff.cli.") and m.endswith("_cmd")}
    inspect = _modules_after(run.format(["ckptdiff", "inspect", str(path)]))
    commands = {m for m in inspect if m.startswith("ckptdiff.cli.") and m.endswith("_cmd")}
    assert commands == {"ckptdiff.cli.inspect_cmd"}
    assert (
        not {
            "torch",
            "numpy",
            "ckptdiff._check",
            "ckptdiff._diff",
            "ckptdiff.targets",
            "ckptdiff.readers.hub.transport",
        }
        & inspect
    )


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_listed_help_is_the_commands_own(name):
    module, line = LAZY_COMMANDS[name]
    command = getattr(importlib.import_module(module), name)
    assert command.get_short_help_str(limit=200) == line
    assert main.get_command(None, name) is command  # type: ignore[arg-type]


def test_every_public_name_is_lazy_and_listed():
    import ckptdiff

    assert sorted(ckptdiff.__all__) == sorted(ckptdiff._LAZY)
