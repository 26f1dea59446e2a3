"""``ckptdiff.check`` and ``ckptdiff check``: a checkpoint against a model, before loading it."""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model

from ckptdiff import check
from ckptdiff.cli.check_cmd import check as check_cmd
from ckptdiff.errors import IncompatibleCheckpointError, UsageError
from ckptdiff.readers import read
from ckptdiff.targets import build_target
from fixtures.models import build_clip, build_llama
from fixtures.tiny import TINY_CLIP, TINY_LLAMA

ROOT = Path(__file__).resolve().parents[1]
CLIP_ARGS = [
    "--arg",
    "embed_dim=8",
    "--arg",
    "vision_cfg.width=16",
    "--arg",
    "vision_cfg.layers=2",
    "--arg",
    "vision_cfg.heads=2",
    "--arg",
    "vision_cfg.patch_size=4",
    "--arg",
    "vision_cfg.image_size=16",
    "--arg",
    "text_cfg.width=16",
    "--arg",
    "text_cfg.layers=2",
    "--arg",
    "text_cfg.heads=2",
    "--arg",
    "text_cfg.context_length=8",
    "--arg",
    "text_cfg.vocab_size=50",
]


def state(model: torch.nn.Module, keep=lambda k: True, prefix: str = "") -> dict:
    return {prefix + k: v.clone().contiguous() for k, v in model.state_dict().items() if keep(k)}


@pytest.fixture
def clip_file(tmp_path) -> Path:
    path = tmp_path / "clip.safetensors"
    save_file(state(build_clip(**TINY_CLIP)), path)
    return path


@pytest.fixture
def vision_only_file(tmp_path) -> Path:
    """A CLIP checkpoint with the vision tower only: the text tower would stay random."""
    path = tmp_path / "vision_only.safetensors"
    save_file(state(build_clip(**TINY_CLIP), keep=lambda k: k.startswith("visual.")), path)
    return path


# --- the API -------------------------------------------------------------------------------------


def test_module_instance(tmp_path):
    model = build_llama(**TINY_LLAMA)
    path = tmp_path / "llama.safetensors"
    save_model(model, str(path))  # stores the tied pair once, the other name as an alias
    assert "model.embed_tokens.weight" not in read(str(path)).tensors
    report = check(model, path)
    assert report.ok, str(report)
    bigger = build_llama(**{**TINY_LLAMA, "vocab_size": 80})
    report = check(bigger, path)
    assert not report.ok
    assert {m.key: (m.checkpoint_shape, m.target_shape) for m in report.mismatched}[
        "model.embed_tokens.weight"
    ] == ((64, 16), (80, 16))
    assert next(bigger.parameters()).device.type == "cpu"  # checked as it is, never rebuilt


def test_factory_spec_with_args(clip_file):
    report = check("fixtures.models:build_clip", clip_file, args=TINY_CLIP)
    assert report.ok
    assert len(report.matched) == len(read(str(clip_file)).tensors)
    assert report.coverage[0].share == 1.0


def test_manifests_on_both_sides(clip_file):
    target = build_target("fixtures.models:build_clip", args=TINY_CLIP)
    assert check(target, read(str(clip_file))).ok
    with pytest.raises(UsageError, match=re.escape("Cannot use select='state_dict'")):
        check(target, read(str(clip_file)), select="state_dict")


def test_key_map_rules(tmp_path):
    path = tmp_path / "ddp.safetensors"
    save_file(state(build_clip(**TINY_CLIP), prefix="module."), path)
    plain = check("fixtures.models:build_clip", path, args=TINY_CLIP)
    assert not plain.ok
    assert any(s.kind == "key_map" for s in plain.suggestions)
    fixed = check(
        "fixtures.models:build_clip",
        path,
        args=TINY_CLIP,
        key_map=[{"op": "strip_prefix", "prefix": "module."}],
    )
    assert fixed.ok
    assert fixed.key_map == ({"op": "strip_prefix", "prefix": "module."},)


def test_missing_text_tower_shows_zero_coverage(vision_only_file):
    report = check("fixtures.models:build_clip", vision_only_file, args=TINY_CLIP)
    share = {c.module: c.share for c in report.coverage}
    assert share["visual"] == 1.0
    assert share["transformer"] == share["token_embedding"] == share["ln_final"] == 0.0
    assert share["transformer.resblocks"] == 0.0
    assert 0 < share[""] < 1
    warned = [f.data["module"] for f in report.findings if f.kind == "module_not_loaded"]
    assert warned == ["ln_final", "token_embedding", "transformer"]  # not transformer.resblocks
    text = str(report)
    assert "The checkpoint supplies none of 'transformer' (24 tensors" in text
    assert "it would stay at its initial values" in text


