"""What a built model's manifest records, and rebuilding a target with changed settings."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from ckptdiff.errors import TargetError
from ckptdiff.targets import build_target, rebuild, target_spec
from ckptdiff.targets.module import manifest_from_module
from fixtures.tiny import TINY_CLIP


class SharedBlock(nn.Module):
    """One submodule reachable under two names, a None buffer, and extra state."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(2, 2)
        self.decoder = self.encoder
        self.register_buffer("maybe", None)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def get_extra_state(self) -> dict:
        return {"version": 2}

    def set_extra_state(self, state: dict) -> None:
        pass


def test_shared_module_is_one_tied_group_per_tensor():
    m = manifest_from_module(SharedBlock(), source="x")
    assert list(m.tensors) == [  # state-dict order: own tensors first, then children
        "steps",
        "encoder.weight",
        "encoder.bias",
        "decoder.weight",
        "decoder.bias",
    ]
    # load_state_dict(strict=True) wants every name of a shared tensor: nothing is forgiven,
    # the sharing is kept as information
    assert m.tied == () and m.aliases == {}
    assert m.metadata["shared_tensors"] == [
        ["encoder.bias", "decoder.bias"],
        ["encoder.weight", "decoder.weight"],
    ]
    assert m.metadata["loader"] == "load_state_dict"
    assert m.buffers == {"steps"}
    assert m.tensors["steps"].dtype == "int64" and m.tensors["steps"].shape == ()
    assert "_extra_state" not in m.tensors
    assert "ignore_unexpected" not in m.metadata  # a plain module forgives nothing
    assert m.metadata["class"].endswith("SharedBlock")


def test_nbytes_follow_dtype():
    m = manifest_from_module(nn.Linear(4, 3).half(), source="x")
    assert m.tensors["weight"].nbytes == 4 * 3 * 2


def test_rebuild_a_factory_with_dotted_overrides():
    base = build_target("fixtures.models:build_clip", args=TINY_CLIP)
    wider = rebuild(base, {"vision_cfg.width": 32, "vision_cfg.image_size": 24})
    assert wider.tensors["visual.conv1.weight"].shape == (32, 3, 4, 4)
    assert wider.tensors["visual.positional_embedding"].shape == (37, 32)  # (24/4)^2 + 1
    assert wider.config["vision_cfg"] == {**TINY_CLIP["vision_cfg"], "width": 32, "image_size": 24}
    assert wider.config["text_cfg"] == TINY_CLIP["text_cfg"]
    assert base.tensors["visual.conv1.weight"].shape == (16, 3, 4, 4)  # unchanged


def test_rebuild_from_a_spec_with_nested_overrides():
    spec = target_spec("fixtures.models:build_clip", args=TINY_CLIP)
    again = rebuild(spec, {"text_cfg": {"context_length": 12}})
    assert again.tensors["positional_embedding"].shape == (12, 16)


def test_a_plain_module_instance_cannot_be_rebuilt():
    spec = target_spec(nn.Linear(2, 2))
    assert spec.kind == "module" and not spec.rebuildable
    with pytest.raises(TargetError, match=re.escape("an nn.Module instance carries no config")):
        rebuild(spec, {"out_features": 3})


def test_rebuild_needs_a_built_manifest():
    from ckptdiff.types import Manifest

    with pytest.raises(TargetError, match="was not made by build_target"):
        rebuild(Manifest("ckpt.safetensors", "safetensors", {}), {"width": 3})


def test_instance_manifest_reads_real_weights_without_copying():
    model = nn.Linear(3, 2)
    m = build_target(model)
    assert m.source == "torch.nn.modules.linear:Linear"
    assert {k: t.shape for k, t in m.tensors.items()} == {"weight": (2, 3), "bias": (2,)}
    assert m.config is None
