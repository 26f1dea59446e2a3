"""Inputs by shape: parsing, defaults, synthesized values."""

from __future__ import annotations

import re

import pytest
import torch

from ckptdiff.errors import UsageError
from ckptdiff.forward_check.inputs import InputSpec, parse_batch_sizes, parse_input, synthesize


@pytest.mark.parametrize(
    ("text", "shape", "dtype"),
    [
        ("input_ids=2x77", (2, 77), "int64"),
        ("pixel_values=2x3x224x224", (2, 3, 224, 224), "float32"),
        ("attention_mask=4x16:bool", (4, 16), "bool"),
        ("labels=1x8", (1, 8), "int64"),
        ("x=3:bf16", (3,), "bfloat16"),
    ],
)
def test_parse_input(text, shape, dtype):
    spec = parse_input(text)
    assert (spec.shape, spec.dtype) == (shape, dtype)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("input_ids", "expected NAME=SHAPE[:DTYPE]"),
        ("input_ids=2xa", "the shape must be positive integers"),
        ("input_ids=0x4", "the shape must be positive integers"),
        ("input_ids=2x4:int99", "unknown dtype 'int99'"),
    ],
)
def test_parse_input_errors(text, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_input(text)


def test_batch_sizes():
    assert parse_batch_sizes("1,2,8") == (1, 2, 8)
    assert parse_batch_sizes("2,2") == (2,)
    with pytest.raises(UsageError, match=re.escape("expected positive integers")):
        parse_batch_sizes("1,x")


def test_synthesized_batch_is_ragged_like_a_collated_one():
    specs = [
        InputSpec("input_ids", (2, 10), "int64"),
        InputSpec("attention_mask", (2, 10), "int64"),
        InputSpec("labels", (2, 10), "int64"),
    ]
    t = synthesize(specs, 3, {"input_ids": 50, "labels": 50}, real=True, pad_id=7)
    assert t["attention_mask"].sum(1).tolist() == [10, 9, 8]
    assert int(t["input_ids"].max()) < 50
    assert t["input_ids"][2, 8:].tolist() == [7, 7]  # padded with the pad id
    assert t["labels"][1, 9:].tolist() == [-100]  # padded labels ignored by the loss


def test_known_values_follow_the_batch_size():
    values = torch.tensor([[1, 2], [3, 4]])
    spec = InputSpec("input_ids", (2, 2), "int64", values)
    assert synthesize([spec], 3, {}, real=True)["input_ids"].tolist() == [[1, 2], [3, 4], [1, 2]]
    assert synthesize([spec], 1, {}, real=False)["input_ids"].shape == (1, 2)


def test_data_mode_refuses_to_allocate_huge_inputs():
    spec = parse_input("input_ids=2x100000000")
    message = "Cannot run data mode with input_ids=2x100000000: over 67108864 elements"
    with pytest.raises(UsageError, match=re.escape(message)):
        synthesize([spec], 2, {}, real=True)