def test_raise_for_incompatible_carries_the_table(vision_only_file):
    report = check("fixtures.models:build_clip", vision_only_file, args=TINY_CLIP)
    with pytest.raises(IncompatibleCheckpointError) as info:
        report.raise_for_incompatible()
    message = str(info.value)
    assert message == str(report)
    assert "Missing from the checkpoint" in message
    assert "token_embedding.weight" in message
    report.raise_for_incompatible(allow_missing=True)  # only missing keys: tolerated


def test_json_report(vision_only_file):
    data = json.loads(
        check("fixtures.models:build_clip", vision_only_file, args=TINY_CLIP).to_json()
    )
    assert data["schema"] == "ckptdiff.report/2"
    assert data["ok"] is False
    assert data["target"] == {"source": "fixtures.models:build_clip", "format": "meta-model"}
    row = next(c for c in data["coverage"] if c["module"] == "transformer")
    assert row["supplied"] == 0 and row["expected"] > 0
    assert {"key": "logit_scale", "shape": [], "dtype": "float32"} in data["missing"]


def test_non_persistent_buffer_in_checkpoint_is_what_strict_loading_says(tmp_path):
    """A plain module is judged by load_state_dict(strict=True), which rejects the key."""
    from safetensors.torch import load_file

    model = build_clip(**TINY_CLIP)
    sd = state(model)
    sd["attn_mask"] = model.attn_mask.clone()  # saved by an older version, now non-persistent
    path = tmp_path / "old.safetensors"
    save_file(sd, path)
    report = check(model, path)
    assert [t.key for t in report.unexpected] == ["attn_mask"]
    result = model.load_state_dict(load_file(path), strict=False)  # the oracle
    assert result.unexpected_keys == ["attn_mask"] and not result.missing_keys


def test_persistent_buffer_missing_is_its_own_class(tmp_path):
    from fixtures.models import build_with_init_on_cpu

    model = build_with_init_on_cpu(width=8)
    path = tmp_path / "no_buffer.safetensors"
    save_file(state(model, keep=lambda k: k != "running_scale"), path)
    report = check("fixtures.models:build_with_init_on_cpu", path, args={"width": 8})
    assert [t.key for t in report.buffers_missing] == ["running_scale"]
    assert not report.missing
    assert not report.ok


# --- the command line ----------------------------------------------------------------------------


def test_cli_minilm_is_compatible(runner, minilm_dir):
    result = runner.invoke(check_cmd, [str(minilm_dir), "--model", f"hf-config:{minilm_dir}"])
    assert result.exit_code == 0, result.output
    assert "embeddings.position_ids" in result.stdout  # listed as ignored
    assert "Unexpected" not in result.stdout
    assert "compatible." in result.stdout


