"""The errors users meet reading the hub: each one line that says what to do, and exit 2."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from ckptdiff import read
from ckptdiff.cli import main
from ckptdiff.readers.hub import read_hub
from ckptdiff.readers.hub import transport as remote
from ckptdiff.readers.hub.errors import (
    HubAccessError,
    HubNotFoundError,
    HubOfflineError,
    HubUnavailableError,
    RangeNotSupportedError,
)
from tests.readers.hub import repos
from tests.readers.hub.conftest import configure_hub, set_offline, set_token
from tests.readers.hub.server import HubServer

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def bert_repo(hub: HubServer, tmp_path: Path):
    def add(name: str = "t/bert", **knobs):
        folder = tmp_path / name.replace("/", "_")
        if not folder.exists():
            repos.bert(folder)
        return hub.add_folder(name, folder, **knobs), folder

    return add


def _one_line_exit_2(runner, args: list[str], pattern: str) -> str:
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_gated_repo_without_a_token(hub: HubServer, bert_repo, runner) -> None:
    bert_repo("t/gated", gated=True, tokens={"hf_good"})
    with pytest.raises(HubAccessError) as info:
        read("hf://t/gated")
    message = str(info.value)
    assert "gated repo" in message and "HTTP 401" in message
    assert f"Accept its terms on {hub.url}/t/gated and set HF_TOKEN" in message
    assert "no token was sent" in message
    _one_line_exit_2(runner, ["inspect", "hf://t/gated"], r"gated repo.*HF_TOKEN")


def test_gated_repo_with_a_token_without_access(
    hub: HubServer, bert_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    bert_repo("t/gated", gated=True, tokens={"hf_good"})
    set_token(monkeypatch, "hf_other")
    with pytest.raises(HubAccessError, match=r"HTTP 403\): your token has not been granted"):
        read("hf://t/gated")


def test_gated_repo_with_access(hub: HubServer, bert_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder = bert_repo("t/gated", gated=True, tokens={"hf_good"})
    set_token(monkeypatch, "hf_good")
    assert read("hf://t/gated").tensors == read(str(folder)).tensors


def test_private_repo_looks_missing_without_a_token(hub: HubServer, bert_repo, runner) -> None:
    bert_repo("t/private", private=True, tokens={"hf_good"})
    with pytest.raises(
        HubNotFoundError,
        match=re.escape(
            "there is no repo t/private, or it is private and no token was sent (HF_TOKEN is unset "
            "and you are not logged in) (HTTP 401)."
        ),
    ):
        read("hf://t/private")


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        ("hf://t/nothing", r"there is no repo t/nothing.*HTTP 404"),
        ("hf://t/bert@v9", r"t/bert has no such revision \(HTTP 404\)"),
        ("hf://t/bert/txt", r"has no file or folder 'txt'"),
        ("hf://t/bert/model.safetensor", r"did you mean: model\.safetensors"),
        ("{url}/t/bert/blob/main/missing.bin", r"has no file 'missing\.bin'"),
    ],
)
def test_not_found(hub: HubServer, bert_repo, runner, source: str, pattern: str) -> None:
    bert_repo()
    source = source.format(url=hub.url)
    with pytest.raises(HubNotFoundError, match=pattern):
        read(source)
    _one_line_exit_2(runner, ["inspect", source], pattern)


def test_server_errors_are_retried(hub: HubServer, bert_repo) -> None:
    repo, folder = bert_repo(fail=2, fail_on="range")
    assert read("hf://t/bert").tensors == read(str(folder)).tensors
    assert hub.requests("t/bert", "model.safetensors") == 3


def test_api_errors_are_retried(hub: HubServer, bert_repo) -> None:
    bert_repo(fail=1, fail_on="api")
    m = read("hf://t/bert")
    assert hub.requests("t/bert", kind="api") == 2
    assert m.metadata["transfer"]["requests"] == 3


def test_server_errors_give_up_after_bounded_retries(hub: HubServer, bert_repo, runner) -> None:
    bert_repo(fail=100, fail_on="range")
    with pytest.raises(HubUnavailableError, match=r"HTTP 500 after 4 attempts.*try again later"):
        read("hf://t/bert")
    assert hub.requests("t/bert", "model.safetensors") == 1 + remote.MAX_RETRIES
    _one_line_exit_2(runner, ["inspect", "hf://t/bert"], r"HTTP 500 after 4 attempts")


def test_timeouts_are_retried_then_reported(
    hub: HubServer, bert_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its own repo: the server's delayed answers arrive after the test, counted there
    bert_repo("t/slow", delay=0.5, fail_on="range")
    monkeypatch.setattr(remote, "TIMEOUT", 0.1)
    monkeypatch.setattr(remote, "MAX_RETRIES", 1)
    with pytest.raises(HubUnavailableError, match=r"no answer within 0\.1 s after 2 attempts"):
        read("hf://t/slow")


def test_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configure_hub(monkeypatch, f"http://127.0.0.1:{port}", tmp_path / "cache", tmp_path / "tok")
    monkeypatch.setattr(remote, "MAX_RETRIES", 1)
    with pytest.raises(
        HubUnavailableError, match=r"cannot reach http://127\.0\.0\.1.*HF_HUB_OFFLINE=1"
    ):
        read("hf://t/bert")


def test_server_ignoring_range_is_refused_early(hub: HubServer, runner) -> None:
    hub.add_folder(MINILM, repos.minilm_dir(), ignore_range=True)
    size = (repos.minilm_dir() / "model.safetensors").stat().st_size
    with pytest.raises(RangeNotSupportedError, match=r"ignored the range.*--allow-download"):
        read(f"hf://{MINILM}")
    # the client read none of the body and dropped the connection: the server could not send it
    assert hub.bytes(MINILM, "model.safetensors") < size / 4
    _one_line_exit_2(runner, ["inspect", f"hf://{MINILM}"], r"ignored the range request")


def test_server_ignoring_range_with_allow_download(hub: HubServer, bert_repo) -> None:
    _, folder = bert_repo(ignore_range=True)
    m = read_hub("hf://t/bert", allow_download=True)
    assert m.tensors == read(str(folder)).tensors
    assert hub.bytes("t/bert", "model.safetensors") >= (folder / "model.safetensors").stat().st_size


def test_allow_download_from_the_environment(
    hub: HubServer, bert_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, folder = bert_repo(ignore_range=True)
    monkeypatch.setenv("CKPTDIFF_ALLOW_DOWNLOAD", "1")
    assert read("hf://t/bert").tensors == read(str(folder)).tensors


def test_offline_with_an_empty_cache(
    hub: HubServer, bert_repo, runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    bert_repo()
    set_offline(monkeypatch)
    with pytest.raises(
        HubOfflineError,
        match=r"HF_HUB_OFFLINE is set and the local cache .* "
        r"holds nothing of t/bert@main",
    ):
        read("hf://t/bert")
    assert hub.requests("t/bert") == 0
    _one_line_exit_2(runner, ["inspect", "hf://t/bert"], r"HF_HUB_OFFLINE is set")


def test_offline_with_only_small_files_cached(
    hub: HubServer, bert_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import hf_hub_download

    bert_repo()
    hf_hub_download("t/bert", "config.json")
    set_offline(monkeypatch)
    with pytest.raises(
        HubOfflineError,
        match=r"cached snapshot of t/bert@\w+ holds no weights "
        r"\(only config.json\)",
    ):
        read("hf://t/bert")


def test_offline_reads_the_cached_snapshot(
    hub: HubServer, bert_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import snapshot_download

    _, folder = bert_repo()
    snapshot_download("t/bert")
    hub.reset()
    set_offline(monkeypatch)
    m = read("hf://t/bert")
    assert m.tensors == read(str(folder)).tensors
    assert hub.requests() == 0
    assert m.metadata["transfer"]["requests"] == 0
