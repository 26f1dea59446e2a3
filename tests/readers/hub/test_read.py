"""Reading hub sources through huggingface_hub against the local server: the specs equal the
local reader's on the same files, and the server's counters prove how little was fetched."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from ckptdiff import read
from ckptdiff.readers import hub as hub_reader
from ckptdiff.readers.hub import parse_hub_source
from ckptdiff.readers.hub.transport import TOTAL
from tests.readers.hub import repos
from tests.readers.hub.server import HubServer

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _without_transfer(findings):
    return [f for f in findings if f.kind != "hub_transfer"]


@pytest.fixture
def minilm(hub: HubServer) -> str:
    hub.add_folder(MINILM, repos.minilm_dir())
    return MINILM


def test_minilm_safetensors_by_one_range_request(hub: HubServer, minilm: str) -> None:
    m = read(f"hf://{minilm}")
    local = read(str(repos.minilm_dir()))
    assert m.tensors == local.tensors
    assert m.aliases == local.aliases
    assert {k: v for k, v in m.metadata.items() if k not in ("transfer", "hub")} == local.metadata
    assert m.format == "safetensors"
    # one model_info call, one range request: < 0.1% of the 90 MB file
    size = (repos.minilm_dir() / "model.safetensors").stat().st_size
    assert hub.requests(minilm) == 2
    assert hub.requests(minilm, "model.safetensors") == 1
    assert hub.bytes(minilm, "model.safetensors") < 0.001 * size
    assert hub.bytes(minilm) < 0.001 * size
    # the reader counts what the server counts
    assert m.metadata["transfer"]["requests"] == hub.requests(minilm)
    assert m.metadata["transfer"]["range_bytes"] == hub.bytes(minilm, "model.safetensors")
    assert m.metadata["hub"]["commit"] == hub.repos[minilm].sha
    finding = next(f for f in m.findings if f.kind == "hub_transfer")
    assert finding.severity == "info" and "2 requests" in finding.message


def test_long_header_takes_a_second_request(hub: HubServer, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    # 3,000 tensors: a header of ~200 kB, longer than the first 64 KiB read
    tensors = {f"blocks.{i}.weight": torch.zeros(2) for i in range(3000)}
    save_file(tensors, tmp_path / "model.safetensors")
    hub.add_folder("t/long", tmp_path)
    m = read("hf://t/long")
    assert m.tensors == read(str(tmp_path)).tensors
    assert hub.requests("t/long", "model.safetensors") == 2
    header = 8 + int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    assert hub.bytes("t/long", "model.safetensors") == header


def test_sharded_repo_costs_one_request_per_shard(hub: HubServer, tmp_path: Path) -> None:
    folder = repos.sharded(tmp_path / "sharded", max_shard_size=20_000)
    hub.add_folder("t/sharded", folder)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 4
    m = read("hf://t/sharded")
    local = read(str(folder))
    assert m.tensors == local.tensors
    assert m.format == local.format == "safetensors-sharded"
    assert _without_transfer(m.findings) == list(local.findings) == []
    for shard in shards:
        assert hub.requests("t/sharded", shard) <= 2
    # model_info, the index (HEAD + GET), one range per shard
    assert hub.requests("t/sharded") <= 1 + 2 + 2 * len(shards)
    assert hub.requests("t/sharded") == m.metadata["transfer"]["requests"]


def test_sharded_index_defects_are_the_local_readers_findings(
    hub: HubServer, tmp_path: Path
) -> None:
    folder = repos.sharded(tmp_path / "broken", max_shard_size=20_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    gone = sorted(set(index["weight_map"].values()))[-1]
    (folder / gone).unlink()
    index["weight_map"]["not.a.tensor"] = sorted(set(index["weight_map"].values()))[0]
    index["metadata"]["total_size"] += 4
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    hub.add_folder("t/broken", folder)
    m = read("hf://t/broken")
    local = read(str(folder))
    assert m.tensors == local.tensors
    kinds = [f.kind for f in _without_transfer(m.findings)]
    assert kinds == [f.kind for f in local.findings]
    assert "shard_missing" in kinds and "index_key_absent" in kinds
    assert hub.requests("t/broken", gone) == 0


def test_torch_bin_reads_only_data_pkl_and_the_directory(hub: HubServer, tmp_path: Path) -> None:
    folder = repos.torch_bin(tmp_path / "bin")
    hub.add_folder("t/bin", folder)
    m = read("hf://t/bin")
    local = read(str(folder))
    assert m.tensors == local.tensors
    assert m.format == "torch-zip"
    path = folder / "pytorch_model.bin"
    with zipfile.ZipFile(path) as z:
        infos = sorted(z.infolist(), key=lambda i: i.header_offset)
    ends = [i.header_offset for i in infos[1:]] + [None]
    storages = [
        (i.header_offset, end) for i, end in zip(infos, ends, strict=True) if "/data/" in i.filename
    ]
    # no requested range touches a storage record
    for hit in hub.hits:
        if hit.path != "pytorch_model.bin":
            continue
        first, _, last = hit.range.removeprefix("bytes=").partition("-")
        start, stop = int(first), int(last) + 1
        for s, e in storages:
            assert stop <= s or start >= e, (hit.range, s, e)
    assert hub.requests("t/bin", "pytorch_model.bin") <= 3
    pkl = next(i for i in infos if i.filename.endswith("data.pkl"))
    assert hub.bytes("t/bin", "pytorch_model.bin") < pkl.compress_size + 8192


def test_legacy_pickle_needs_allow_download(hub: HubServer, tmp_path: Path) -> None:
    import torch

    from ckptdiff.errors import UnsupportedFormatError

    folder = tmp_path / "legacy"
    folder.mkdir()
    torch.save(
        {"w": torch.zeros(3)}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False
    )
    hub.add_folder("t/legacy", folder)
    with pytest.raises(UnsupportedFormatError, match="legacy torch pickle.*--allow-download"):
        read("hf://t/legacy")
    m = hub_reader.read_hub("hf://t/legacy", allow_download=True)
    assert m.tensors == read(str(folder)).tensors


@pytest.mark.parametrize(
    "form",
    [
        "hf://t/sub@main/text",
        "hf://t/sub/text",
        "hf://t/sub/text/model.safetensors",
        "{url}/t/sub/tree/main/text",
        "{url}/t/sub/blob/main/text/model.safetensors",
        "{url}/t/sub/resolve/main/text/model.safetensors?download=true",
        "hf://t/sub@{sha}/text",
    ],
)
def test_source_forms(hub: HubServer, tmp_path: Path, form: str) -> None:
    repos.bert(tmp_path / "repo" / "text")
    (tmp_path / "repo" / "README.md").write_text("# two folders\n")
    repo = hub.add_folder("t/sub", tmp_path / "repo")
    source = form.format(url=hub.url, sha=repo.sha)
    m = read(source)
    assert m.source == source
    assert m.tensors == read(str(tmp_path / "repo" / "text")).tensors


def test_parse_hub_source_forms() -> None:
    assert parse_hub_source("hf://org/repo@refs/pr/3/vae").revision == "refs/pr/3"
    assert parse_hub_source("hf://org/repo@refs/pr/3/vae").path == "vae"
    assert parse_hub_source("https://huggingface.co/org/repo/tree/refs%2Fpr%2F1").revision == (
        "refs/pr/1"
    )
    src = parse_hub_source("https://huggingface.co/org/repo/blob/main/a/b.bin")
    assert (src.repo_id, src.revision, src.path, src.kind) == (
        "org/repo",
        "main",
        "a/b.bin",
        "file",
    )
    assert parse_hub_source("hf://models/org/repo").repo_id == "org/repo"


@pytest.mark.parametrize(
    "bad",
    [
        "hf://onlyname",
        "hf://datasets/org/data",
        "https://huggingface.co/org/repo/commits/main",
        "https://huggingface.co/org/repo/blob/main",
    ],
)
def test_malformed_sources_are_usage_errors(bad: str) -> None:
    from ckptdiff.errors import UsageError

    with pytest.raises(UsageError, match=r"Cannot read .*hub source"):
        parse_hub_source(bad)


def test_cached_file_is_read_from_the_cache(hub: HubServer, minilm: str) -> None:
    from huggingface_hub import hf_hub_download

    hf_hub_download(minilm, "model.safetensors")
    hub.reset()
    m = read(f"hf://{minilm}")
    assert m.tensors == read(str(repos.minilm_dir())).tensors
    assert hub.requests(minilm, "model.safetensors") == 0
    assert hub.requests(minilm) == 1  # model_info resolves the revision
    assert m.metadata["transfer"]["cached_files"] == 1


def test_diff_hub_against_local(hub: HubServer, minilm: str, runner) -> None:
    from ckptdiff.cli import main

    result = runner.invoke(main, ["diff", f"hf://{minilm}", str(repos.minilm_dir())])
    assert result.exit_code == 0, result.output
    assert "compatible" in result.output


def test_inspect_json_carries_the_transfer(hub: HubServer, minilm: str, runner) -> None:
    from ckptdiff.cli import main

    result = runner.invoke(main, ["inspect", f"hf://{minilm}", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metadata"]["transfer"]["requests"] == 2
    assert data["metadata"]["transfer"]["bytes"] == hub.bytes(minilm, "model.safetensors")
    assert len(data["tensors"]) == 104


def test_check_hub_weights_against_the_repo_config(hub: HubServer, minilm: str, runner) -> None:
    from ckptdiff.cli import main

    config = repos.minilm_dir() / "config.json"
    result = runner.invoke(main, ["check", f"hf://{minilm}", "--model", f"hf-config:{config}"])
    assert result.exit_code == 0, result.output


def test_process_total_counts_every_repo(hub: HubServer, minilm: str) -> None:
    before = TOTAL.snapshot()
    read(f"hf://{minilm}")
    after = TOTAL.snapshot()
    assert after[0] - before[0] == hub.requests(minilm)
