"""``inspect --depth``'s module rows, tallied in whole-list passes, are the rows the plain rule
a key at a time gives, on keys drawn from real and hostile components."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptdiff.render.manifest import _count_with_human, _tree_rows
from ckptdiff.sorting import natural_key
from ckptdiff.types import TensorSpec


def tree_rows_oracle(specs, depth):
    rows = {}
    for s in specs:
        parts = s.key.split(".")
        levels = [".".join(parts[:n]) for n in range(1, min(depth, len(parts) - 1) + 1)]
        if depth == 0:
            levels = ["(all)"]
        for name in levels or [s.key]:
            row = rows.setdefault(name, [0, 0, set()])
            row[0] += 1
            row[1] += math.prod(s.shape)
            row[2].add(s.dtype)
    out = []
    for name in sorted(rows, key=natural_key):
        tensors, numel, dtypes = rows[name]
        out.append([name, tensors, _count_with_human(numel), ",".join(sorted(dtypes))])
    return out


_PART = st.sampled_from(["model", "layers", "0", "1", "10", "07", "7", "", "a b", "x\ny", "w", "b"])
_KEY = st.lists(_PART, min_size=1, max_size=6).map(".".join)
_SPEC = st.tuples(
    _KEY,
    st.lists(st.integers(0, 9), max_size=3).map(tuple),
    st.sampled_from(["float32", "bfloat16", "int64"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_SPEC, max_size=40, unique_by=lambda t: t[0]), st.integers(-1, 5))
def test_tree_rows_are_the_rows_a_key_at_a_time(specs, depth):
    specs = [TensorSpec(k, shape, dtype) for k, shape, dtype in specs]
    assert _tree_rows(specs, depth) == tree_rows_oracle(specs, depth)
