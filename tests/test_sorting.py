"""Natural order: the whole-list sort is the sort by natural_key, ties and all."""

from __future__ import annotations

import random

import pytest

from ckptdiff.sorting import natural_key, natural_order

PARTS = [
    "layers",
    "conv",
    "1",
    "2",
    "10",
    "007",
    "7",
    ".",
    "_",
    "-",
    "a",
    "A",
    "weight",
    "9",
    "99",
    "",
    "x1y",
]


@pytest.mark.parametrize("seed", range(80))
def test_natural_order_is_sorting_by_natural_key(seed):
    rng = random.Random(seed)
    keys = ["".join(rng.choices(PARTS, k=rng.randint(0, 6))) for _ in range(rng.randint(0, 80))]
    if seed % 5 == 0:
        keys.append("odd\nkey.10")
    if seed % 7 == 0:
        keys.append("ünï.3")
    assert natural_order(keys) == sorted(keys, key=natural_key)


def test_layers_in_people_order():
    keys = [f"blocks.{i}.w" for i in (10, 2, 1, 0, 100)] + ["blocks.w", "blocks1.w", "a"]
    assert (
        natural_order(keys)
        == sorted(keys, key=natural_key)
        == [
            "a",
            "blocks1.w",
            "blocks.0.w",
            "blocks.1.w",
            "blocks.2.w",
            "blocks.10.w",
            "blocks.100.w",
            "blocks.w",
        ]
    )
