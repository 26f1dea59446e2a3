"""--batch FILE: shapes, dtypes, and the values of small integer tensors, read safely.

torch itself is the oracle for the values: ``torch.load(weights_only=True)`` of the same file.
"""

from __future__ import annotations

import re
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from ckptdiff.errors import ReadError, SourceNotFoundError, UnsafeCheckpointError
from ckptdiff.forward_check import batch as batch_mod
from ckptdiff.forward_check.batch import read_batch


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50265, (3, 9), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(3, 9, dtype=torch.int32),
        "labels": ids[:, 1:],  # a view with an offset into the same storage
        "pixel_values": torch.randn(3, 3, 8, 8),
        "flags": torch.tensor([True, False, True]),
    }


def test_torch_save_batch_values_equal_torch_load(tmp_path):
    path = tmp_path / "batch.pt"
    torch.save(_batch(), path)
    oracle = torch.load(path, weights_only=True)
    specs = {s.name: s for s in read_batch(str(path))}
    assert list(specs) == list(oracle)
    for name, t in oracle.items():
        assert specs[name].shape == tuple(t.shape)
        assert specs[name].dtype == str(t.dtype).removeprefix("torch.")
        if t.is_floating_point():
            assert specs[name].values is None  # floats are never read
        else:
            assert torch.equal(specs[name].values, t)


def test_safetensors_batch(tmp_path):
    path = tmp_path / "batch.safetensors"
    data = {k: v.contiguous() for k, v in _batch().items()}
    save_file(data, str(path))
    specs = {s.name: s for s in read_batch(str(path))}
    assert torch.equal(specs["labels"].values, data["labels"])
    assert specs["pixel_values"].values is None


def test_large_integer_tensors_are_described_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_mod, "MAX_VALUE_ELEMENTS", 10)
    path = tmp_path / "batch.pt"
    torch.save(_batch(), path)
    specs = {s.name: s for s in read_batch(str(path))}
    assert specs["input_ids"].values is None and specs["input_ids"].shape == (3, 9)
    assert specs["flags"].values is not None


class BatchEncoding(dict):
    """A stand-in for a tokenizer's batch class: pickled by reference to its module."""


def test_a_pickled_class_is_refused_not_run(tmp_path):
    path = tmp_path / "batch.pt"
    torch.save(BatchEncoding(_batch()), path)
    with pytest.raises(UnsafeCheckpointError, match=re.escape("torch.save(dict(batch)")):
        read_batch(str(path))


def test_a_view_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "batch.pt"
    torch.save({"input_ids": torch.arange(6)}, path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        parts = {n: z.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    # the pickle says the view has 6 elements of storage '0'; make it 600
    parts[pkl] = parts[pkl].replace(b"K\x06\x85", b"MX\x02\x85")  # size (6,) -> (600,)
    with zipfile.ZipFile(path, "w") as z:
        for n in names:
            z.writestr(n, parts[n])
    message = "needs 600 elements but its storage '0' holds 6"
    with pytest.raises(ReadError, match=re.escape(message)):
        read_batch(str(path))


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(SourceNotFoundError, match=re.escape("no such file")):
        read_batch(str(tmp_path / "none.pt"))
    other = tmp_path / "batch.json"
    other.write_text("{}")
    with pytest.raises(ReadError, match=re.escape("it is a JSON file")):
        read_batch(str(other))
