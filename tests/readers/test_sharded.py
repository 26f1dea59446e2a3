"""Sharded checkpoints: index + shards read by their headers, and every disagreement reported."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from huggingface_hub import save_torch_state_dict

from ckptdiff import read
from ckptdiff.errors import UnsafeCheckpointError


def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(6)])
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture
def sharded(tmp_path):
    sd = state_dict()
    save_torch_state_dict(sd, tmp_path, max_shard_size=40_000)
    index = tmp_path / "model.safetensors.index.json"
    assert index.is_file()
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 2
    return tmp_path, sd


def kinds(m) -> set[str]:
    return {f.kind for f in m.findings}


def test_sharded_folder_equals_state_dict(sharded):
    folder, sd = sharded
    m = read(str(folder))
    assert m.format == "safetensors-sharded"
    assert {k: s.shape for k, s in m.tensors.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    assert m.findings == ()
    assert len(m.files) == 1 + len({s.file for s in m.tensors.values()})
    # the index itself is a source too
    assert read(str(folder / "model.safetensors.index.json")).tensors.keys() == m.tensors.keys()


def _edit_index(folder, fn):
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    fn(data)
    index.write_text(json.dumps(data))


def test_missing_shard_file(sharded):
    folder, _ = sharded
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[0]
    os.remove(folder / victim)
    m = read(str(folder))
    (f,) = [f for f in m.findings if f.kind == "shard_missing"]
    assert f.severity == "error" and victim in f.message


def test_index_lists_absent_key_and_misses_a_present_one(sharded):
    folder, _ = sharded

    def edit(data):
        wm = data["weight_map"]
        wm["ghost.weight"] = next(iter(wm.values()))
        del wm["0.bias"]

    _edit_index(folder, edit)
    m = read(str(folder))
    assert {"index_key_absent", "index_key_unlisted"} <= kinds(m)
    assert "0.bias" in m.tensors  # unlisted keys are still read: loaders read whole shards
    assert "ghost.weight" not in m.tensors


def test_key_in_two_shards_and_wrong_total_size(sharded, tmp_path):
    folder, sd = sharded
    from safetensors.torch import save_file

    save_file(
        {"0.weight": sd["0.weight"], "extra": torch.zeros(3)},
        str(folder / "model-extra.safetensors"),
    )

    def edit(data):
        data["weight_map"]["extra"] = "model-extra.safetensors"
        data["metadata"]["total_size"] = 123

    _edit_index(folder, edit)
    m = read(str(folder))
    assert {"duplicate_key", "total_size"} <= kinds(m)
    (dup,) = [f for f in m.findings if f.kind == "duplicate_key"]
    assert dup.keys == ("0.weight",)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "a/../../x.safetensors"])
def test_shard_names_that_leave_the_folder_are_refused(sharded, name):
    folder, _ = sharded

    def edit(data):
        data["weight_map"]["0.weight"] = name

    _edit_index(folder, edit)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(repr(name))):
        read(str(folder))


def test_symlinked_shard_outside_is_refused(sharded, tmp_path_factory):
    folder, _ = sharded
    outside = tmp_path_factory.mktemp("outside") / "evil.safetensors"
    outside.write_bytes(b"x")
    os.symlink(outside, folder / "link.safetensors")

    def edit(data):
        data["weight_map"]["0.weight"] = "link.safetensors"

    _edit_index(folder, edit)
    with pytest.raises(UnsafeCheckpointError, match="outside the checkpoint's folder"):
        read(str(folder))


def test_symlink_loop_does_not_hang(sharded):
    folder, _ = sharded
    os.symlink(folder / "loop-a.safetensors", folder / "loop-b.safetensors")
    os.symlink(folder / "loop-b.safetensors", folder / "loop-a.safetensors")

    def edit(data):
        data["weight_map"]["0.weight"] = "loop-a.safetensors"

    _edit_index(folder, edit)
    m = read(str(folder))  # a loop is not a file: reported as a missing shard
    assert "shard_missing" in kinds(m)


def test_sharded_bin(tmp_path):
    sd = state_dict()
    save_torch_state_dict(sd, tmp_path, max_shard_size=40_000, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin.index.json").is_file()
    m = read(str(tmp_path))
    assert m.format == "torch-sharded"
    assert {k: s.shape for k, s in m.tensors.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    assert m.findings == ()


def test_index_manifest_takes_shard_tensors_in_any_order():
    """Shards are read in their header's order; unlisted and doubled keys still come out shard
    by shard in natural key order, as when each shard was sorted first."""
    from ckptdiff.readers.sharded import index_manifest
    from ckptdiff.sorting import natural_order
    from ckptdiff.types import TensorSpec

    def shard(name: str, keys: list[str]) -> dict[str, TensorSpec]:
        return {k: TensorSpec(k, (2,), "float32", 8, name) for k in keys}

    a = shard("a", ["l.10.w", "l.2.w", "l.1.w", "l.0.w", "head.w"])
    b = shard("b", ["l.11.w", "l.3.w", "l.2.w", "l.0.w"])
    weight_map = {"head.w": "a", "l.11.w": "b", "gone.w": "b"}
    natural = {n: {k: s[k] for k in natural_order(s)} for n, s in (("a", a), ("b", b))}
    m = index_manifest(weight_map, {}, {"a": a, "b": b}, source="x", files=())
    assert m == index_manifest(weight_map, {}, natural, source="x", files=())
    assert list(m.tensors) == ["head.w", "l.11.w", "l.0.w", "l.1.w", "l.2.w", "l.10.w", "l.3.w"]
    doubled = next(f for f in m.findings if f.kind == "duplicate_key")
    assert doubled.keys == ("l.0.w", "l.2.w")
