"""What ``--emit-config`` and ``--emit-key-map`` write: exactly what was verified.
"""

from __future__ import annotations

from typing import Any

from ckptdiff.diagnosis.alignment import key_map_to_emit
from ckptdiff.types import Report


def fixed_config_of(report: Report) -> dict[str, Any] | None:
    """The target's config with every suggested config value, as the verifier rebuilt it
    (for ``--emit-config``), or None when there is no config suggestion."""
    return dict(report.fixed_config) if report.fixed_config is not None else None


def write_key_map(report: Report, path: str) -> bool:
    """Write the report's verified key map as ``{"schema": "ckptdiff.keymap/1", "rules"}``.

    Returns:
        False (and writes nothing) when the report has no verified key map.
    """
    import json

    from ckptdiff.keymap import KEYMAP_SCHEMA

    rules = key_map_to_emit(report)
    if not rules:
        return False
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"schema": KEYMAP_SCHEMA, "rules": rules}, f, indent=2)
        f.write("\n")
    return True


def write_fixed_config(report: Report, path: str) -> bool:
    """Write the fixed config (see :func:`fixed_config_of`) when every config suggestion in
    it is verified or undetermined; False (nothing written) otherwise."""
    import json

    config = fixed_config_of(report)
    statuses = {s.status for s in report.suggestions if s.kind == "config"}
    if config is None or not statuses or not statuses <= {"verified", "undetermined"}:
        return False
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, default=str)
        f.write("\n")
    return True
