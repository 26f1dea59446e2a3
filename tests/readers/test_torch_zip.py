"""The torch zip reader: torch is the oracle on benign files; storage bytes are never read."""

from __future__ import annotations

import builtins
import io
import os
import pickletools
import re
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from ckptdiff.errors import ReadError, SelectError, UnsupportedFormatError
from ckptdiff.readers import byte_source, read
from ckptdiff.readers import torch_zip as torch_zip_module
from ckptdiff.readers.torch_zip import read_torch_zip
from fixtures.torch_files import (
    BENIGN,
    Fixture,
    TinyNet,
    load_with_torch,
    replace_zip_entry,
    storage_entry_spans,
    write_lightning,
    write_many,
    write_model_and_ema,
    write_module_pickle,
    write_nested_state_dict,
    write_sized,
    write_torchscript,
    write_zip,
)

ZIP_FIXTURES = sorted(name for name, fixture in BENIGN.items() if fixture.is_zip)


def _specs(manifest) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, t.shape, t.dtype) for k, t in manifest.tensors.items()]


def _torch_specs(state_dict: dict, prefix: str = "") -> list[tuple[str, tuple[int, ...], str]]:
    out = []
    for k, v in state_dict.items():
        if isinstance(v, torch.Tensor):
            out.append((prefix + k, tuple(v.shape), str(v.dtype).removeprefix("torch.")))
        elif isinstance(v, dict):
            out.extend(_torch_specs(v, f"{prefix}{k}."))
    return out


@pytest.mark.parametrize("fixture", ZIP_FIXTURES)
def test_specs_equal_torch_load_on_meta(tmp_path: Path, fixture: str) -> None:
    path = BENIGN[fixture].writer(tmp_path)
    manifest = read_torch_zip(str(path), str(path))
    expected = _torch_specs(load_with_torch(path, BENIGN[fixture]))
    assert _specs(manifest) == expected
    assert manifest.format == "torch-zip"
    assert manifest.selected == BENIGN[fixture].selected
    assert not manifest.security_findings
    assert {t.file for t in manifest.tensors.values()} == {path.name}


def test_read_dispatches_zip_files(tmp_path: Path) -> None:
    path = write_zip(tmp_path)
    manifest = read(str(path))
    assert manifest.format == "torch-zip"
    assert manifest.tensors["bn.num_batches_tracked"].dtype == "int64"
    assert manifest.tensors["conv.weight"].nbytes == 4 * 3 * 3 * 3 * 4


def test_lightning_checkpoint_metadata(tmp_path: Path) -> None:
    path = write_lightning(tmp_path)
    manifest = read(str(path))
    assert manifest.selected == "state_dict"
    assert manifest.candidates == ("state_dict",)
    assert manifest.metadata["epoch"] == 7
    assert manifest.metadata["global_step"] == 1234
    assert manifest.metadata["hyper_parameters"] == {
        "lr": 1e-3,
        "width": 4,
        "name": "tiny",
        "tags": ["a", "b"],
    }
    assert "state_dict" not in manifest.metadata
    assert next(iter(manifest.tensors)) == "model.conv.weight"


def test_model_ema_preferred_and_others_reported(tmp_path: Path) -> None:
    path = write_model_and_ema(tmp_path)
    manifest = read(str(path))
    assert manifest.selected == "model_ema"
    assert manifest.candidates == ("model", "model_ema")
    (finding,) = [f for f in manifest.findings if f.kind == "container"]
    assert finding.severity == "info"
    assert "--select model" in finding.message
    assert manifest.metadata == {"epoch": 10}


def test_select_picks_another_state_dict(tmp_path: Path) -> None:
    path = write_model_and_ema(tmp_path)
    manifest = read(str(path), select="model")
    assert manifest.selected == "model"
    assert _specs(manifest) == _torch_specs(load_with_torch(path, Fixture(Path, "model")))


