"""Numbers and lists worded for people, the same in every message."""

from __future__ import annotations

import pytest

from ckptdiff.wording import human, human_bytes, listed, percent, sampled, shape_str


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1_000, "1.0K"),
        (22_713_216, "22.7M"),
        (1.5e9, "1.5B"),
        (-2_000_000, "-2.0M"),
    ],
)
def test_human_counts(n, text):
    assert human(n) == text


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (999, "999 B"), (11_400, "11.4 kB"), (90_900_000, "90.9 MB")]
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("part", "whole", "text"),
    [(0, 10, "0%"), (1, 0, "0%"), (5, 2, "250%"), (11, 1000, "1.1%"), (1, 10**9, "<0.0001%")],
)
def test_percent(part, whole, text):
    assert percent(part, whole) == text


def test_shape_text():
    assert shape_str((1024, 3, 14, 14)) == "[1024, 3, 14, 14]" and shape_str(()) == "[]"


def test_lists_and_samples_count_exactly_the_rest():
    keys = [f"k{i}" for i in range(7)]
    assert listed(keys) == "k0, k1 and 5 more"
    assert listed(keys, 7) == ", ".join(keys) and listed([]) == ""
    assert sampled(keys, 3) == ("k0", "k1", "k2", "... 4 more")
    assert sampled(keys, 7) == tuple(keys)
    assert len(sampled([str(i) for i in range(100)])) == 6  # five samples and the count
