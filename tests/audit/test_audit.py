"""``ckptdiff audit``: a repo's weights against its own config, and against themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptdiff._audit import audit, audit_many
from ckptdiff._audit.rules import dtype_findings, format_findings
from ckptdiff.cli import main
from ckptdiff.hf_files import tokenizer_size
from ckptdiff.render.audit import render_audit
from ckptdiff.types import Manifest, TensorSpec
from tests.readers.hub import repos
from tests.readers.hub.server import HubServer

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def kinds(result) -> list[str]:
    return [f.kind for f in result.all_findings]


@pytest.fixture
def minilm(hub: HubServer) -> str:
    hub.add_folder(MINILM, repos.minilm_dir())
    return MINILM


def test_minilm_over_the_hub_is_consistent(hub: HubServer, minilm: str) -> None:
    result = audit(f"hf://{minilm}")
    assert result.ok and result.exit_code == 0, render_audit([result])
    assert result.report is not None and result.report.ok
    assert result.weights == "model.safetensors"
    assert result.commit == hub.repos[minilm].sha
    # model_info, one range for the header, config.json and tokenizer.json (one bounded GET each)
    assert hub.requests(minilm) == result.transfer["requests"] == 4
    assert hub.requests(minilm, "model.safetensors") == 1
    size = (repos.minilm_dir() / "model.safetensors").stat().st_size
    assert result.transfer["range_bytes"] < 0.001 * size
    assert hub.bytes(minilm, "model.safetensors") == result.transfer["range_bytes"]
    assert result.weight_bytes == size - 8 - 11408  # the data region: all but the header


def test_audit_json_follows_the_report_contract(hub: HubServer, minilm: str) -> None:
    data = json.loads(render_audit([audit(f"hf://{minilm}")], "json"))
    assert data["schema"] == "ckptdiff.report/2"
    for field in (
        "ok",
        "missing",
        "unexpected",
        "mismatched",
        "dtype_changes",
        "coverage",
        "findings",
        "suggestions",
        "transfer",
        "source",
        "audit",
    ):
        assert field in data
    assert data["ok"] is True
    assert set(data["transfer"]) >= {"requests", "bytes"}
    assert data["audit"]["weights"] == "model.safetensors"


def test_local_folder(minilm_dir: Path) -> None:
    result = audit(str(minilm_dir))
    assert result.ok, render_audit([result])
    assert not result.remote and result.transfer["requests"] == 0
    assert "local files" in render_audit([result])


def test_sharded_repo_index_defects(hub: HubServer, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = repos.sharded(tmp_path / "s", max_shard_size=20_000)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    # a key stored twice: in its own shard and in an extra one the index does not list it for
    key = next(iter(index["weight_map"]))
    save_file(
        {key: torch.zeros(1), "extra.weight": torch.zeros(2)}, folder / "model-extra.safetensors"
    )
    index["weight_map"]["extra.weight"] = "model-extra.safetensors"
    (folder / shards[-1]).unlink()  # a shard the index references is absent
    index["metadata"]["total_size"] = 1
    index_path.write_text(json.dumps(index))
    hub.add_folder("t/s", folder)
    result = audit("hf://t/s")
    assert result.exit_code == 1
    assert {"shard_missing", "duplicate_key"} <= set(kinds(result))
    assert not result.report.ok  # the lost shard's tensors are missing


def test_total_size_unlisted_and_unreferenced(tmp_path: Path) -> None:
    folder = repos.sharded(tmp_path / "s", max_shard_size=20_000)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["metadata"]["total_size"] += 100
    by_shard: dict[str, list[str]] = {}
    for k, v in index["weight_map"].items():
        by_shard.setdefault(v, []).append(k)
    several = next(keys for keys in by_shard.values() if len(keys) > 1)
    del index["weight_map"][several[0]]  # in its shard, not in the index
    alone = next(s for s, keys in by_shard.items() if len(keys) == 1)
    del index["weight_map"][by_shard[alone][0]]  # a whole shard the index no longer names
    index_path.write_text(json.dumps(index))
    result = audit(str(folder))
    assert {"total_size", "index_key_unlisted", "unreferenced_weights"} <= set(kinds(result))
    finding = next(f for f in result.all_findings if f.kind == "unreferenced_weights")
    assert finding.keys == (alone,)
    assert result.exit_code == 1


def test_config_dtype_against_stored_dtypes(hub: HubServer, tmp_path: Path) -> None:
    repos.bert(tmp_path / "r", config_dtype="float16")  # weights are float32
    hub.add_folder("t/dtype", tmp_path / "r")
    result = audit("hf://t/dtype")
    finding = next(f for f in result.all_findings if f.kind == "config_dtype")
    assert finding.severity == "warning"
    assert "torch_dtype 'float16'" in finding.message and "stored as float32" in finding.message
    assert result.exit_code == 1


def test_dtype_field_of_transformers_5_matches(tmp_path: Path) -> None:
    import torch

    repos.bert(tmp_path / "r", dtype=torch.float16)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"
    result = audit(str(tmp_path / "r"))
    assert "config_dtype" not in kinds(result)


def test_dtype_findings_mixed_is_info() -> None:
    m = Manifest(
        "x",
        "safetensors",
        {
            "w": TensorSpec("w", (100,), "bfloat16"),
            "norm": TensorSpec("norm", (4,), "float32"),
            "ids": TensorSpec("ids", (4,), "int64"),
        },
    )
    (f,) = dtype_findings({"dtype": "bfloat16"}, m)
    assert (f.kind, f.severity) == ("mixed_dtypes", "info")
    assert dtype_findings({"torch_dtype": "auto"}, m) == []
    (g,) = dtype_findings({"torch_dtype": "float32"}, m)
    assert g.kind == "config_dtype" and g.data["stored"]["bfloat16"]["parameters"] == 100


def test_tokenizer_larger_than_vocab_size(hub: HubServer, tmp_path: Path) -> None:
    repos.bert(tmp_path / "r", tokenizer=99, added=3)  # ids 0..101 for 99 rows
    hub.add_folder("t/tok", tmp_path / "r")
    result = audit("hf://t/tok")
    finding = next(f for f in result.all_findings if f.kind == "tokenizer_vocab_size")
    assert finding.severity == "error"
    assert "102 token ids (99 in the vocabulary + 3 added)" in finding.message
    assert "vocab_size is 99" in finding.message
    assert result.exit_code == 1


def test_tokenizer_size_counts_added_tokens_and_unigram() -> None:
    assert tokenizer_size(
        {"model": {"vocab": [["a", 0.0], ["b", -1.0]]}, "added_tokens": [{"id": 0}, {"id": 5}]}
    ) == (6, 2, 1)
    assert tokenizer_size({}) == (0, 0, 0)


def test_both_formats_disagreeing(hub: HubServer, tmp_path: Path) -> None:
    repos.both_formats(tmp_path / "r", disagree=True)
    hub.add_folder("t/both", tmp_path / "r")
    result = audit("hf://t/both")
    finding = next(f for f in result.all_findings if f.kind == "formats_disagree")
    assert "1 key(s) only in model.safetensors (e.g. 'pooler.dense.bias')" in finding.message
    assert result.exit_code == 1
    # the .bin was read by ranges too: its zip directory and data.pkl, not its storages
    size = (tmp_path / "r" / "pytorch_model.bin").stat().st_size
    assert 0 < hub.bytes("t/both", "pytorch_model.bin") < size / 4


def test_both_formats_agreeing(tmp_path: Path) -> None:
    repos.both_formats(tmp_path / "r", disagree=False)
    result = audit(str(tmp_path / "r"))
    assert "formats_disagree" not in kinds(result)
    assert result.ok, render_audit([result])


def test_format_findings_tolerate_tied_partners() -> None:
    a = Manifest("a", "safetensors", {"emb": TensorSpec("emb", (4, 2), "float32")})
    b = Manifest(
        "b",
        "torch-zip",
        {
            "emb": TensorSpec("emb", (4, 2), "float32"),
            "head": TensorSpec("head", (4, 2), "float32"),
        },
    )
    assert format_findings("a", a, "b", b, [("emb", "head")]) == []
    (f,) = format_findings("a", a, "b", b)
    assert f.kind == "formats_disagree"


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    repos.bert(tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    config["intermediate_size"] = 64
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    result = audit(str(tmp_path / "r"))
    assert result.report is not None and result.report.mismatched
    assert result.exit_code == 1
    assert "does not load cleanly" in render_audit([result])


def test_config_that_does_not_build_still_audits_the_rest(tmp_path: Path) -> None:
    repos.bert(tmp_path / "r", tokenizer=99, added=2)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    config["model_type"] = "no-such-model"
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    result = audit(str(tmp_path / "r"))
    assert result.report is None
    assert {"config_not_built", "tokenizer_vocab_size"} <= set(kinds(result))
    assert result.exit_code == 1


def test_no_config(tmp_path: Path) -> None:
    repos.bert(tmp_path / "r", tokenizer=None)
    (tmp_path / "r" / "config.json").unlink()
    result = audit(str(tmp_path / "r"))
    assert kinds(result) == ["no_config"] and result.exit_code == 1
    (tmp_path / "r" / "adapter_config.json").write_text("{}")
    result = audit(str(tmp_path / "r"))
    assert result.all_findings[0].severity == "info" and result.exit_code == 0


def test_audit_many_keeps_order_and_isolates_errors(
    hub: HubServer, minilm: str, tmp_path: Path
) -> None:
    repos.bert(tmp_path / "r")
    hub.add_folder("t/bert", tmp_path / "r")
    seen: list[str] = []
    sources = ["hf://t/missing", f"hf://{minilm}", "hf://t/bert"]
    results = audit_many(sources, jobs=3, on_result=lambda r: seen.append(r.source))
    assert [r.source for r in results] == sources
    assert sorted(seen) == sorted(sources)
    assert results[0].exit_code == 2 and "there is no repo t/missing" in results[0].error
    assert results[1].ok and results[2].ok


# --- the command -------------------------------------------------------------------------------


def test_cli_one_repo(hub: HubServer, minilm: str, runner) -> None:
    result = runner.invoke(main, ["audit", f"hf://{minilm}", "--stats"])
    assert result.exit_code == 0, result.output
    assert "Verdict: consistent." in result.stdout
    assert "4 requests" in result.stdout
    assert "hub transfer: 4 requests" in result.stderr


def test_cli_jsonl_several_repos(hub: HubServer, minilm: str, runner, tmp_path: Path) -> None:
    repos.bert(tmp_path / "r", config_dtype="float16")
    hub.add_folder("t/dtype", tmp_path / "r")
    result = runner.invoke(main, ["audit", f"hf://{minilm}", "hf://t/dtype", "--format", "jsonl"])
    assert result.exit_code == 1, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert {d["source"]: d["ok"] for d in lines} == {f"hf://{minilm}": True, "hf://t/dtype": False}
    assert all(d["schema"] == "ckptdiff.report/2" and "transfer" in d for d in lines)


def test_cli_from_file_with_an_error(hub: HubServer, minilm: str, runner, tmp_path: Path) -> None:
    listing = tmp_path / "repos.txt"
    listing.write_text(f"# repos to audit\nhf://{minilm}\n\nhf://t/missing\n")
    result = runner.invoke(main, ["audit", "--from", str(listing)])
    assert result.exit_code == 2, result.output
    assert "2 repos: 1 consistent, 1 error." in result.stdout
    assert "there is no repo t/missing" in result.stderr


def test_cli_json_several_is_a_list(hub: HubServer, minilm: str, runner, minilm_dir) -> None:
    result = runner.invoke(main, ["audit", f"hf://{minilm}", str(minilm_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["ok"] for d in data] == [True, True]


def test_cli_markdown(hub: HubServer, minilm: str, runner) -> None:
    result = runner.invoke(main, ["audit", f"hf://{minilm}", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"## audit: hf://{minilm}")


def test_cli_error_is_one_line(hub: HubServer, runner) -> None:
    result = runner.invoke(main, ["audit", "hf://t/missing"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "there is no repo t/missing" in result.stderr


def test_cli_no_sources(runner) -> None:
    result = runner.invoke(main, ["audit"])
    assert result.exit_code == 2
    assert "no repos given" in result.stderr


def test_cli_progress_bar_goes_to_stderr(hub: HubServer, minilm: str, runner, minilm_dir) -> None:
    result = runner.invoke(
        main, ["audit", f"hf://{minilm}", str(minilm_dir), "--progress", "--format", "jsonl"]
    )
    assert result.exit_code == 0, result.output
    assert "auditing" in result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_audit_of_one_file_url(hub: HubServer, minilm: str) -> None:
    result = audit(f"{hub.url}/{minilm}/blob/main/model.safetensors")
    assert result.ok and result.weights == "model.safetensors"


def test_offline_audit_names_what_the_cache_lacks(
    hub: HubServer, minilm: str, runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.readers.hub.conftest import set_offline

    audit(f"hf://{minilm}")  # caches config.json and tokenizer.json, never the weights
    hub.reset()
    set_offline(monkeypatch)
    result = runner.invoke(main, ["audit", f"hf://{minilm}"])
    assert result.exit_code == 2
    assert "HF_HUB_OFFLINE is set and the cached snapshot" in result.stderr
    assert "holds no weights" in result.stderr
    assert hub.requests() == 0


@pytest.mark.parametrize("command", [["inspect"], ["diff", "SELF"]])
def test_stats_on_reading_commands(hub: HubServer, minilm: str, runner, command) -> None:
    source = f"hf://{minilm}"
    args = [command[0], source] + [source for c in command[1:] if c == "SELF"] + ["--stats"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("hub transfer: ") and " requests, " in result.stderr


def test_audit_names_only_options_it_has(tmp_path: Path) -> None:
    """A fix audit cannot write is named with the check command that writes it."""
    import re

    from ckptdiff.cli.audit_cmd import audit as audit_cmd

    folder = repos.bert(tmp_path / "b")
    data = json.loads((folder / "config.json").read_text())
    data["hidden_size"] = 64  # the weights are 32 wide: a verified config fix exists
    (folder / "config.json").write_text(json.dumps(data))
    result = audit(str(folder))
    text = render_audit([result])
    assert not result.ok
    own = {o for p in audit_cmd.params for o in p.opts}
    for line in text.splitlines():
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]+", line):
            assert option in own or "ckptdiff check" in line.split(option)[0], line
    assert f"ckptdiff check {folder} --model {folder} --emit-config FILE" in text
