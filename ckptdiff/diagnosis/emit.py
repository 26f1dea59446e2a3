"""What ``--emit-config`` and ``--emit-key-map`` write: exactly what was verified. The CLI
writes the files; these give their content.
"""

from __future__ import annotations

from typing import Any

from ckptdiff.diagnosis.alignment import key_map_to_emit
from ckptdiff.keymap import KEYMAP_SCHEMA
from ckptdiff.types import Report

__all__ = ["emitted_config", "emitted_key_map", "fixed_config_of"]


def fixed_config_of(report: Report) -> dict[str, Any] | None:
    """The target's config with every suggested config value, as the verifier rebuilt it
    (for ``--emit-config``), or None when there is no config suggestion."""
    return dict(report.fixed_config) if report.fixed_config is not None else None


def emitted_key_map(report: Report) -> dict[str, Any] | None:
    """The report's verified key map as ``{"schema": "ckptdiff.keymap/1", "rules"}``, or None
    when the report has no verified key map."""
    rules = key_map_to_emit(report)
    if not rules:
        return None
    return {"schema": KEYMAP_SCHEMA, "rules": rules}


def emitted_config(report: Report) -> dict[str, Any] | None:
    """The fixed config (see :func:`fixed_config_of`) when every config suggestion in it is
    verified or undetermined; None otherwise."""
    config = fixed_config_of(report)
    statuses = {s.status for s in report.suggestions if s.kind == "config"}
    if config is None or not statuses or not statuses <= {"verified", "undetermined"}:
        return None
    return config
