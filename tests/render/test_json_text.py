"""Reports written column by column are the text ``json.dumps(indent=2)`` writes, byte for
byte, whatever the values: hostile strings (quotes, braces, NUL, the splice marker itself,
non-ASCII), non-finite floats, bools, nulls, shapes, mixed and nested columns."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptdiff.json_text import dumps_indented
from ckptdiff.types import Coverage, Report, TensorSpec

_TEXT = st.one_of(
    st.text(max_size=8),
    st.sampled_from(['a"b', "}, {", '{", "', "\0records 0\0", "\u00e9\u4e2d", "x\ny", "{}"]),
)
_SCALAR = st.one_of(
    _TEXT,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
_VALUE = st.one_of(
    _SCALAR,
    st.lists(st.integers(0, 9), max_size=3),
    st.lists(st.booleans(), max_size=2),
    st.lists(_SCALAR, max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def _doc(draw):
    keys = draw(st.lists(st.sampled_from(["module", "n", "shape", "share", "x"]), unique=True))
    n = draw(st.sampled_from([0, 1, 63, 64, 100]))
    uniform = draw(st.booleans())
    columns = {k: draw(_SCALAR if uniform else _VALUE) for k in keys}
    rows = []
    for i in range(n):
        if uniform:
            row = {k: (f"{v}{i}" if isinstance(v, str) else v) for k, v in columns.items()}
        else:
            row = {k: draw(_VALUE) for k in keys}
        rows.append(row)
    if rows and draw(st.booleans()):  # one record out of step: other keys, or other order
        rows[draw(st.integers(0, len(rows) - 1))] = dict(reversed(list(rows[0].items())))
    return {"schema": draw(_TEXT), "rows": rows, "other": draw(_VALUE), 3: "int key"}


@settings(max_examples=300, deadline=None)
@given(_doc())
def test_the_text_json_dumps_writes(doc):
    assert dumps_indented(doc) == json.dumps(doc, indent=2)


def test_a_report_of_many_rows_is_written_as_json_writes_it():
    specs = [TensorSpec(f"blocks.{i}.w", (i % 7, 3), "float32") for i in range(500)]
    coverage = tuple(Coverage(f"blocks.{i}", i, i // 2, 1, 1) for i in range(300))
    report = Report("a", "b", "x", "y", missing=tuple(specs), coverage=coverage)
    assert report.to_json() == json.dumps(report.to_dict(), indent=2)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        1e300,
        -0.0,
        2**80,
        True,
        None,
        "\0records 0\0",
        '}, {"x": 1',
        "\u00e9\U0001f600",
        [],
        [0, 2**70],
        [True],
        [[1]],
        {"a": 1},
    ],
)
def test_each_kind_of_column(value):
    doc = {"rows": [{"k": value, "i": i} for i in range(70)], "v": value}
    assert dumps_indented(doc) == json.dumps(doc, indent=2)
