"""Large tables are laid out by ckptdiff itself: the layout must be tabulate's, character for
character."""

from __future__ import annotations

import random
import string

import pytest
from tabulate import tabulate

from ckptdiff.render.tables import FAST_TABLE_ROWS, plain_table, table

CHARS = string.ascii_letters + "[], ._0123456789"


@pytest.mark.parametrize("fmt", ["simple", "github"])
@pytest.mark.parametrize("seed", range(40))
def test_plain_table_is_tabulates_layout(fmt, seed):
    rng = random.Random(seed)
    ncol = rng.randint(1, 5)
    headers = [
        "".join(rng.choices(string.ascii_letters, k=rng.randint(1, 12))) for _ in range(ncol)
    ]
    colalign = tuple(rng.choice(["left", "right"]) for _ in range(ncol))
    rows = [
        ["".join(rng.choices(CHARS, k=rng.randint(0, 24))) for _ in range(ncol)]
        for _ in range(rng.randint(1, 8))
    ]
    expected = tabulate(rows, headers, tablefmt=fmt, disable_numparse=True, colalign=colalign)
    assert plain_table(rows, headers, fmt, colalign) == expected


def test_big_tables_take_the_fast_path_with_the_same_text():
    rows = [[f"layers.{i}.weight", f"[{i}, 4]", "float32", f"{4 * i:,}"] for i in range(2000)]
    headers = ["key", "shape", "dtype", "parameters"]
    align = ("left", "left", "left", "right")
    assert len(rows) > FAST_TABLE_ROWS
    slow = tabulate(rows, headers, tablefmt="simple", disable_numparse=True, colalign=align)
    assert table(rows, headers, "simple", align) == slow + "\n"
