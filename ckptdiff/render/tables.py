"""Table layout shared by the renderers: titled sections, shapes, and a fast path for big
tables that lays them out exactly as tabulate does. Text from files is escaped here."""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING, Any

from tabulate import tabulate

from ckptdiff.terminal import printable

if TYPE_CHECKING:
    from ckptdiff.types import Finding

__all__ = [
    "FAST_TABLE_ROWS",
    "count_label",
    "finding_line",
    "plain_table",
    "section",
    "table",
]


def section(title: str, headers: list[str], rows: list[list[Any]], fmt: str) -> str:
    """A titled table; a last column headed ``""`` (key counts) is ``keys``, or dropped if empty."""
    if headers and headers[-1] == "" and rows:
        if any(r[-1] for r in rows):
            headers = headers[:-1] + ["keys"]
        else:
            headers = headers[:-1]
            rows = [r[:-1] for r in rows]
    rows = [[printable(c) if isinstance(c, str) else c for c in r] for r in rows]
    if fmt == "markdown":
        return f"### {title}\n\n" + tabulate(rows, headers, tablefmt="github") + "\n"
    return f"{title}\n" + tabulate(rows, headers, tablefmt="simple") + "\n"


def count_label(n: int) -> str:
    """The count column of a grouped row: empty for one key."""
    return "" if n == 1 else str(n)


def finding_line(f: Finding) -> str:
    """``[warning] message``: one finding on one line."""
    return f"[{f.severity}] {f.message}"


#: Above this many rows, tables of plain ASCII strings are laid out here, the same way
#: tabulate lays them out ("simple" and "github"), at a fraction of its per-cell cost.
FAST_TABLE_ROWS = 500


def table(
    rows: list[list[Any]], headers: list[str], tablefmt: str, colalign: tuple[str, ...]
) -> str:
    """A table with fixed column alignment (rows must not be empty); text from files escaped."""
    if len(rows) > FAST_TABLE_ROWS and tablefmt in ("simple", "github"):
        columns = [printable_column(list(map(str, c))) for c in zip(*rows, strict=True)]
        if all(plain_cells(c) for c in columns):
            return plain_columns(columns, headers, tablefmt, colalign) + "\n"
    rows = [[printable(c) if isinstance(c, str) else c for c in r] for r in rows]
    return (
        tabulate(rows, headers, tablefmt=tablefmt, disable_numparse=True, colalign=colalign) + "\n"
    )


def printable_column(column: list[str]) -> list[str]:
    """:func:`printable` of every cell; one pass over the whole column when none needs it."""
    whole = "".join(column)
    return column if printable(whole) == whole else list(map(printable, column))


def plain_cells(column: list[str]) -> bool:
    """ASCII, one line, no surrounding blanks: cells ``plain_columns`` lays out as tabulate."""
    text = "\0".join(column)
    return text.isascii() and "\n" not in text and column == list(map(str.strip, column))


def plain_table(
    cells: list[list[str]], headers: list[str], tablefmt: str, colalign: tuple[str, ...]
) -> str:
    """tabulate's "simple"/"github" layout of string cells, without its per-cell type checks."""
    cells = [[c.strip() for c in r] for r in cells]  # as tabulate strips cells
    columns = [list(c) for c in zip(*cells, strict=True)] if cells else [[] for _ in headers]
    return plain_columns(columns, headers, tablefmt, colalign)


def plain_columns(
    columns: list[list[str]], headers: list[str], tablefmt: str, colalign: tuple[str, ...]
) -> str:
    """The layout of :func:`plain_table` from stripped cells, a column at a time."""
    widths = [
        max(len(h) + 2, max(map(len, c), default=0)) for h, c in zip(headers, columns, strict=True)
    ]
    padded = [
        list(map(str.rjust if a == "right" else str.ljust, c, repeat(w)))
        for c, w, a in zip(columns, widths, colalign, strict=True)
    ]
    head = [
        h.rjust(w) if a == "right" else h.ljust(w)
        for h, w, a in zip(headers, widths, colalign, strict=True)
    ]
    if tablefmt == "github":
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += ["| " + r + " |" for r in map(" | ".join, zip(*padded, strict=False))]
    else:
        out = ["  ".join(head).rstrip(), "  ".join("-" * w for w in widths)]
        out += map(str.rstrip, map("  ".join, zip(*padded, strict=False)))
    return "\n".join(out)