def test_nested_state_dict_is_flattened(tmp_path: Path) -> None:
    path = write_nested_state_dict(tmp_path)
    manifest = read(str(path))
    assert list(manifest.tensors) == ["head.weight", "encoder.weight", "encoder.bias"]
    (skipped,) = [f for f in manifest.findings if f.kind == "non_tensor_entry"]
    assert skipped.keys == ("quant._extra_state",)
    assert skipped.severity == "info"


def test_whole_pickled_module_is_listed_and_flagged(tmp_path: Path) -> None:
    path = write_module_pickle(tmp_path)
    manifest = read(str(path))
    expected = [
        (k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in TinyNet().state_dict().items()
    ]
    assert _specs(manifest) == expected
    flagged = {f.keys[0] for f in manifest.security_findings}
    assert "fixtures.torch_files.TinyNet" in flagged
    assert "torch.nn.modules.conv.Conv2d" in flagged


def test_twenty_thousand_tensors(tmp_path: Path) -> None:
    path = write_many(tmp_path, 20_000)
    manifest = read(str(path))
    assert len(manifest.tensors) == 20_000
    assert manifest.tensors["blocks.19999.norm.weight"].shape == (2,)
    assert manifest.parameter_count == 40_000


# --- laziness --------------------------------------------------------------------------------


def test_storage_bytes_are_never_interpreted(tmp_path: Path) -> None:
    path = write_sized(tmp_path, 2)
    before = _specs(read(str(path)))
    spans = storage_entry_spans(path)
    assert spans
    with open(path, "r+b") as f:
        for offset, size in spans:
            f.seek(offset)
            f.write(os.urandom(size))
    assert _specs(read(str(path))) == before


def test_bytes_read_stay_near_data_pkl_and_directory(tmp_path: Path, monkeypatch) -> None:
    path = write_sized(tmp_path, 4)
    counted = {"bytes": 0}

    class CountingFile(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            counted["bytes"] += len(data)
            return data

        def readinto(self, buffer) -> int:  # type: ignore[override]
            n = super().readinto(buffer)
            counted["bytes"] += n or 0
            return n

    def counting_open(file, mode="r", *args, **kwargs):
        assert mode == "rb"
        return CountingFile(file, "r")

    monkeypatch.setattr(byte_source, "open", counting_open, raising=False)
    manifest = read_torch_zip(str(path), str(path))
    assert len(manifest.tensors) == 4
    with zipfile.ZipFile(path) as z:
        pkl = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
        directory = sum(46 + len(i.filename) + len(i.extra) for i in z.infolist())
    budget = pkl.file_size + directory + 1024 + 256  # + the end record search, local headers
    size = path.stat().st_size
    assert size > 4_000_000
    assert counted["bytes"] <= min(budget, size // 20)


# --- errors ----------------------------------------------------------------------------------


def _cannot_read(path: Path) -> str:
    return re.escape(f"Cannot read '{path}'")


def test_truncated_zip(tmp_path: Path) -> None:
    full = write_zip(tmp_path)
    path = tmp_path / "truncated.pt"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ReadError, match=_cannot_read(path) + r" \(zip directory\): .*truncated"):
        read(str(path))


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/version", "3")
        z.writestr("archive/data/0", b"\x00" * 8)
    expected = _cannot_read(path) + re.escape(" (zip): it holds no data.pkl")
    with pytest.raises(ReadError, match=expected):
        read(str(path))


def test_garbage_in_data_pkl(tmp_path: Path) -> None:
    src = write_zip(tmp_path)
    path = tmp_path / "garbage.pt"
    replace_zip_entry(src, path, "/data.pkl", b"\x80\x02}q\x00(\xff\xfe garbage")
    with pytest.raises(ReadError, match=_cannot_read(path) + re.escape(" (tiny/data.pkl): ")) as e:
        read(str(path))
    assert "\n" not in str(e.value)


def test_truncated_data_pkl(tmp_path: Path) -> None:
    src = write_zip(tmp_path)
    data = zipfile.ZipFile(src).read("tiny/data.pkl")
    path = tmp_path / "cut.pt"
    replace_zip_entry(src, path, "/data.pkl", data[: len(data) // 2])
    with pytest.raises(ReadError, match=_cannot_read(path) + r" \(tiny/data.pkl\): .*truncated"):
        read(str(path))


def test_storage_record_size_disagrees_with_shape(tmp_path: Path) -> None:
    src = write_zip(tmp_path)
    path = tmp_path / "short.pt"
    replace_zip_entry(src, path, "/data/0", b"\x00" * 4)
    with pytest.raises(
        ReadError, match=_cannot_read(path) + re.escape(" (tiny/data/0): the record holds 4 bytes")
    ):
        read(str(path))


def test_shape_larger_than_storage(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    torch.save({"w": torch.ones(2, 3)}, src)
    data = zipfile.ZipFile(src).read("src/data.pkl")
    # the size tuple (2, 3) is pickled as BININT1 2, BININT1 3, TUPLE2; make it (2, 30)
    patched = data.replace(b"K\x02K\x03\x86", b"K\x02K\x1e\x86", 1)
    assert patched != data
    path = tmp_path / "lying.pt"
    replace_zip_entry(src, path, "/data.pkl", patched)
    with pytest.raises(
        ReadError, match=_cannot_read(path) + r" \(src/data.pkl\): .*needs 33 elements .* holds 6"
    ):
        read(str(path))


def test_unknown_select(tmp_path: Path) -> None:
    path = write_model_and_ema(tmp_path)
    with pytest.raises(
        SelectError,
        match=re.escape(
            f"Cannot read '{path}' (--select encoder): no state dict at 'encoder'. "
            "Candidates: model, model_ema."
        ),
    ):
        read(str(path), select="encoder")


def test_ambiguous_containers(tmp_path: Path) -> None:
    path = tmp_path / "two.pt"
    torch.save(
        {"student": nn.Linear(2, 2).state_dict(), "teacher": nn.Linear(2, 2).state_dict()}, path
    )
    with pytest.raises(
        SelectError,
        match=re.escape(f"Cannot read '{path}' (container): it holds 2 state dicts")
        + ".*student, teacher.*--select student",
    ):
        read(str(path))
    assert read(str(path), select="teacher").selected == "teacher"


def test_torchscript_archive(tmp_path: Path) -> None:
    path = write_torchscript(tmp_path)
    with pytest.raises(
        UnsupportedFormatError, match=_cannot_read(path) + re.escape(" (TorchScript archive)")
    ):
        read(str(path))


def test_error_names_the_source_as_given(tmp_path: Path, monkeypatch) -> None:
    write_torchscript(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsupportedFormatError, match=re.escape("Cannot read 'scripted.pt' (")):
        read("scripted.pt")


# --- forbidden globals -----------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _assert_flagged_and_listed(path: Path, canary: Path, qualified: str) -> None:
    manifest = read(str(path))
    assert not canary.exists()
    assert list(manifest.tensors) == ["weight", "bias"]
    flagged = [f for f in manifest.security_findings if f.kind == "unsafe_global"]
    assert [f.keys for f in flagged] == [(qualified,)]
    module, name = qualified.rsplit(".", 1)
    assert flagged[0].data == {"module": module, "name": name}
    assert qualified in flagged[0].message


@pytest.mark.parametrize("protocol", [2, 4])
def test_os_system_global_is_reported_not_run(tmp_path: Path, protocol: int) -> None:
    canary = tmp_path / "CANARY"
    path = tmp_path / "hostile.pt"
    sd = nn.Linear(2, 3).state_dict()
    torch.save({**sd, "hook": _RunsCommand(f"touch {canary}")}, path, pickle_protocol=protocol)
    data = zipfile.ZipFile(path).read("hostile/data.pkl")
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert ("STACK_GLOBAL" if protocol == 4 else "GLOBAL") in ops
    _assert_flagged_and_listed(path, canary, f"{os.system.__module__}.system")


def test_python2_module_name_is_mapped_before_the_check(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    src = tmp_path / "src.pt"
    torch.save(dict(nn.Linear(2, 3).state_dict()), src)
    data = zipfile.ZipFile(src).read("src/data.pkl")
    assert data.endswith(b"u.")
    command = f"touch {canary}".encode()
    extra = (
        b"X\x04\x00\x00\x00hook"
        + b"ccommands\ngetoutput\n"
        + b"(X"
        + len(command).to_bytes(4, "little")
        + command
        + b"tR"
    )
    path = tmp_path / "py2.pt"
    replace_zip_entry(src, path, "/data.pkl", data[:-2] + extra + b"u.")
    _assert_flagged_and_listed(path, canary, "subprocess.getoutput")


def test_reading_never_calls_pickle_load(tmp_path: Path, monkeypatch) -> None:
    path = write_lightning(tmp_path)
    import pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle.load called")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    real_import = builtins.__import__
    imported = []

    def spy(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    assert len(read(str(path)).tensors) == 9
    assert not [n for n in imported if n.startswith("torch")]


# --- zip variants ----------------------------------------------------------------------------


def _rewrite(src: Path, dst: Path, compression: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def test_zip64_entries_and_deflated_records(tmp_path: Path, monkeypatch) -> None:
    src = write_zip(tmp_path)
    expected = _specs(read(str(src)))
    deflated = tmp_path / "deflated.pt"
    _rewrite(src, deflated, zipfile.ZIP_DEFLATED)
    assert _specs(read(str(deflated))) == expected
    zip64 = tmp_path / "zip64.pt"
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 16)  # every larger entry gets zip64 sizes
    _rewrite(src, zip64)
    monkeypatch.undo()
    with zipfile.ZipFile(zip64) as z:
        assert all(len(i.extra) >= 12 for i in z.infolist() if i.file_size > 16)
    assert _specs(read(str(zip64))) == expected


def test_archive_comment_is_skipped(tmp_path: Path) -> None:
    path = write_zip(tmp_path)
    expected = _specs(read(str(path)))
    with zipfile.ZipFile(path, "a") as z:
        z.comment = b"c" * 5000
    assert _specs(read(str(path))) == expected


def test_zip64_end_record_for_many_entries(tmp_path: Path) -> None:
    path = tmp_path / "many_entries.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        for i in range(70_000):
            z.writestr(f"archive/extra/{i}", b"")
    assert read(str(path)).tensors == {}


def test_entry_count_cap(tmp_path: Path, monkeypatch) -> None:
    path = write_zip(tmp_path)
    monkeypatch.setattr(torch_zip_module, "MAX_ZIP_ENTRIES", 3)
    with pytest.raises(ReadError, match=_cannot_read(path) + r" \(zip directory\): it declares"):
        read(str(path))


def test_corrupt_data_pkl_crc(tmp_path: Path) -> None:
    path = write_zip(tmp_path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("tiny/data.pkl")
    offset = info.header_offset
    with open(path, "r+b") as f:
        f.seek(offset + 26)
        name_len = int.from_bytes(f.read(2), "little")
        extra_len = int.from_bytes(f.read(2), "little")
        f.seek(offset + 30 + name_len + extra_len + 10)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ReadError, match=_cannot_read(path) + r" \(tiny/data.pkl\): its CRC"):
        read(str(path))


def test_data_pkl_size_cap(tmp_path: Path, monkeypatch) -> None:
    from ckptdiff.readers import unpickler

    path = write_zip(tmp_path)
    monkeypatch.setattr(unpickler, "MAX_PICKLE_SIZE", 100)
    expected = _cannot_read(path) + r" \(tiny/data.pkl\): it is \d+ bytes, over the 100-byte"
    with pytest.raises(ReadError, match=expected):
        read(str(path))
