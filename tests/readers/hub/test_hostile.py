"""A hostile hub endpoint: names that would become paths, bodies with no end, slow drips.

Each case is served by the test server with one hostile knob and read through every command
that meets it (``inspect``, ``scan``, ``audit``); the exit code is asserted, and nothing is ever
written outside the cache.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import pytest

from ckptdiff.cli import main
from ckptdiff.readers.hub import transport as remote
from tests.readers.hub import repos
from tests.readers.hub.server import HubServer, SyntheticFile


def _files_outside(root: Path, cache: Path) -> list[Path]:
    return [
        p
        for p in root.rglob("*")
        if cache not in p.parents
        and p != cache
        and p.name not in ("bert", "hf-token")
        and "t_" not in str(p)
    ]


@pytest.fixture
def sharded_repo(hub: HubServer, tmp_path: Path):
    folder = repos.sharded(tmp_path / "t_sharded")

    def add(name: str, **hostile):
        return hub.add_folder(name, folder, hostile=hostile)

    return add


_ESCAPES = [
    "../../../../escaped",
    "/tmp/escaped-abs",
    "..",
    "main/../../../x",
    "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
    "e" * 39,
]


@pytest.mark.parametrize("sha", _ESCAPES)
@pytest.mark.parametrize("command", ["inspect", "scan", "audit"])
def test_a_hostile_model_info_sha_is_refused(hub, sharded_repo, runner, tmp_path, sha, command):
    sharded_repo("evil/sha", sha=sha)
    result = runner.invoke(main, [command, "hf://evil/sha@main"])
    assert result.exit_code == 3, result.output
    assert "not a 40-hex-digit commit id" in result.output
    assert not list(tmp_path.parent.glob("**/escaped*")), "a write outside the cache"
    assert not (tmp_path / "hf-cache" / "models--evil--sha" / "refs").exists()


@pytest.mark.parametrize(
    "knob, value, message",
    [
        ("commit", "../../../../escaped", "not a 40-hex-digit commit id"),
        ("commit", "0" * 40, "not the repo's commit"),
        ("etag", '"../../../../escaped"', "not a plain content id"),
        ("etag", '"a/b"', "not a plain content id"),
    ],
)
@pytest.mark.parametrize("command", ["inspect", "audit"])
def test_hostile_file_headers_never_name_a_path(
    hub, sharded_repo, runner, tmp_path, knob, value, message, command
):
    sharded_repo("evil/headers", **{knob: value})
    result = runner.invoke(main, [command, "hf://evil/headers"])
    assert result.exit_code == 3, result.output
    assert message in result.output
    assert not list(tmp_path.parent.glob("**/escaped*")), "a write outside the cache"


@pytest.mark.parametrize(
    "name",
    [
        "../escaped.safetensors",
        "/abs/escaped.safetensors",
        "a/../../escaped.json",
        "a\\..\\escaped",
        "x\x1b[2Ky.json",
    ],
)
def test_listed_names_that_leave_the_repo_are_refused(hub, sharded_repo, runner, name):
    sharded_repo("evil/names", names=[name])
    for command in ("inspect", "scan", "audit"):
        result = runner.invoke(main, [command, "hf://evil/names"])
        assert result.exit_code == 3, (command, result.output)
        assert "leaves the repo or hides characters" in result.output
        assert "\x1b" not in result.output


@pytest.mark.parametrize("revision", ["../../../../escaped", "a..b", "x\x1b[2K", "@"])
def test_a_hostile_revision_is_a_usage_error(hub, sharded_repo, runner, revision):
    sharded_repo("t/rev")
    result = runner.invoke(main, ["inspect", f"hf://t/rev@{revision}"])
    assert result.exit_code == 2, result.output
    assert "is not a valid revision" in result.stderr and "\x1b" not in result.stderr


def test_an_endless_206_body_is_cut_at_the_range_asked_for(hub, tmp_path, runner):
    folder = repos.bert(tmp_path / "t_endless")
    hub.add_folder("evil/endless", folder, hostile={"endless": ["model.safetensors"]})
    start = time.monotonic()
    result = runner.invoke(main, ["inspect", "hf://evil/endless"])
    assert result.exit_code == 2, result.output
    assert "sent more than the" in result.stderr
    assert time.monotonic() - start < 30
    assert hub.bytes("evil/endless", "model.safetensors") < 64 << 20


def test_an_endless_index_json_is_refused_at_the_small_file_cap(
    hub, sharded_repo, runner, monkeypatch
):
    repo = sharded_repo("evil/endless-index", endless=["model.safetensors.index.json"])
    listed = repo.files["model.safetensors.index.json"].size
    for command in ("inspect", "audit"):
        result = runner.invoke(main, [command, "hf://evil/endless-index"])
        assert result.exit_code == 2, result.output
        assert "sent more than the" in result.output
    assert hub.bytes("evil/endless-index") < 16 * listed + (8 << 20)
    monkeypatch.setenv("CKPTDIFF_MAX_HUB_FILE", "100")
    result = runner.invoke(main, ["inspect", "hf://evil/endless-index"])
    assert result.exit_code == 2 and "CKPTDIFF_MAX_HUB_FILE raises it" in result.stderr


def test_a_slow_drip_meets_the_request_deadline(hub, tmp_path, runner, monkeypatch):
    monkeypatch.setenv("CKPTDIFF_HUB_DEADLINE", "1.5")
    monkeypatch.setattr(remote, "MAX_RETRIES", 0)
    folder = repos.bert(tmp_path / "t_drip")
    hub.add_folder("evil/drip", folder, hostile={"drip": 0.3})
    start = time.monotonic()
    result = runner.invoke(main, ["inspect", "hf://evil/drip"])
    assert result.exit_code == 2, result.output
    assert "request deadline" in result.stderr
    assert time.monotonic() - start < 20


def test_a_zip_entry_far_after_data_pkl_is_not_read_to(hub, tmp_path, runner):
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2, 3)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src:
        entries = [(i.filename, src.read(i)) for i in src.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
            if name.endswith("data.pkl"):
                z.writestr("archive/padding", bytes(4 << 20))  # stands for 2.5 GB of storage
    raw = out.getvalue()
    hub.add_repo("evil/far", {"pytorch_model.bin": SyntheticFile(raw, len(raw))})
    result = runner.invoke(main, ["inspect", "hf://evil/far"])
    assert result.exit_code == 0, result.output
    assert hub.bytes("evil/far", "pytorch_model.bin") < 256 << 10


def test_nothing_lands_outside_the_cache_after_the_hostile_cases(
    hub, sharded_repo, runner, tmp_path
):
    sharded_repo("evil/all", sha="../../../../escaped")
    runner.invoke(main, ["inspect", "hf://evil/all"])
    sharded_repo("evil/all2", etag='"../../../../escaped"')
    runner.invoke(main, ["inspect", "hf://evil/all2"])
    assert not [p for p in tmp_path.parent.rglob("escaped*")]
    assert all(
        str(p).startswith(str(tmp_path))
        for p in tmp_path.rglob("*")
        if os.path.islink(p) and not os.path.realpath(p).startswith(str(tmp_path))
    )
