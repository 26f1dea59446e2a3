"""identify (library and CLI), and the new CLI options: --emit-key-map, --emit-config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptdiff._identify import identify
from ckptdiff.cli import main
from ckptdiff.targets import build_target
from fixtures.models import VIT_L_14_336, build_clip

CLIP = "fixtures.models:build_clip"
OPEN_CLIP_CONFIGS = Path(__file__).parents[2] / "fixtures" / "configs" / "open_clip"


def tiny(width: int, layers: int, patch: int, image: int) -> dict:
    return {
        "embed_dim": 16,
        "vision_cfg": {
            "width": width,
            "layers": layers,
            "heads": 2,
            "patch_size": patch,
            "image_size": image,
        },
        "text_cfg": {"width": 16, "layers": 1, "heads": 2, "context_length": 8, "vocab_size": 40},
    }


@pytest.fixture
def candidates(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    for name, cfg in {
        "T-32-4.json": tiny(32, 2, 4, 16),
        "T-32-4-24.json": tiny(32, 2, 4, 24),
        "T-64-4.json": tiny(64, 2, 4, 16),
        "T-32-8.json": tiny(32, 4, 8, 16),
    }.items():
        (folder / name).write_text(json.dumps(cfg))
    torch.manual_seed(0)
    save_file(build_clip(**tiny(32, 2, 4, 24)).state_dict(), tmp_path / "ck.safetensors")
    return tmp_path


def test_real_presets_rank_vit_l_14_336_first():
    ck = build_target(CLIP, config=VIT_L_14_336)  # a manifest built in memory
    ranked = identify(ck, str(OPEN_CLIP_CONFIGS), model=CLIP)
    names = [c.name for c in ranked]
    assert names[:2] == ["ViT-L-14-336.json", "ViT-L-14.json"]
    assert ranked[0].report.ok and ranked[0].fit == 1.0
    assert ranked[1].counts["mismatched"] == 1  # the 577 vs 257 position embedding


def test_identify_cli(candidates, runner):
    r = runner.invoke(
        main,
        [
            "identify",
            str(candidates / "ck.safetensors"),
            "--candidates",
            str(candidates / "configs"),
            "--model",
            CLIP,
        ],
    )
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert lines[2].split()[:2] == ["1", "T-32-4-24.json"] and "fits exactly" in lines[2]
    assert lines[3].split()[1] == "T-32-4.json"
    js = runner.invoke(
        main,
        [
            "identify",
            str(candidates / "ck.safetensors"),
            "--candidates",
            str(candidates / "configs"),
            "--model",
            CLIP,
            "--format",
            "json",
        ],
    )
    d = json.loads(js.stdout)
    assert d["candidates"][0]["name"] == "T-32-4-24.json" and d["candidates"][0]["ok"]
    assert set(d["candidates"][1]) >= {
        "matched",
        "mismatched",
        "missing",
        "unexpected",
        "coverage",
        "fit",
    }


def test_identify_without_candidates_is_exit_2(tmp_path, runner):
    (tmp_path / "empty").mkdir()
    save_file({"w": torch.zeros(2)}, tmp_path / "ck.safetensors")
    r = runner.invoke(
        main,
        ["identify", str(tmp_path / "ck.safetensors"), "--candidates", str(tmp_path / "empty")],
    )
    assert r.exit_code == 2 and "holds no transformers configs" in r.stderr


def test_check_emit_config_and_key_map(candidates, runner, tmp_path):
    out_cfg, out_map = tmp_path / "fixed.json", tmp_path / "map.json"
    torch.manual_seed(0)
    sd = {"module." + k: v for k, v in build_clip(**tiny(64, 3, 4, 24)).state_dict().items()}
    save_file(sd, tmp_path / "ddp.safetensors")
    r = runner.invoke(
        main,
        [
            "check",
            str(tmp_path / "ddp.safetensors"),
            "--model",
            CLIP,
            "--config",
            str(candidates / "configs" / "T-32-4.json"),
            "--emit-config",
            str(out_cfg),
            "--emit-key-map",
            str(out_map),
        ],
    )
    assert r.exit_code == 1, r.output
    assert "Causes" in r.stdout and "evidence" in r.stdout
    fixed = json.loads(out_cfg.read_text())
    assert fixed["vision_cfg"] == {
        **tiny(32, 2, 4, 16)["vision_cfg"],
        "width": 64,
        "layers": 3,
        "image_size": 24,
    }
    assert json.loads(out_map.read_text())["rules"] == [{"op": "strip_prefix", "prefix": "module."}]
    again = runner.invoke(
        main,
        [
            "check",
            str(tmp_path / "ddp.safetensors"),
            "--model",
            CLIP,
            "--config",
            str(out_cfg),
            "--key-map",
            str(out_map),
        ],
    )
    assert again.exit_code == 0, again.output


def test_diff_emit_key_map_with_renames(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_file(
        {f"l.{i}.norm.gamma": torch.zeros(4) for i in range(2)}
        | {f"l.{i}.norm.beta": torch.zeros(4) for i in range(2)},
        "tf.safetensors",
    )
    save_file(
        {f"l.{i}.norm.weight": torch.zeros(4) for i in range(2)}
        | {f"l.{i}.norm.bias": torch.zeros(4) for i in range(2)},
        "pt.safetensors",
    )
    r = runner.invoke(
        main, ["diff", "tf.safetensors", "pt.safetensors", "--emit-key-map", "map.json"]
    )
    assert r.exit_code == 1
    rules = json.loads(Path("map.json").read_text())
    assert rules["schema"] == "ckptdiff.keymap/1" and {x["op"] for x in rules["rules"]} == {
        "rename"
    }
    fixed = runner.invoke(
        main, ["diff", "tf.safetensors", "pt.safetensors", "--key-map", "map.json"]
    )
    assert fixed.exit_code == 0, fixed.output
    none = runner.invoke(
        main, ["diff", "pt.safetensors", "pt.safetensors", "--emit-key-map", "none.json"]
    )
    assert none.exit_code == 0 and "no verified key map" in none.stderr
    assert not Path("none.json").exists()
