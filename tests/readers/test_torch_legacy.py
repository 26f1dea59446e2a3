"""The legacy torch format and plain pickles, against torch's own reading."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ckptdiff.errors import ReadError
from ckptdiff.readers import read
from ckptdiff.readers import torch_legacy as torch_legacy_module
from ckptdiff.readers.torch_legacy import read_pickle_file
from fixtures.torch_files import (
    BENIGN,
    TinyNet,
    load_with_torch,
    write_legacy,
    write_legacy_container,
)

LEGACY_FIXTURES = sorted(name for name, fixture in BENIGN.items() if not fixture.is_zip)


def _specs(manifest) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, t.shape, t.dtype) for k, t in manifest.tensors.items()]


def _torch_specs(state_dict: dict) -> list[tuple[str, tuple[int, ...], str]]:
    return [
        (k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor)
    ]


@pytest.mark.parametrize("fixture", LEGACY_FIXTURES)
def test_specs_equal_torch_load_on_meta(tmp_path: Path, fixture: str) -> None:
    path = BENIGN[fixture].writer(tmp_path)
    manifest = read(str(path))
    assert manifest.format == "torch-legacy"
    assert _specs(manifest) == _torch_specs(load_with_torch(path, BENIGN[fixture]))
    assert manifest.selected == BENIGN[fixture].selected
    assert not manifest.security_findings
    assert not [f for f in manifest.findings if f.severity != "info"]


def test_legacy_container_metadata(tmp_path: Path) -> None:
    manifest = read(str(write_legacy_container(tmp_path)))
    assert manifest.metadata == {"epoch": 1}
    assert manifest.candidates == ("state_dict",)


def test_storage_bytes_are_not_read(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big_legacy.pt"
    torch.save({"w": torch.randn(512, 1024)}, path, _use_new_zipfile_serialization=False)
    reads = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            reads.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(
        torch_legacy_module, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False
    )
    manifest = read_pickle_file(str(path), str(path))
    assert manifest.tensors["w"].shape == (512, 1024)
    assert sum(reads) < 100_000 < path.stat().st_size


def test_truncated_legacy_file(tmp_path: Path) -> None:
    full = write_legacy(tmp_path)
    data = full.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:-10])
    with pytest.raises(
        ReadError,
        match=re.escape(f"Cannot read '{path}' (storage data): the storages need "),
    ):
        read(str(path))
    path.write_bytes(data[:200])
    with pytest.raises(ReadError, match=re.escape(f"Cannot read '{path}' (object): ")):
        read(str(path))


def test_trailing_bytes_after_storages_are_a_warning(tmp_path: Path) -> None:
    path = write_legacy(tmp_path)
    with open(path, "ab") as f:
        f.write(b"extra")
    manifest = read(str(path))
    (finding,) = [f for f in manifest.findings if f.kind == "trailing_bytes"]
    assert finding.severity == "warning"
    assert "5 bytes" in finding.message


def test_wrong_protocol_version(tmp_path: Path) -> None:
    path = tmp_path / "v.pt"
    with open(path, "wb") as f:
        pickle.dump(torch_legacy_module.MAGIC_NUMBER, f, protocol=2)
        pickle.dump(999, f, protocol=2)
    with pytest.raises(ReadError, match=re.escape(f"Cannot read '{path}' (legacy torch header)")):
        read(str(path))


def test_forbidden_global_in_legacy_file(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"

    class RunsCommand:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    path = tmp_path / "hostile_legacy.pt"
    sd = dict(nn.Linear(2, 3).state_dict())
    torch.save({**sd, "x": RunsCommand()}, path, _use_new_zipfile_serialization=False)
    manifest = read(str(path))
    assert not canary.exists()
    assert list(manifest.tensors) == ["weight", "bias"]
    assert [f.keys for f in manifest.security_findings] == [(f"{os.system.__module__}.system",)]


# --- plain pickles -------------------------------------------------------------------------------


def test_plain_pickle_of_numpy_arrays(tmp_path: Path) -> None:
    path = tmp_path / "arrays.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": np.ones((2, 3), dtype=np.float32), "step": 3}, f, protocol=2)
    manifest = read(str(path))
    assert manifest.format == "pickle"
    assert len(manifest) == 0
    assert not manifest.security_findings
    kinds = {f.kind for f in manifest.findings}
    assert "non_tensor_object" in kinds
    assert "no_state_dict" in kinds


def test_plain_pickle_bytes_after_stop_are_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "padded.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2) + b"MORE")
    manifest = read(str(path))
    (finding,) = [f for f in manifest.findings if f.kind == "trailing_bytes"]
    assert finding.severity == "warning"
    assert finding.data["count"] == 4


def test_plain_pickle_calling_a_forbidden_global(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cposix\nsystem\n(V" + f"touch {canary}".encode() + b"\ntR.")
    manifest = read(str(path))
    assert not canary.exists()
    assert [f.keys for f in manifest.security_findings] == [("posix.system",)]


def test_plain_pickle_with_storage_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pid.pkl"
    path.write_bytes(b"\x80\x02(X\x07\x00\x00\x00storageq\x00tQ.")
    with pytest.raises(
        ReadError, match=re.escape(f"Cannot read '{path}' (pickle): unexpected persistent id")
    ):
        read(str(path))


def test_whole_pickled_module_in_legacy_format(tmp_path: Path) -> None:
    path = tmp_path / "model_legacy.pt"
    torch.save(TinyNet(), path, _use_new_zipfile_serialization=False)
    manifest = read(str(path))
    assert _specs(manifest) == _torch_specs(TinyNet().state_dict())
    flagged = {f.keys[0] for f in manifest.security_findings}
    assert "fixtures.torch_files.TinyNet" in flagged
