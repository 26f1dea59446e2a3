"""Layer-indexed keys collapse into one row: the whole-list grouping gives the rows the
key-at-a-time grouping gives, on keys of every kind."""

from __future__ import annotations

import random

import pytest

from ckptdiff.render.keys import group_keys, group_keys_one_by_one

PARTS = [
    "layers",
    "blocks",
    "h",
    "mlp",
    "attn",
    "0",
    "1",
    "2",
    "10",
    "31",
    "weight",
    "bias",
    "ln_1",
    "sub3",
    "007",
    "{}",
    "a\nb",
    "",
]


def _keys(rng: random.Random, n: int, odd: bool) -> list[str]:
    parts = PARTS if odd else [p for p in PARTS if "{" not in p and "\n" not in p]
    out = set()
    while len(out) < n:
        out.add(".".join(rng.choices(parts, k=rng.randint(1, 5))))
    return list(out)


@pytest.mark.parametrize("seed", range(60))
def test_whole_list_grouping_is_the_one_by_one_grouping(seed):
    rng = random.Random(seed)
    keys = _keys(rng, rng.randint(0, 60), odd=seed % 4 == 0)
    items = [(k, rng.choice([(1,), (2, 2)]), rng.choice(["float32", "int64"])) for k in keys]
    sig = lambda t: t[1:]  # noqa: E731
    assert group_keys(items, lambda t: t[0], sig) == group_keys_one_by_one(items, keys, sig)


def test_runs_collapse_with_ranges():
    keys = [f"layers.{i}.w" for i in (0, 1, 2, 5, 7, 8)] + ["head.w", "layers.3.w"]
    items = [(k, "f32") for k in keys]
    rows = group_keys(items, lambda t: t[0], lambda t: t[1])
    assert [(label, n) for label, _, n in rows] == [
        ("layers.{0-3,5,7-8}.w", 7),
        ("head.w", 1),
    ]


def test_manifest_json_lines_are_the_encoders():
    import json

    from ckptdiff.render.manifest import ONE_LINE, tensor_lines
    from ckptdiff.types import TensorSpec

    specs = [
        TensorSpec('a"\\b\u00e9\n', (2, 3), "float32", 24),
        TensorSpec("s", (), "int64", None),
        TensorSpec("z", (0,), "bfloat16", 0),
    ]
    expected = [
        ONE_LINE({"key": s.key, "shape": list(s.shape), "dtype": s.dtype, "nbytes": s.nbytes})
        for s in specs
    ]
    assert tensor_lines(specs) == expected
    assert [json.loads(line)["key"] for line in expected] == [s.key for s in specs]
