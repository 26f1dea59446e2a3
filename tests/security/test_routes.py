"""The holes closed in the readers, each on the smallest file that showed it."""

from __future__ import annotations

import copyreg
import os
import pickle
import re
import struct
import time

import pytest

from ckptdiff.errors import ReadError, UnsafeCheckpointError, UnsafeUnreadableError
from ckptdiff.readers import read
from ckptdiff.readers import unpickler as unpickler_module
from ckptdiff.readers.unpickler.opcodes import scan_pickle
from ckptdiff.readers.unpickler.restricted import unpickle
from fixtures.hostile import _STATE_PKL, ROUTES, _with_payload


@pytest.fixture
def registered_extension():
    """os.system registered as extension code 4242 and already resolved once, as a library
    using copyreg.add_extension would leave the process."""
    copyreg.add_extension("os", "system", 4242)
    try:
        pickle.loads(b"\x80\x02\x83\x92\x10.")  # the C unpickler caches os.system for 4242
        yield
    finally:
        copyreg.remove_extension("os", "system", 4242)
        copyreg.clear_extension_cache()


def test_extension_codes_never_reach_copyreg(registered_extension, tmp_path):
    canary = tmp_path / "CANARY"
    data = _with_payload(ROUTES["ext_code"][1](str(canary)))
    result = unpickle(data, "x.pt")
    assert not canary.exists()
    assert [f.keys for f in result.findings] == [("copyreg._extension_registry.code 4242",)]
    assert result.findings[0].severity == "security"
    assert set(result.root) == {"w", "extra"}


def test_frames_must_fit_the_data():
    pickle_data = b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + _STATE_PKL[2:]
    assert scan_pickle(pickle_data) is None
    with pytest.raises(ReadError, match=re.escape("ends before its STOP opcode")):
        unpickle(pickle_data, "x.pt")


def test_an_opcode_flood_is_scanned_fast():
    flood = b"\x80\x02" + b"N0" * 8_400_000 + b"}."
    start = time.perf_counter()
    assert scan_pickle(flood) == len(flood)
    assert time.perf_counter() - start < 2.0


def test_a_slow_pickle_stops_at_the_deadline(monkeypatch):
    monkeypatch.setattr(unpickler_module, "MAX_SECONDS", 0.0)
    with pytest.raises(ReadError, match="took more than 0 seconds"):
        unpickle(_STATE_PKL, "x.pt")


def test_a_payload_then_a_broken_record_is_still_a_security_error(tmp_path):
    data = _with_payload(ROUTES["persistent_id"][1](str(tmp_path / "CANARY")))
    with pytest.raises(UnsafeUnreadableError, match="it names 'os.system'") as info:
        unpickle(data, "x.pt")
    assert isinstance(info.value, UnsafeCheckpointError) and info.value.exit_code == 3


def test_hub_cache_snapshot_links_are_inside(tmp_path):
    import json

    from fixtures.hostile import _safetensors_bytes

    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "1").write_bytes(_safetensors_bytes())
    (repo / "blobs" / "2").write_text(json.dumps({"weight_map": {"w": "model-1.safetensors"}}))
    os.symlink("../../blobs/1", snapshot / "model-1.safetensors")
    os.symlink("../../blobs/2", snapshot / "model.safetensors.index.json")
    assert list(read(str(snapshot)).tensors) == ["w"]
    # the same link from an ordinary folder is refused
    plain = tmp_path / "plain"
    plain.mkdir()
    os.symlink(repo / "blobs" / "1", plain / "model-1.safetensors")
    (plain / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-1.safetensors"}})
    )
    with pytest.raises(UnsafeCheckpointError, match="outside the checkpoint's folder"):
        read(str(plain))


def test_pickles_after_stop_are_read_for_globals(tmp_path):
    path = tmp_path / "two.pkl"
    path.write_bytes(b"\x80\x02}." + b"\x80\x02" + ROUTES["io_open"][1](str(tmp_path / "C")) + b".")
    manifest = read(str(path))
    assert [f.keys for f in manifest.security_findings] == [("io.open",)]
    assert "pickle 2 (after the first STOP)" in manifest.security_findings[0].message
