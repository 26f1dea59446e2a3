"""Every hostile file through the real CLI: no canary, no traceback, the exit code and message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ckptdiff.cli import main
from fixtures.hostile import CASES


def test_the_corpus_is_large_and_covers_every_group():
    groups = {c.group for c in CASES}
    assert len(CASES) >= 40
    assert groups == {
        "payload",
        "bomb",
        "traversal",
        "zip",
        "legacy",
        "safetensors",
        "sniff",
        "evasion",
        "dropped",
        "terminal",
        "odd",
    }
    assert sum(c.group == "payload" for c in CASES) >= 20


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_inspect_answers_every_hostile_file(name, corpus, canary, runner):
    case, path = corpus[name]
    result = runner.invoke(main, ["inspect", str(path)])
    output = result.stdout + result.stderr
    assert not canary.exists(), f"{name}: a payload ran"
    assert "Traceback" not in output and "internal error" not in output, output
    assert result.exit_code == case.exit_code, output
    assert case.message in output, output
    for key in case.tensors:  # a payload beside a valid state dict: its tensors still listed
        assert f"\n{key} " in result.stdout, result.stdout


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_scan_gives_every_hostile_file_its_own_verdict(name, corpus, canary, runner):
    case, path = corpus[name]
    result = runner.invoke(main, ["scan", str(path)])
    output = result.stdout + result.stderr
    assert not canary.exists(), f"{name}: a payload ran"
    assert "Traceback" not in output and "internal error" not in output, output
    assert "\x1b" not in output and "\r" not in output, output
    if case.exit_code == 3:
        assert result.exit_code == 3 and "FLAGGED" in result.stdout, output
    elif case.exit_code == 0 and path.is_file():
        assert result.exit_code == 0, output


def test_one_poisoned_file_never_hides_a_payload_beside_it(corpus, canary, runner, tmp_path):
    import shutil

    for name in (
        "key_superscript.safetensors",
        "key_5000_digits.safetensors",
        "huge_int_payload.pt",
        "index_nul_shard",
        "route_global_reduce.pt",
    ):
        src = corpus[name][1]
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    result = runner.invoke(main, ["scan", str(tmp_path), "--format", "json"])
    assert result.exit_code == 3, result.output
    status = {os.path.basename(f["path"]): f["status"] for f in json.loads(result.stdout)["files"]}
    assert status["route_global_reduce.pt"] == status["huge_int_payload.pt"] == "flagged"
    assert status["key_superscript.safetensors"] == "clean"


@pytest.mark.parametrize("name", [c.name for c in CASES if c.group == "terminal"])
def test_no_escape_sequence_reaches_the_terminal_json_stays_exact(name, corpus, runner):
    case, path = corpus[name]
    for args in (["inspect", str(path)], ["scan", str(path)]):
        result = runner.invoke(main, args)
        assert "\x1b" not in result.stdout + result.stderr
    result = runner.invoke(main, ["inspect", str(path), "--format", "json"])
    if result.stdout:
        doc = json.loads(result.stdout)
        assert any("\x1b" in t["key"] for t in doc["tensors"]) or "\x1b" in doc["source"]


@pytest.mark.parametrize("name", [c.name for c in CASES if c.group == "payload"])
def test_payload_files_name_the_global_in_json(name, corpus, canary, runner):
    case, path = corpus[name]
    result = runner.invoke(main, ["inspect", str(path), "--format", "json"])
    assert result.exit_code == 3 and not canary.exists()
    if result.stdout:  # a file that is read: the finding is in the manifest
        doc = json.loads(result.stdout)
        security = [f for f in doc["findings"] if f.get("severity") == "security"]
        assert any(case.message in " ".join(f["keys"]) + f["message"] for f in security), doc
        assert [t["key"] for t in doc["tensors"]] == list(case.tensors)
    else:
        assert case.message in result.stderr


def test_diff_and_check_exit_3_on_a_payload(corpus, canary, runner, tmp_path):
    _, path = corpus["lightning_payload.ckpt"]
    clean = tmp_path / "clean.pt"
    import torch

    torch.save({"w": torch.zeros(2, 3)}, clean)
    result = runner.invoke(main, ["diff", str(path), str(clean)])
    assert result.exit_code == 3, result.output
    assert not canary.exists()


def _script() -> str:
    script = Path(sys.executable).parent / "ckptdiff"
    return str(script) if script.exists() else shutil.which("ckptdiff") or "ckptdiff"


def test_installed_script_scans_the_whole_corpus(corpus, canary):
    root = next(iter(corpus.values()))[1].parent
    proc = subprocess.run(
        [_script(), "scan", str(root), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not canary.exists()
    doc = json.loads(proc.stdout)
    by_path = {Path(f["path"]).name: f for f in doc["files"]}
    for case in CASES:
        if case.group == "payload" and case.torch_applies:
            assert by_path[case.name]["status"] == "flagged", case.name
    assert doc["counts"]["flagged"] >= 25


def test_installed_script_inspects_a_payload(corpus, canary):
    case, path = corpus["route_dotted_name.pt"]
    proc = subprocess.run(
        [_script(), "inspect", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3 and not canary.exists()
    assert "builtins.print.__self__.exec" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_scan_of_a_clean_folder_exits_0(runner, tmp_path):
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    (tmp_path / "sub").mkdir()
    torch.save({"w": torch.zeros(2)}, tmp_path / "sub" / "b.bin")
    (tmp_path / "notes.txt").write_text("not weights")
    result = runner.invoke(main, ["scan", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("CLEAN") == 2 and "notes.txt" not in result.stdout
    assert "2 files: 0 flagged, 0 unreadable, 2 clean." in result.stdout


def test_scan_reports_unreadable_files_with_exit_2(runner, tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x10" + bytes(7) + b'{"a": 1')
    result = runner.invoke(main, ["scan", str(tmp_path), "--format", "json"])
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "ckptdiff.scan/1" and doc["counts"]["unreadable"] == 1


_FOLDER_CASES = [c.name for c in CASES if not c.torch_applies and c.name != "fifo.pt"]


def test_scan_verdicts_do_not_depend_on_where_the_scan_starts(corpus, canary):
    from ckptdiff._scan import scan_source

    root = next(iter(corpus.values()))[1].parent
    from_root = {r.path: r.to_dict() for r in scan_source(str(root))}
    assert not canary.exists()
    for name in _FOLDER_CASES:
        path = corpus[name][1]
        assert path.is_dir(), name
        alone = {r.path: r.to_dict() for r in scan_source(str(path))}
        assert alone, name
        below = {p: r for p, r in from_root.items() if p.startswith(f"{path}{os.sep}")}
        assert below == alone, name
    assert from_root[f"{root}/traversal_symlink/model-1.safetensors"]["status"] == "flagged"


def test_scan_judges_a_link_against_the_folder_it_sits_in(runner, tmp_path):
    from fixtures.hostile import _safetensors_bytes

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.safetensors").write_bytes(_safetensors_bytes())
    os.symlink("../b/model.safetensors", tmp_path / "a" / "model.safetensors")  # leaves a/
    os.symlink("model.safetensors", tmp_path / "b" / "same.safetensors")  # stays in b/
    for source in (tmp_path, tmp_path / "a"):
        result = runner.invoke(main, ["scan", str(source), "--format", "json"])
        assert result.exit_code == 3, result.output
        status = {f["path"]: f["status"] for f in json.loads(result.stdout)["files"]}
        assert status[f"{tmp_path}/a/model.safetensors"] == "flagged"
        if source == tmp_path:
            assert status[f"{tmp_path}/b/same.safetensors"] == "clean"
            assert status[f"{tmp_path}/b/model.safetensors"] == "clean"


def test_scan_allows_links_into_a_hub_cache_s_own_blobs(runner, tmp_path):
    from fixtures.hostile import _safetensors_bytes

    repo = tmp_path / "hub" / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_bytes(_safetensors_bytes())
    snapshot = repo / "snapshots" / "0123abcd"
    (snapshot / "sub").mkdir(parents=True)
    os.symlink("../../blobs/abc123", snapshot / "model.safetensors")
    os.symlink("../../../blobs/abc123", snapshot / "sub" / "model.safetensors")
    for source in (tmp_path / "hub", snapshot, snapshot / "sub"):
        result = runner.invoke(main, ["scan", str(source), "--format", "json"])
        assert result.exit_code == 0, result.output
        assert all(f["status"] == "clean" for f in json.loads(result.stdout)["files"])


def test_scan_help_names_exactly_the_formats_it_takes(runner):
    result = runner.invoke(main, ["scan", "--help"])
    assert "--format [table|json]" in result.stdout
    assert "ckptdiff.scan/1" in result.stdout
    result = runner.invoke(main, ["scan", ".", "--format", "markdown"])
    assert result.exit_code == 2 and "'markdown' is not one of 'table', 'json'" in result.output
