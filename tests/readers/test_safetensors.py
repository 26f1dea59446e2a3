"""The safetensors reader: specs equal safetensors' own, header only, every defect one error."""

from __future__ import annotations

import json
import os
import re
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ckptdiff import read
from ckptdiff.errors import ReadError, SelectError, SourceNotFoundError, UnsupportedFormatError
from ckptdiff.readers import byte_source

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def oracle(path) -> dict[str, tuple[tuple[int, ...], str]]:
    """What safetensors' own lazy reader says: key -> (shape, torch dtype name)."""
    out = {}
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            t = torch.empty(0, dtype=_SF_TO_TORCH[sl.get_dtype()])
            out[k] = (tuple(sl.get_shape()), str(t.dtype).removeprefix("torch."))
    return out


_SF_TO_TORCH = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def mine(path) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (s.shape, s.dtype) for k, s in read(str(path)).tensors.items()}


@pytest.fixture
def many_dtypes(tmp_path):
    tensors = {
        f"t.{i}.{str(d).removeprefix('torch.')}": torch.zeros(3, i + 1).to(d)
        for i, d in enumerate(DTYPES)
    }
    tensors["scalar"] = torch.tensor(1.5)
    tensors["empty"] = torch.zeros(0, 4)
    path = tmp_path / "many.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "x"})
    return path


def test_specs_equal_safe_open(many_dtypes):
    assert mine(many_dtypes) == oracle(many_dtypes)
    m = read(str(many_dtypes))
    assert m.format == "safetensors"
    assert m.metadata == {"format": "pt", "note": "x"}
    assert m.tensors["scalar"].shape == ()
    assert m.tensors["t.0.float32"].nbytes == 3 * 1 * 4


def test_real_minilm_equals_safe_open(minilm_dir):
    path = minilm_dir / "model.safetensors"
    assert mine(path) == oracle(path)
    m = read(str(minilm_dir))  # the folder resolves to its model.safetensors
    assert m.tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert m.parameter_count == 22_713_216 + 512  # 22.7M weights + position_ids


def test_reads_header_only_and_survives_garbage_data(tmp_path, monkeypatch):
    path = tmp_path / "big.safetensors"
    save_file({"a": torch.zeros(512, 1024), "b": torch.zeros(256)}, str(path))
    before = mine(path)
    size = path.stat().st_size
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    with open(path, "r+b") as f:  # overwrite the whole data region
        f.seek(8 + n)
        f.write(os.urandom(size - 8 - n))
    assert mine(path) == before

    read_bytes = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, k=-1):
            data = self.f.read(k)
            read_bytes.append(len(data))
            return data

        def __getattr__(self, attribute):  # seek, fileno, close
            return getattr(self.f, attribute)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(
        byte_source, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False
    )
    read(str(path))
    assert sum(read_bytes) == 8 + n
    assert sum(read_bytes) < size / 1000


def test_aliases_from_save_model_metadata(tmp_path):
    from safetensors.torch import save_model

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = self.a

    path = tmp_path / "tied.safetensors"
    save_model(Tied(), str(path))
    m = read(str(path))
    assert len(m.tensors) == 2
    dropped = {k for k in ("a.weight", "b.weight") if k not in m.tensors}
    assert len(dropped) == 1
    assert m.aliases[dropped.pop()] in m.tensors


def _write(path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return str(path)


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header, data, length, message",
    [
        (
            {"a": T},
            b"\0" * 4,
            None,
            "tensors need 8 bytes but the file holds 4 after the header (truncated?)",
        ),
        ({"a": T}, b"\0" * 12, None, "4 trailing bytes belong to no tensor"),
        (
            {"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "unknown dtype 'F33'",
        ),
        (
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "shape [3] of F32 needs 12 bytes but its data_offsets span 8",
        ),
        (
            {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "shape must be a list of non-negative integers",
        ),
        (
            {"a": T, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            b"\0" * 12,
            None,
            "overlap another tensor",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            b"\0" * 12,
            None,
            "gap in the data region",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}},
            b"\0" * 8,
            None,
            "data_offsets must be [begin, end]",
        ),
        (
            b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": 1}',
            b"\0" * 8,
            None,
            "duplicate key 'a'",
        ),
        (b'{"a": [1, 2', b"", None, "header is not valid JSON"),
        (b"[1, 2]", b"", None, "header is not a JSON object"),
        ({"__metadata__": {"x": 1}}, b"", None, "__metadata__): must map strings to strings"),
        ({"a": T}, b"\0" * 8, 10**6, "runs past the end"),
        ({"a": T}, b"\0" * 8, 10**9, "header length 1000000000 exceeds 100000000 bytes"),
    ],
)
def test_header_defects_are_one_read_error(tmp_path, header, data, length, message):
    path = _write(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(ReadError, match=re.escape(message)) as e:
        from ckptdiff.readers.safetensors_file import read_safetensors

        read_safetensors(path)
    assert "bad.safetensors" in str(e.value)
    assert "\n" not in str(e.value)


def test_deeply_nested_json_is_refused(tmp_path):
    raw = b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = _write(tmp_path / "deep.safetensors", raw)
    with pytest.raises(ReadError, match="nested too deeply"):
        from ckptdiff.readers.safetensors_file import read_safetensors

        read_safetensors(path)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(SourceNotFoundError, match=re.escape("Cannot read 'nope.pt': no such file")):
        read("nope.pt")
    with pytest.raises(SourceNotFoundError, match="it holds no weights"):
        read(str(tmp_path))


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.bin"
    p.write_text("hello, these are not weights\n")
    with pytest.raises(UnsupportedFormatError, match="no checkpoint format ckptdiff knows"):
        read(str(p))
    e = tmp_path / "empty.safetensors"
    e.write_bytes(b"")
    with pytest.raises(ReadError, match="the file is empty"):
        read(str(e))


def test_sniffs_by_magic_not_extension(tmp_path):
    path = tmp_path / "weights.pt"  # a safetensors file with a torch extension
    save_file({"w": torch.zeros(2, 2)}, str(path))
    m = read(str(path))
    assert m.format == "safetensors" and m.tensors["w"].shape == (2, 2)


def test_select_on_safetensors_is_refused(many_dtypes):
    with pytest.raises(SelectError, match="a safetensors file is one flat list of tensors"):
        read(str(many_dtypes), select="state_dict")


def test_folder_with_several_weight_files_needs_a_choice(tmp_path):
    save_file({"w": torch.zeros(1)}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(UnsupportedFormatError, match="holds 2 weight files and no index"):
        read(str(tmp_path))
