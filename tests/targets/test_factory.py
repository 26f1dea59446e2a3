"""Factory targets: resolving the spec, --arg / --config plumbing, loading the callable."""

from __future__ import annotations

import json
import re

import pytest

from ckptdiff.errors import TargetError
from ckptdiff.targets import build_target, target_spec
from ckptdiff.targets.factory import (
    deep_merge,
    load_callable,
    parse_arg_assignments,
    parse_value,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1024", 1024),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ("None", None),
        ("False", False),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ("ViT-B-16", "ViT-B-16"),
        ('"1024"', "1024"),
        ("", ""),
    ],
)
def test_values_are_json_where_they_parse(text, value):
    assert parse_value(text) == value


def test_dotted_args_reach_into_nested_dicts():
    args = parse_arg_assignments(
        ["vision_cfg.width=1024", "vision_cfg.layers=24", "embed_dim=768", "name=x=y"]
    )
    assert args == {"vision_cfg": {"width": 1024, "layers": 24}, "embed_dim": 768, "name": "x=y"}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["width"], "Cannot use --arg 'width': expected KEY=VALUE"),
        (["=3"], "Cannot use --arg '=3': expected KEY=VALUE"),
        (["a..b=1"], "Cannot use --arg 'a..b': empty name in the dotted key."),
        (["width=3", "width.x=1"], "Cannot use --arg 'width.x': 'width' is 3, not a dict"),
    ],
)
def test_bad_args(items, message):
    with pytest.raises(TargetError, match=re.escape(message)):
        parse_arg_assignments(items)


def test_config_file_is_merged_under_args(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"embed_dim": 512, "vision_cfg": {"width": 768, "layers": 12}}))
    spec = target_spec(
        "fixtures.models:build_clip", config=cfg, args=["vision_cfg.width=1024", "embed_dim=768"]
    )
    assert spec.kind == "factory"
    assert spec.args == {"embed_dim": 768, "vision_cfg": {"width": 1024, "layers": 12}}


def test_deep_merge_takes_dotted_keys_and_copies():
    base = {"vision_cfg": {"width": 768, "layers": 12}}
    merged = deep_merge(base, {"vision_cfg.width": 1024, "text_cfg": {"width": 512}})
    assert merged == {"vision_cfg": {"width": 1024, "layers": 12}, "text_cfg": {"width": 512}}
    assert base == {"vision_cfg": {"width": 768, "layers": 12}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected a JSON object of keyword arguments, found list."),
        ("{nope", "not valid JSON"),
    ],
)
def test_bad_config_files(tmp_path, content, message):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(content)
    with pytest.raises(TargetError, match=re.escape(message)):
        target_spec("fixtures.models:build_clip", config=cfg)


def test_missing_config_file(tmp_path):
    with pytest.raises(TargetError, match=r"\(--config\): no such file"):
        target_spec("fixtures.models:build_clip", config=tmp_path / "nope.json")


def test_file_factory_with_sibling_import(tmp_path):
    (tmp_path / "layers.py").write_text(
        "from torch import nn\n\nclass Block(nn.Module):\n"
        "    def __init__(self, w):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(w, w)\n"
    )
    (tmp_path / "train.py").write_text(
        "from torch import nn\nfrom layers import Block\n\n"
        "def make_model(width=4, depth=1):\n"
        "    return nn.Sequential(*[Block(width) for _ in range(depth)]).to('cuda')\n"
    )
    m = build_target(f"{tmp_path / 'train.py'}:make_model", args={"width": 8, "depth": 2})
    assert m.tensors["1.fc.weight"].shape == (8, 8)
    assert m.config == {"width": 8, "depth": 2}
    assert m.metadata["target"]["kind"] == "factory"


def test_factory_returning_a_tuple_uses_its_model(tmp_path):
    (tmp_path / "oc.py").write_text(
        "from torch import nn\n\ndef create_model_and_transforms():\n"
        "    return nn.Linear(2, 3), None, None\n"
    )
    m = build_target(f"{tmp_path / 'oc.py'}:create_model_and_transforms")
    assert list(m.tensors) == ["weight", "bias"]


def test_factory_given_a_config_object_positionally(tmp_path):
    (tmp_path / "cfgmodel.py").write_text(
        "from dataclasses import dataclass\nfrom torch import nn\n\n@dataclass\nclass Cfg:\n"
        "    width: int = 4\n\ndef build(cfg, bias=True):\n"
        "    return nn.Linear(cfg.width, cfg.width, bias=bias)\n"
    )
    cfg_class = load_callable(f"{tmp_path / 'cfgmodel.py'}:Cfg")
    m = build_target(
        f"{tmp_path / 'cfgmodel.py'}:build", config=cfg_class(width=6), args={"bias": False}
    )
    assert {k: t.shape for k, t in m.tensors.items()} == {"weight": (6, 6)}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "nope_pkg.models:build",
            "Cannot build 'nope_pkg.models:build' (import nope_pkg.models): "
            "No module named 'nope_pkg'",
        ),
        (
            "fixtures.models:build_clp",
            "'fixtures.models' has no attribute 'build_clp'. Did you mean: build_clip",
        ),
        ("fixtures.models:VIT_B_16", "'VIT_B_16' is dict, not callable."),
        ("fixtures.models", "Cannot build 'fixtures.models': expected pkg.module:callable"),
        ("missing/file.py:make", "Cannot build 'missing/file.py:make': no such file"),
    ],
)
def test_unloadable_specs(spec, message):
    with pytest.raises(TargetError, match=re.escape(message)):
        build_target(spec)


def test_factory_that_raises_is_one_target_error():
    with pytest.raises(TargetError) as info:
        build_target("fixtures.models:build_clip", args={"vision_cfg": {"widht": 8}})
    assert str(info.value).startswith(
        "Cannot build 'fixtures.models:build_clip' (calling it on the meta device with "
        "arguments vision_cfg): TypeError:"
    )
    assert "widht" in str(info.value)


def test_factory_returning_something_else(tmp_path):
    (tmp_path / "bad.py").write_text("def make():\n    return {'weight': 1}\n")
    with pytest.raises(TargetError, match="it returned dict, not an nn.Module"):
        build_target(f"{tmp_path / 'bad.py'}:make")


def test_file_that_fails_to_import(tmp_path):
    (tmp_path / "broken.py").write_text("raise ValueError('no GPU here')\n")
    with pytest.raises(TargetError, match=re.escape("importing it raised ValueError: no GPU here")):
        build_target(f"{tmp_path / 'broken.py'}:make")


def test_not_a_target():
    with pytest.raises(TargetError, match="expected a string"):
        build_target(42)
