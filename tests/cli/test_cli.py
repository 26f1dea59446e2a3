"""The command line: exit codes, one-line errors, golden outputs, the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptdiff.cli import main

SCRIPT = Path(sys.executable).parent / "ckptdiff"


def vit(
    width: int, layers: int, patch: int, grid: int, prefix: str = ""
) -> dict[str, torch.Tensor]:
    sd = {
        "visual.conv1.weight": torch.zeros(width, 3, patch, patch),
        "visual.class_embedding": torch.zeros(width),
        "visual.positional_embedding": torch.zeros(grid * grid + 1, width),
    }
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"] = torch.zeros(3 * width, width)
        sd[p + "ln_1.weight"] = torch.zeros(width)
        sd[p + "mlp.c_fc.weight"] = torch.zeros(4 * width, width)
    sd["visual.proj"] = torch.zeros(width, 8)
    sd["logit_scale"] = torch.zeros(())
    return {prefix + k: v for k, v in sd.items()}


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_file(vit(16, 4, 4, 4), "large.safetensors")
    save_file(vit(8, 2, 8, 2), "base.safetensors")
    save_file(vit(8, 2, 8, 2, prefix="module."), "ddp.safetensors")
    return tmp_path


def run(runner, *args):
    return runner.invoke(main, list(args))


def test_diff_table_golden(files, runner, golden):
    r = run(runner, "diff", "large.safetensors", "base.safetensors")
    assert r.exit_code == 1, r.output
    golden("diff_large_vs_base.txt", r.stdout)
    assert "visual.transformer.resblocks.{0-1}.ln_1.weight" in r.stdout


def test_diff_full_lists_every_key(files, runner):
    r = run(runner, "diff", "large.safetensors", "base.safetensors", "--full")
    assert "visual.transformer.resblocks.0.ln_1.weight" in r.stdout
    assert "{0-1}" not in r.stdout


def test_diff_markdown_golden(files, runner, golden):
    r = run(
        runner,
        "diff",
        "large.safetensors",
        "base.safetensors",
        "--format",
        "markdown",
        "--coverage",
    )
    assert r.exit_code == 1
    golden("diff_large_vs_base.md", r.stdout)


def test_diff_json(files, runner):
    r = run(runner, "diff", "large.safetensors", "base.safetensors", "--format", "json")
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["schema"] == "ckptdiff.report/2" and d["ok"] is False
    mm = {m["key"]: (m["checkpoint_shape"], m["target_shape"]) for m in d["mismatched"]}
    assert mm["visual.conv1.weight"] == ([16, 3, 4, 4], [8, 3, 8, 8])
    assert {u["key"] for u in d["unexpected"]} >= {"visual.transformer.resblocks.3.ln_1.weight"}


def test_same_is_exit_0(files, runner):
    r = run(runner, "diff", "base.safetensors", "base.safetensors")
    assert r.exit_code == 0
    assert "compatible" in r.stdout


def test_wrapper_prefix_hint_and_fix(files, runner, golden):
    r = run(runner, "diff", "ddp.safetensors", "base.safetensors")
    assert r.exit_code == 1
    assert "fix with '--strip-prefix module.'" in r.stdout
    golden("diff_ddp_vs_base.txt", r.stdout)
    fixed = run(runner, "diff", "ddp.safetensors", "base.safetensors", "--strip-prefix", "module.")
    assert fixed.exit_code == 0, fixed.stdout
    other_side = run(
        runner, "diff", "base.safetensors", "ddp.safetensors", "--b-strip-prefix", "module."
    )
    assert other_side.exit_code == 0


def test_key_map_file(files, runner):
    Path("map.json").write_text(
        json.dumps(
            {"schema": "ckptdiff.keymap/1", "rules": [{"op": "strip_prefix", "prefix": "module."}]}
        )
    )
    r = run(runner, "diff", "ddp.safetensors", "base.safetensors", "--key-map", "map.json")
    assert r.exit_code == 0


def test_inspect_golden_and_json(files, runner, golden):
    r = run(runner, "inspect", "base.safetensors")
    assert r.exit_code == 0
    golden("inspect_base.txt", r.stdout)
    tree = run(runner, "inspect", "large.safetensors", "--depth", "2")
    golden("inspect_large_depth2.txt", tree.stdout)
    d = json.loads(run(runner, "inspect", "base.safetensors", "--format", "json").stdout)
    assert d["schema"] == "ckptdiff.manifest/1" and d["format"] == "safetensors"
    assert d["tensors"][0] == {"key": "logit_scale", "shape": [], "dtype": "float32", "nbytes": 4}
    assert d["tensors"][1] == {
        "key": "visual.class_embedding",
        "shape": [8],
        "dtype": "float32",
        "nbytes": 32,
    }
    filtered = json.loads(
        run(runner, "inspect", "base.safetensors", "--filter", r"ln_1", "--format", "json").stdout
    )
    assert [t["key"] for t in filtered["tensors"]] == [
        "visual.transformer.resblocks.0.ln_1.weight",
        "visual.transformer.resblocks.1.ln_1.weight",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["diff", "nope.safetensors", "base.safetensors"],
            "Cannot read 'nope.safetensors': no such file",
        ),
        (["inspect", "empty_dir"], "it holds no weights"),
        (
            ["diff", "base.safetensors", "base.safetensors", "--rename", "x"],
            "expected 'REGEX=>REPLACEMENT'",
        ),
        (["inspect", "base.safetensors", "--filter", "("], "is not a valid regular expression"),
        (["inspect", "base.safetensors", "--select", "state_dict"], "one flat list of tensors"),
        (["inspect", "truncated.safetensors"], "(truncated?)"),
    ],
)
def test_bad_input_is_one_line_exit_2(files, runner, args, message):
    data = Path("base.safetensors").read_bytes()
    Path("truncated.safetensors").write_bytes(data[: len(data) // 2])
    Path("empty_dir").mkdir()
    r = run(runner, *args)
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(files, runner):
    r = run(runner, "inspect", "nope.pt", "--debug")
    assert r.exit_code == 2
    assert "Traceback" in r.stderr and "SourceNotFoundError" in r.stderr


def test_help_teaches():
    r = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    assert "inspect" in r.stdout and "diff" in r.stdout
    r = subprocess.run([str(SCRIPT), "diff", "--help"], capture_output=True, text=True, check=True)
    assert "Exit codes" in r.stdout and "--strip-prefix" in r.stdout and "Examples" in r.stdout


def test_installed_script_and_no_torch_import(files):
    r = subprocess.run(
        [str(SCRIPT), "diff", "ddp.safetensors", "base.safetensors", "--strip-prefix", "module."],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    code = (
        "import sys\n"
        "from ckptdiff.cli import main\n"
        "try:\n"
        "    main(['diff', 'large.safetensors', 'base.safetensors', '--format', 'json'])\n"
        "except SystemExit as e:\n"
        "    print('torch' in sys.modules, e.code, file=sys.stderr)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert r.stderr.strip() == "False 1", r.stderr


def test_inspect_depth_0_is_one_total_row(files, runner):
    r = run(runner, "inspect", "large.safetensors", "--depth", "0")
    assert r.exit_code == 0
    table = r.stdout.split("\n\n")[1].splitlines()
    assert len(table) == 3 and table[2].split()[:2] == ["(all)", "17"]


def test_coverage_follows_the_key_map_it_shows(files, runner):
    r = run(runner, "diff", "ddp.safetensors", "base.safetensors", "--coverage")
    assert "with the suggested key map applied, and as the files stand (as-is)" in r.stdout
    whole = next(ln for ln in r.stdout.splitlines() if ln.startswith("(whole model)"))
    # the mapped share, then the as-is one: nothing loads without the key map
    assert whole.split()[2] == "11/11" and whole.split()[4] == "100.0%"
    assert whole.endswith("0.0%  <-- nothing loads")
