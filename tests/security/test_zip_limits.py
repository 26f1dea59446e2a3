"""Zip bombs are security findings (exit 3) before any size limit; large or corrupt is exit 2."""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from pathlib import Path

import pytest

from ckptdiff.cli import main
from ckptdiff.errors import ReadError, UnsafeCheckpointError
from ckptdiff.readers import unpickler as unpickler_module
from ckptdiff.readers.zip_format import ZipEntry, check_entry, parse_central_directory
from fixtures.hostile import _STATE_PKL, _write_raw_zip, _zip_entries

_LIMIT_ADVICE = "Raise ckptdiff.readers.unpickler.MAX_PICKLE_SIZE"


def _zip_with_pkl(path: Path, raw: bytes, size: int, method: int, crc: int = 0) -> Path:
    """A torch zip whose data.pkl is ``raw`` declared as ``size`` bytes (sizes may lie)."""
    rest = [(n, d, len(d), zlib.crc32(d), 0) for n, d in _zip_entries(b"")[1:]]
    _write_raw_zip(path, [("archive/data.pkl", raw, size, crc, method), *rest])
    return path


def _inspect(runner, path: Path):
    result = runner.invoke(main, ["inspect", str(path)])
    return result, result.stdout + result.stderr


def test_a_1_gib_zip_bomb_is_refused_as_a_bomb_not_as_too_large(runner, tmp_path):
    # the directory alone condemns it: 1 MB of deflated bytes declaring past the 1 GiB cap
    path = _zip_with_pkl(tmp_path / "bomb.pt", os.urandom(1 << 20), (1 << 30) + 166, 8)
    result, output = _inspect(runner, path)
    assert result.exit_code == 3, output
    assert "zip bomb" in output and "1024:1" in output
    assert "Raise" not in output and "byte limit" not in output


def test_a_deflated_entry_declaring_anything_from_nothing_is_a_bomb(runner, tmp_path):
    path = _zip_with_pkl(tmp_path / "bomb.pt", b"", 3 << 30, 8)
    result, output = _inspect(runner, path)
    assert result.exit_code == 3 and "zip bomb" in output and "from nothing" in output, output


def test_a_small_deflated_pickle_is_inflated_whatever_its_ratio(runner, tmp_path):
    data = _STATE_PKL + b"N0" * 200_000  # 400 KB of no-ops deflating far past 100:1
    raw = zlib.compress(data, 9)[2:-4]
    assert len(data) > 100 * len(raw)
    path = _zip_with_pkl(tmp_path / "small.pt", raw, len(data), 8, zlib.crc32(data))
    result, output = _inspect(runner, path)
    assert result.exit_code == 0, output


def test_a_checkpoint_rezipped_with_deflate_still_reads(runner, tmp_path):
    import torch

    saved = tmp_path / "saved.pt"
    torch.save({"w": torch.randn(64, 64)}, saved)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info))
    result, output = _inspect(runner, deflated)
    assert result.exit_code == 0 and "\nw " in result.stdout, output


def test_a_stored_pickle_over_the_cap_is_too_large_not_a_bomb(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(unpickler_module, "MAX_PICKLE_SIZE", 4 << 20)
    data = _STATE_PKL + os.urandom(5 << 20)
    path = _zip_with_pkl(tmp_path / "large.pt", data, len(data), 0, zlib.crc32(data))
    result, output = _inspect(runner, path)
    assert result.exit_code == 2, output
    assert "over the 4194304-byte limit" in output and _LIMIT_ADVICE in output


def test_a_deflated_pickle_over_the_cap_at_a_plausible_ratio_is_too_large(
    runner, tmp_path, monkeypatch
):
    monkeypatch.setattr(unpickler_module, "MAX_PICKLE_SIZE", 4 << 20)
    raw = os.urandom(100_000)  # never inflated: 5 MiB declared is 52:1
    path = _zip_with_pkl(tmp_path / "large.pt", raw, 5 << 20, 8)
    result, output = _inspect(runner, path)
    assert result.exit_code == 2 and _LIMIT_ADVICE in output, output
    assert "zip bomb" not in output


def test_a_stored_pickle_declaring_more_than_it_stores_is_corrupt(runner, tmp_path):
    path = _zip_with_pkl(tmp_path / "lying.pt", _STATE_PKL, 3 << 30, 0, zlib.crc32(_STATE_PKL))
    result, output = _inspect(runner, path)
    assert result.exit_code == 2, output
    assert f"stored uncompressed in {len(_STATE_PKL)} bytes but declares {3 << 30}" in output
    assert "Raise" not in output


def test_the_report_sized_corpus_bomb_exits_3(runner, tmp_path):
    # the corpus tests use a 64 MiB bomb; make security-report writes this 1 GiB one (1 MB on
    # disk), which is over the pickle size cap and must still be named a bomb
    from fixtures.hostile import _zip_bomb

    path = tmp_path / "zip_bomb.pt"
    _zip_bomb(1 << 30)(path, str(tmp_path / "CANARY"))
    result, output = _inspect(runner, path)
    assert result.exit_code == 3, output
    assert "zip bomb" in output and "Raise" not in output, output


def _directory(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[raw.find(b"PK\x01\x02") : raw.rfind(b"PK\x05\x06")]


def test_the_directory_refuses_a_bomb_for_every_reader(tmp_path):
    # the hub reader parses the directory with the same function, before its own size cap
    path = _zip_with_pkl(tmp_path / "bomb.pt", b"x" * 1000, 1 << 30, 8)
    with pytest.raises(UnsafeCheckpointError, match="zip bomb"):
        parse_central_directory(_directory(path), 5, "x.pt")


def test_records_that_are_never_inflated_are_not_judged_by_their_ratio(tmp_path):
    # a re-zipped all-zero tensor is legitimately far past 100:1; ckptdiff never inflates it
    path = tmp_path / "zeros.pt"
    rest = [(n, d, len(d), zlib.crc32(d), 0) for n, d in _zip_entries(b"")[:2]]
    _write_raw_zip(path, [*rest, ("archive/data/0", b"x" * 1000, 1 << 30, 0, 8)])
    assert parse_central_directory(_directory(path), 3, "x.pt")["archive/data/0"].size == 1 << 30


def test_check_entry_order():
    pkl = ZipEntry("archive/data.pkl", 1 << 30, 1 << 20, 0, 8, 0, 0)
    with pytest.raises(UnsafeCheckpointError, match=re.escape("1024:1")):
        check_entry(pkl, "x.pt")
    check_entry(pkl._replace(size=50 << 20), "x.pt")  # 50:1 passes
    check_entry(pkl._replace(size=1 << 20, compressed_size=10), "x.pt")  # 1 MiB passes
    with pytest.raises(ReadError, match="encrypted"):
        check_entry(pkl._replace(flags=1), "x.pt")
    with pytest.raises(ReadError, match="compression method 12"):
        check_entry(pkl._replace(method=12), "x.pt")
