"""Mutated valid files: a reader either succeeds or raises its own error, and never hangs.

``CKPTDIFF_FUZZ_EXAMPLES`` sets the examples per target (``make fuzz`` runs thousands).
"""

from __future__ import annotations

import io
import os
import signal
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptdiff.errors import CkptDiffError
from ckptdiff.readers import read
from ckptdiff.readers.torch_zip import manifest_from_zip_parts
from fixtures.hostile import _LEGACY_STATE, _STATE_PKL, _legacy, _safetensors_bytes

EXAMPLES = int(os.environ.get("CKPTDIFF_FUZZ_EXAMPLES", "60"))
#: Seconds one example may take before it counts as a hang.
TIMEOUT = int(os.environ.get("CKPTDIFF_FUZZ_TIMEOUT", "10"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Hang(Exception):
    """An example ran past :data:`TIMEOUT`."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _torch_zip() -> bytes:
    """A small torch zip with a nested container, several dtypes and shared storages."""
    import torch

    buf = io.BytesIO()
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save(
        {
            "state_dict": {
                "w": w,
                "wt": w.t(),
                "b": torch.zeros(3, dtype=torch.bfloat16),
                "n": torch.tensor(7),
            },
            "epoch": 2,
            "cfg": {"lr": 0.1},
        },
        buf,
    )
    return buf.getvalue()


SEEDS: dict[str, bytes] = {
    "safetensors": _safetensors_bytes(),
    "zip": _torch_zip(),
    "legacy": _legacy(_LEGACY_STATE),
}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` after a few bit flips, truncations, splices, duplications and length edits."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "truncate", "splice", "duplicate", "length", "byte"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "duplicate":
            end = draw(st.integers(at, min(len(data), at + 64)))
            data[at:at] = data[at:end]
        else:  # overwrite a length-like field with an extreme value
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(
                st.sampled_from(
                    [0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, (1 << 63) - 1, (1 << 64) - 1]
                )
            )
            data[at : at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    return bytes(data)


def _read_bytes(tmp: Path, name: str, data: bytes) -> None:
    path = tmp / name
    path.write_bytes(data)
    with time_limit(TIMEOUT):
        try:
            read(str(path))
        except CkptDiffError:
            pass


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _target(kind: str, suffix: str) -> Callable[..., None]:
    @FUZZ
    @given(data=mutated(SEEDS[kind]))
    def run(fuzz_dir: Path, data: bytes) -> None:
        _read_bytes(fuzz_dir, f"mutated{suffix}", data)

    return run


test_mutated_safetensors_headers = _target("safetensors", ".safetensors")
test_mutated_torch_zips = _target("zip", ".pt")
test_mutated_legacy_files = _target("legacy", ".pth")


def _data_pkl(seed: bytes) -> tuple[bytes, dict[str, int]]:
    with zipfile.ZipFile(io.BytesIO(seed)) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
        return z.read("archive/data.pkl"), sizes


DATA_PKL, RECORD_SIZES = _data_pkl(SEEDS["zip"])


@FUZZ
@given(data=st.one_of(mutated(DATA_PKL), mutated(_STATE_PKL)))
def test_mutated_pickle_streams(data: bytes) -> None:
    with time_limit(TIMEOUT):
        try:
            manifest_from_zip_parts(
                data, RECORD_SIZES, "archive/", name="x.pt", source="x.pt", file="x.pt", files=()
            )
        except CkptDiffError:
            pass


@FUZZ
@given(
    header=st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(1 << 70), 1 << 70)
        | st.floats()
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=12,
    ),
    tail=st.integers(0, 64),
)
def test_arbitrary_json_headers(fuzz_dir: Path, header: object, tail: int) -> None:
    import json

    raw = json.dumps(header).encode()
    _read_bytes(fuzz_dir, "json.safetensors", struct.pack("<Q", len(raw)) + raw + bytes(tail))
