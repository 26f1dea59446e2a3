"""Byte sources: one parser per format, whatever carries the bytes.

A source that batches its reads (as the HTTP range source does: a request per read) must give
the same manifests and errors as a local file, with fewer reads.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from safetensors.torch import save_file

from ckptdiff.errors import ReadError
from ckptdiff.readers.byte_source import LocalFile
from ckptdiff.readers.folder import choose_weights, resolve_folder
from ckptdiff.readers.safetensors_file import read_safetensors_source
from ckptdiff.readers.torch_zip import read_zip_source
from fixtures.torch_files import BENIGN, write_zip

ZIP_FIXTURES = sorted(name for name, fixture in BENIGN.items() if fixture.is_zip)


class CountingSource(LocalFile):
    """A local file that counts its reads and may batch them, as a remote source does."""

    def __init__(self, path: Path, batch_reads: bool) -> None:
        data = path.read_bytes()
        super().__init__(io.BytesIO(data), len(data), name=str(path), path=str(path))
        self.batch_reads = batch_reads
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, n: int) -> bytes:
        self.reads.append((offset, n))
        return super().read(offset, n)


def _manifest(src, path: Path):
    return read_zip_source(src, source=str(path), file=path.name)


@pytest.mark.parametrize("fixture", ZIP_FIXTURES)
def test_batched_reads_give_the_local_manifest_with_fewer_reads(
    tmp_path: Path, fixture: str
) -> None:
    path = BENIGN[fixture].writer(tmp_path)
    one_by_one, batched = CountingSource(path, False), CountingSource(path, True)
    assert _manifest(one_by_one, path) == _manifest(batched, path)
    # the tail, the directory, then data.pkl (and byteorder) in one read instead of two each
    assert len(batched.reads) == 3
    assert len(one_by_one.reads) > len(batched.reads)


@pytest.mark.parametrize("batch_reads", [False, True])
def test_a_corrupt_data_pkl_is_the_same_error_both_ways(tmp_path: Path, batch_reads: bool) -> None:
    path = write_zip(tmp_path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("tiny/data.pkl")
    data = bytearray(path.read_bytes())
    local_header = info.header_offset
    name_len, extra_len = (
        int.from_bytes(data[local_header + i : local_header + i + 2], "little") for i in (26, 28)
    )
    at = local_header + 30 + name_len + extra_len + 10
    data[at] ^= 0xFF  # one byte of data.pkl
    path.write_bytes(bytes(data))
    with pytest.raises(ReadError, match=r"\(tiny/data.pkl\): its CRC does not match"):
        _manifest(CountingSource(path, batch_reads), path)


def test_local_file_reads_stop_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789")
    with LocalFile.open(str(path)) as src:
        assert (src.size, src.read(8, 10), src.read(20, 4), src.read(3, 0)) == (10, b"89", b"", b"")
        assert src.tail(4) == (6, b"6789")
        assert src.tail(100) == (0, b"0123456789")


def test_safetensors_header_in_the_first_read_costs_no_second(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(3, 2)}, str(path))
    with_head, without = CountingSource(path, True), CountingSource(path, False)
    head = with_head.read(0, 4096)
    a = read_safetensors_source(with_head, source="x", name="m.safetensors", head=head)
    b = read_safetensors_source(without, source="x", name="m.safetensors")
    assert a.tensors == b.tensors and a.tensors["w"].shape == (3, 2)
    assert len(with_head.reads) == 1 and len(without.reads) == 2


def test_a_local_folder_and_a_list_of_names_choose_alike(tmp_path: Path) -> None:
    names = ["config.json", "a.bin", "b.safetensors", "c.pt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.safetensors").mkdir()  # a folder is not a weights file
    assert resolve_folder(str(tmp_path), "t") == str(tmp_path / choose_weights(names, "t"))
    assert choose_weights(names, "t") == "b.safetensors"
