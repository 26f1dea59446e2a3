"""``identify``'s ranking of candidate configs as a table, markdown or JSON. Strings only."""

from __future__ import annotations

import json
from collections.abc import Sequence

from tabulate import tabulate

from ckptdiff._identify import Candidate

__all__ = ["IDENTIFY_SCHEMA", "render_candidates"]

IDENTIFY_SCHEMA = "ckptdiff.identify/1"


def render_candidates(ranked: Sequence[Candidate], fmt: str) -> str:
    """The ranking as a table (or markdown, or JSON)."""
    if fmt == "json":
        return (
            json.dumps(
                {"schema": IDENTIFY_SCHEMA, "candidates": [c.to_dict() for c in ranked]}, indent=2
            )
            + "\n"
        )
    rows = []
    for i, c in enumerate(ranked, 1):
        if c.report is None:
            rows.append([i, c.name, "-", "-", "-", "-", "-", "-", f"does not build: {c.error}"])
            continue
        n = c.counts
        rows.append(
            [
                i,
                c.name,
                n["matched"],
                n["mismatched"],
                n["missing"],
                n["unexpected"],
                f"{100 * c.coverage:.1f}%",
                f"{c.fit:.3f}",
                "fits exactly" if c.report.ok else "",
            ]
        )
    headers = [
        "rank",
        "candidate",
        "matched",
        "mismatched",
        "missing",
        "unexpected",
        "coverage",
        "fit",
        "verdict",
    ]
    return (
        tabulate(
            rows,
            headers,
            tablefmt="github" if fmt == "markdown" else "simple",
            disable_numparse=True,
        )
        + "\n"
    )
