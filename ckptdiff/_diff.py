"""The ``diff`` use case: two sources (or manifests) in, a :class:`~ckptdiff.types.Report`
out. Reading is torch-free; the diagnosis is :func:`ckptdiff.diagnosis.diagnose.diff_manifests`.

"missing" means the target has it and the checkpoint lacks it; "unexpected" the reverse.
"""

from __future__ import annotations

from ckptdiff.diagnosis.diagnose import diff_manifests
from ckptdiff.keymap import KeyMap
from ckptdiff.types import Manifest, Report

__all__ = ["diff_sources"]


def diff_sources(
    checkpoint: str | Manifest,
    target: str | Manifest,
    *,
    key_map: KeyMap | None = None,
    target_key_map: KeyMap | None = None,
    select: str | None = None,
    target_select: str | None = None,
    depth: int = 2,
) -> Report:
    """Read two sources (or take manifests) and diff them; see :func:`diff_manifests`."""
    from ckptdiff.readers import read

    a = checkpoint if isinstance(checkpoint, Manifest) else read(checkpoint, select=select)
    b = target if isinstance(target, Manifest) else read(target, select=target_select)
    if target_key_map:
        b = target_key_map.apply_to_manifest(b)
    return diff_manifests(a, b, key_map=key_map, depth=depth)
