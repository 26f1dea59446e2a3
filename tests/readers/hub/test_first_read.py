"""A shard's first range request is sized from the index: its header in one request, and only a
few hundred bytes of weights past it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ckptdiff.readers import read
from ckptdiff.readers.hub import FIRST_READ_SIZE
from ckptdiff.readers.safetensors_file import first_read_size
from tests.readers.hub import repos
from tests.readers.hub.server import HubServer


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def test_one_request_per_shard_and_a_few_hundred_bytes_past_its_header(
    hub: HubServer, tmp_path: Path
) -> None:
    folder = repos.sharded(tmp_path / "sharded", max_shard_size=20_000)
    hub.add_folder("t/sized", folder)
    m = read("hf://t/sized")
    assert m.tensors == read(str(folder)).tensors
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(set(weight_map.values()))
    assert len(shards) >= 4
    for shard in shards:
        header = _header_bytes(folder / shard)
        assert hub.requests("t/sized", shard) == 1
        fetched = hub.bytes("t/sized", shard)
        assert header <= fetched <= header + 40 * sum(v == shard for v in weight_map.values())
        assert fetched < FIRST_READ_SIZE


def test_the_estimate_covers_real_headers(tmp_path: Path) -> None:
    # every shard safetensors writes, for keys of every length: the estimate is never short
    folder = repos.sharded(tmp_path / "s", max_shard_size=20_000)
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in set(weight_map.values()):
        keys = [k for k, v in weight_map.items() if v == shard]
        size = (folder / shard).stat().st_size
        estimate = first_read_size(keys, size)
        assert _header_bytes(folder / shard) <= estimate <= size


def test_a_longer_header_than_estimated_costs_a_second_request(
    hub: HubServer, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "meta"
    folder.mkdir()
    # metadata far longer than an estimate allows for
    save_file({"w": torch.zeros(2)}, str(folder / "a.safetensors"), metadata={"notes": "x" * 5000})
    save_file({"v": torch.zeros(2)}, str(folder / "b.safetensors"))
    index = {"metadata": {}, "weight_map": {"w": "a.safetensors", "v": "b.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    hub.add_folder("t/meta", folder)
    m = read("hf://t/meta")
    assert set(m.tensors) == {"w", "v"}
    assert hub.requests("t/meta", "a.safetensors") == 2
    assert hub.requests("t/meta", "b.safetensors") == 1