def test_cli_minilm_against_768_config_differs(runner, minilm_dir, tmp_path):
    config = json.loads((minilm_dir / "config.json").read_text())
    config["hidden_size"] = 768
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = runner.invoke(check_cmd, [str(minilm_dir), "-m", str(tmp_path), "--format", "json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert len(data["mismatched"]) == 97


def test_cli_coverage_table_flags_the_empty_tower(runner, vision_only_file):
    result = runner.invoke(
        check_cmd, [str(vision_only_file), "-m", "fixtures.models:build_clip", *CLIP_ARGS]
    )
    assert result.exit_code == 1
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "nothing loads" in rows["transformer"]
    assert "nothing loads" in rows["token_embedding"]
    assert "nothing loads" not in rows["visual"]


def test_cli_config_file_and_args(runner, clip_file, tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY_CLIP, "embed_dim": 99}))
    result = runner.invoke(
        check_cmd,
        [
            str(clip_file),
            "-m",
            "fixtures.models:build_clip",
            "--config",
            str(cfg),
            "--arg",
            "embed_dim=8",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        check_cmd, [str(clip_file), "-m", "fixtures.models:build_clip", "--config", str(cfg)]
    )
    assert result.exit_code == 1
    assert "visual.proj" in result.stdout


def test_cli_strip_prefix(runner, tmp_path):
    path = tmp_path / "ddp.safetensors"
    save_file(state(build_clip(**TINY_CLIP), prefix="module."), path)
    args = [str(path), "-m", "fixtures.models:build_clip", *CLIP_ARGS]
    assert runner.invoke(check_cmd, args).exit_code == 1
    assert runner.invoke(check_cmd, [*args, "--strip-prefix", "module."]).exit_code == 0


def test_cli_base_model_prefix_into_head_model(runner, minilm_dir):
    result = runner.invoke(
        check_cmd,
        [str(minilm_dir), "-m", str(minilm_dir), "--auto-class", "BertForSequenceClassification"],
    )
    assert result.exit_code == 1
    assert "'bert.' prefix" in result.stdout
    assert "classifier.weight" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["{ckpt}", "-m", "nope_pkg.models:build"],
            "ckptdiff: Cannot build 'nope_pkg.models:build' (import nope_pkg.models)",
        ),
        (
            ["{ckpt}", "-m", "fixtures.models:build_clip", "--arg", "embed_dim"],
            "ckptdiff: Cannot use --arg 'embed_dim': expected KEY=VALUE",
        ),
        (
            ["{ckpt}", "-m", "fixtures.models:build_clip", "--arg", "vision_cfg.typo=1"],
            "ckptdiff: Cannot build 'fixtures.models:build_clip' (calling it on the meta device",
        ),
        (
            ["missing.safetensors", "-m", "fixtures.models:build_clip"],
            "ckptdiff: Cannot read 'missing.safetensors': no such file or folder.",
        ),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(runner, clip_file, args, message):
    args = [a.replace("{ckpt}", str(clip_file)) for a in args]
    result = runner.invoke(check_cmd, args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_cli_debug_shows_the_traceback(runner, clip_file):
    result = runner.invoke(check_cmd, [str(clip_file), "-m", "nope_pkg.models:build", "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_cli_needs_a_model(runner, clip_file):
    result = runner.invoke(check_cmd, [str(clip_file)])
    assert result.exit_code == 2
    assert "Missing option '--model'" in result.stderr


# --- import cost ---------------------------------------------------------------------------------


def test_importing_the_check_api_does_not_import_torch(minilm_dir):
    code = f"""
import sys
import ckptdiff, ckptdiff._check, ckptdiff.targets, ckptdiff.cli.check_cmd
from ckptdiff.readers import read
read({str(minilm_dir)!r})
assert "torch" not in sys.modules, "torch imported before a target was built"
ckptdiff.check("fixtures.models:build_clip", {str(minilm_dir)!r}, args={TINY_CLIP!r})
assert "torch" in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_package_level_check_and_diff_stay_functions_after_every_submodule_loads(clip_file):
    import ckptdiff

    for module in pkgutil.walk_packages(ckptdiff.__path__, "ckptdiff."):
        importlib.import_module(module.name)
    assert importlib.util.find_spec("ckptdiff.check") is None  # no module of the same name
    assert importlib.util.find_spec("ckptdiff.diff") is None
    assert ckptdiff.check is sys.modules["ckptdiff._check"].check
    assert ckptdiff.diff is sys.modules["ckptdiff._diff"].diff_sources
    for _ in range(2):
        assert ckptdiff.check("fixtures.models:build_clip", clip_file, args=TINY_CLIP).ok
        assert ckptdiff.diff(str(clip_file), str(clip_file)).ok


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--model", "open_clip.model.CLIP"], "Did you mean open_clip.model:CLIP?"),
        (["--auto-class", "ChineseClipModel"], "Did you mean ChineseCLIPModel?"),
    ],
)
def test_misspelled_targets_get_a_did_you_mean(runner, clip_file, tmp_path, args, hint):
    pytest.importorskip("transformers")
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "bert",
                "vocab_size": 10,
                "hidden_size": 8,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
                "intermediate_size": 16,
            }
        )
    )
    base = ["--model", str(folder)] if args[0] != "--model" else []
    r = runner.invoke(check_cmd, [str(clip_file), *base, *args])
    assert r.exit_code == 2
    assert hint in r.stderr and "Traceback" not in r.stderr


def test_a_float16_checkpoint_prints_one_dtype_line(tmp_path, runner):
    model = build_clip(**TINY_CLIP)
    save_file({k: v.half() for k, v in state(model).items()}, str(tmp_path / "h.safetensors"))
    args = [str(tmp_path / "h.safetensors"), "--model", "fixtures.models:build_clip", *CLIP_ARGS]
    r = runner.invoke(check_cmd, args)
    n = len(state(model))
    assert f"Dtype changes: {n} tensors float16 -> float32: cast on load" in r.stdout
    assert "Dtype changes (" not in r.stdout
    full = runner.invoke(check_cmd, [*args, "--full"])
    assert f"Dtype changes ({n}): loading casts them" in full.stdout
