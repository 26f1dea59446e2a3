"""``scan`` results as a table or as JSON (schema ``ckptdiff.scan/1``). Strings only."""

from __future__ import annotations

import json

from ckptdiff._scan import ScanResult

__all__ = ["SCAN_SCHEMA", "render_json", "render_table"]

SCAN_SCHEMA = "ckptdiff.scan/1"
#: Findings listed per file in the table (JSON has them all).
_SHOWN = 5


def render_table(results: list[ScanResult]) -> str:
    """One line per file, then each finding and error indented under it, then counts."""
    lines = []
    for r in results:
        what = f" ({r.format}, {r.tensors} tensors)" if r.format else ""
        lines.append(f"{r.status.upper():10} {r.path}{what}")
        for f in r.findings[:_SHOWN]:
            lines.append(f"           [security] {f['message']}")
        if len(r.findings) > _SHOWN:
            lines.append(f"           ... and {len(r.findings) - _SHOWN} more (--format json)")
        if r.error:
            lines.append(f"           {r.error}")
    counts = {s: sum(r.status == s for r in results) for s in ("clean", "flagged", "unreadable")}
    lines.append("")
    lines.append(
        f"{len(results)} file{'' if len(results) == 1 else 's'}: "
        f"{counts['flagged']} flagged, {counts['unreadable']} unreadable, "
        f"{counts['clean']} clean."
    )
    return "\n".join(lines) + "\n"


def render_json(results: list[ScanResult]) -> str:
    """The stable JSON form, schema ``ckptdiff.scan/1``."""
    counts = {s: sum(r.status == s for r in results) for s in ("clean", "flagged", "unreadable")}
    doc = {"schema": SCAN_SCHEMA, "files": [r.to_dict() for r in results], "counts": counts}
    return json.dumps(doc, indent=2) + "\n"
