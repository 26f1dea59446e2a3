"""Targets from hostile configs: repository code is never run, hostile sizes never built."""

from __future__ import annotations

import json
import struct

import pytest

from ckptdiff.cli import main

pytest.importorskip("transformers")

_BERT = {
    "model_type": "bert",
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 37,
}


def _weights(folder):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = folder / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    return path


def _repo_with_code(folder, auto_map):
    canary = folder / "RAN"
    code = f"open({str(canary)!r}, 'w').close()\n"
    for name in ("modeling_evil.py", "configuration_evil.py"):
        (folder / name).write_text(code)
    (folder / "config.json").write_text(json.dumps({**_BERT, "auto_map": auto_map}))
    return canary


@pytest.mark.parametrize(
    "auto_map, auto_class",
    [
        (
            {"AutoModelForImageClassification": "modeling_evil.EvilModel"},
            "AutoModelForImageClassification",
        ),
        (
            {"AutoModelForImageClassification": ["modeling_evil.EvilModel", None]},
            "AutoModelForImageClassification",
        ),
        (
            {"AutoModelForImageClassification": "org/code--modeling_evil.EvilModel"},
            "AutoModelForImageClassification",
        ),
    ],
)
def test_remote_code_is_refused_without_a_prompt(runner, tmp_path, auto_map, auto_class):
    canary = _repo_with_code(tmp_path, auto_map)
    args = [
        "check",
        str(_weights(tmp_path)),
        "--model",
        f"hf-config:{tmp_path}/config.json",
        "--auto-class",
        auto_class,
    ]
    result = runner.invoke(main, args, input="y\ny\ny\n")
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "[y/N]" not in result.output
    line = result.stderr.strip()
    assert "\n" not in line and "modeling_evil.py" in line, line
    assert "ckptdiff never runs" in line and "your own factory" in line, line


def test_unknown_model_type_with_auto_map_names_the_code_file(runner, tmp_path):
    canary = tmp_path / "RAN"
    config = {
        "model_type": "evil",
        "auto_map": {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModel": "modeling_evil.EvilModel",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = runner.invoke(
        main,
        ["check", str(_weights(tmp_path)), "--model", f"hf-config:{tmp_path}/config.json"],
        input="y\n",
    )
    assert result.exit_code == 2 and not canary.exists()
    assert "configuration_evil.py" in result.stderr and "never runs" in result.stderr


def test_a_local_class_beside_an_auto_map_builds_without_the_code(runner, tmp_path):
    canary = _repo_with_code(tmp_path, {"AutoModel": "modeling_evil.EvilModel"})
    result = runner.invoke(
        main,
        ["check", str(_weights(tmp_path)), "--model", f"hf-config:{tmp_path}/config.json"],
        input="y\n",
    )
    assert not canary.exists()
    assert result.exit_code == 1, result.output  # built from transformers' own BertModel


@pytest.mark.parametrize(
    "field, value, env",
    [
        ("num_hidden_layers", 100_000, "CKPTDIFF_MAX_LAYERS"),
        ("max_position_embeddings", 1e9, "CKPTDIFF_MAX_POSITIONS"),
        ("max_position_embeddings", 10**9, "CKPTDIFF_MAX_POSITIONS"),
    ],
)
def test_hostile_sizes_are_refused_before_building(runner, tmp_path, field, value, env):
    (tmp_path / "config.json").write_text(json.dumps({**_BERT, field: value}))
    result = runner.invoke(
        main, ["check", str(_weights(tmp_path)), "--model", f"hf-config:{tmp_path}/config.json"]
    )
    assert result.exit_code == 2, result.output
    assert f"config field '{field}'" in result.stderr and f"{env}=" in result.stderr


def test_a_raised_limit_lets_a_large_config_build(runner, tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({**_BERT, "num_hidden_layers": 1100}))
    args = ["check", str(_weights(tmp_path)), "--model", f"hf-config:{tmp_path}/config.json"]
    assert runner.invoke(main, args).exit_code == 2
    monkeypatch.setenv("CKPTDIFF_MAX_LAYERS", "2000")
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output


def test_real_configs_stay_within_the_limits(minilm_dir):
    from ckptdiff.targets.hf_safety import check_sizes

    check_sizes("minilm", json.loads((minilm_dir / "config.json").read_text()))
    check_sizes(
        "llama",
        {
            "num_hidden_layers": 126,
            "max_position_embeddings": 10_485_760,
            "vocab_size": 202_048,
            "depths": [2, 2, 18, 2],
        },
    )


@pytest.mark.parametrize("command", ["check", "audit"])
def test_a_config_nested_300k_deep_is_one_line_exit_2(runner, tmp_path, command):
    (tmp_path / "config.json").write_text('{"a":' * 300_000 + "1" + "}" * 300_000)
    weights = _weights(tmp_path)
    args = (
        ["check", str(weights), "--model", f"hf-config:{tmp_path}/config.json"]
        if command == "check"
        else ["audit", str(tmp_path)]
    )
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "not valid JSON" in result.stderr and "internal error" not in result.stderr
