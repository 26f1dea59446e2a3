"""The test server speaks the hub's protocol: huggingface_hub's own functions work against it."""

from __future__ import annotations

import json
from pathlib import Path

from ckptdiff import read
from ckptdiff._audit import audit
from tests.readers.hub import repos
from tests.readers.hub.server import HubServer, SyntheticFile

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_huggingface_hub_functions_against_the_server(hub: HubServer, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url

    repo = hub.add_folder(MINILM, repos.minilm_dir())
    api = HfApi()
    info = api.model_info(MINILM, files_metadata=True)
    assert info.sha == repo.sha
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["model.safetensors"] == (repos.minilm_dir() / "model.safetensors").stat().st_size
    assert "1_Pooling/config.json" in sizes
    tree = {e.path for e in api.list_repo_tree(MINILM, recursive=True)}
    assert "1_Pooling/config.json" in tree
    meta = get_hf_file_metadata(hf_hub_url(MINILM, "model.safetensors"))
    assert meta.size == sizes["model.safetensors"] and meta.commit_hash == repo.sha
    path = hf_hub_download(MINILM, "config.json")
    assert Path(path).read_bytes() == (repos.minilm_dir() / "config.json").read_bytes()
    # huggingface_hub's own safetensors reader (a HEAD, then a range GET) agrees with ours
    st = api.get_safetensors_metadata(MINILM)
    ours = read(f"hf://{MINILM}")
    theirs = st.files_metadata["model.safetensors"].tensors
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {
        k: s.shape for k, s in ours.tensors.items()
    }


def test_synthetic_files_make_zeros_only_for_what_is_asked() -> None:
    f = SyntheticFile(b"head", 10**12)
    assert f.read(0, 6) == b"head\0\0"
    assert f.read(10**12 - 3, 10**12 + 5) == b"\0\0\0"


def test_synthetic_sharded_repo_costs_headers_only(hub: HubServer) -> None:
    files, weight_bytes = repos.synthetic_llama(
        8, hidden=256, layers=8, inter=512, vocab=1000, heads=8, kv=4
    )
    hub.add_repo("bench/small-llama", files)
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    result = audit("hf://bench/small-llama")
    assert result.ok, result.all_findings
    assert result.report is not None and len(result.report.matched) == 8 * 9 + 3
    for shard in shards:
        assert hub.requests("bench/small-llama", shard) == 1
    # repo info, then one bounded GET for the index, config.json and tokenizer.json
    assert hub.requests("bench/small-llama") == len(shards) + 1 + 3
    index = json.loads(files["model.safetensors.index.json"])  # type: ignore[arg-type]
    assert index["metadata"]["total_size"] == weight_bytes == result.weight_bytes
