"""The small files of a Hugging Face folder: config detection and the tokenizer's size."""

from __future__ import annotations

import json

import pytest

from ckptdiff.hf_files import is_hf_config, read_json_object, tokenizer_size


def test_a_config_names_a_model_type_or_architectures(tmp_path):
    files = {
        "bert.json": {"model_type": "bert"},
        "arch.json": {"architectures": ["X"]},
        "other.json": {"width": 3},
        "list.json": [1, 2],
    }
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    (tmp_path / "broken.json").write_text("{")
    assert is_hf_config(str(tmp_path / "bert.json"))
    assert is_hf_config(str(tmp_path / "arch.json"))
    assert not is_hf_config(str(tmp_path / "arch.json"), by_architectures=False)
    assert not is_hf_config(str(tmp_path / "other.json"))
    assert read_json_object(str(tmp_path / "list.json")) is None
    assert read_json_object(str(tmp_path / "broken.json")) is None
    assert read_json_object(str(tmp_path / "absent.json")) is None


@pytest.mark.parametrize(
    ("data", "size"),
    [
        ({"model": {"vocab": {"a": 0, "b": 1}}, "added_tokens": [{"id": 5}]}, (6, 2, 1)),
        ({"model": {"vocab": [["a", 0.0], ["b", -1.0]]}, "added_tokens": [{"id": 1}]}, (2, 2, 0)),
        ({}, (0, 0, 0)),
        # hostile or malformed: never an exception, never a bool counted as an id
        ({"model": {"vocab": {"a": True}}, "added_tokens": ["x", {"id": "3"}]}, (0, 0, 0)),
        ([1, 2], (0, 0, 0)),
        ({"model": "bpe", "added_tokens": None}, (0, 0, 0)),
    ],
)
def test_tokenizer_size(data, size):
    assert tokenizer_size(data) == size
