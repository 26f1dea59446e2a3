"""The loader's view of a checkpoint: what the model would receive, key by key.

Real loaders rename, merge and split keys on the way in: transformers 5 runs every checkpoint
through the model's conversion mapping (``language_model.model.*`` becomes
``model.language_model.*``, one tensor per MoE expert becomes one fused ``experts.gate_up_proj``,
``LayerNorm.gamma`` becomes ``LayerNorm.weight``). A checkpoint is compatible when what comes
out of that step fits the model, whatever a plain ``load_state_dict`` would say.

:func:`loader_view` returns the checkpoint's manifest as the target's loader would hand it to
the model (converted names, shapes computed the way each operation computes them), or the
manifest unchanged when the target's loader changes nothing. :func:`loader_findings` names,
after the comparison, which checkpoint keys stand behind converted keys that still differ.

Only transformers targets have a loader step here; plain modules are judged by
``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from ckptdiff.types import Finding, Manifest, Report

__all__ = ["LOADED_FROM", "loader_findings", "loader_view"]

#: ``Manifest.metadata`` key of a loader view: ``{loaded key: [checkpoint keys]}``.
LOADED_FROM = "loaded_from"


def loader_view(checkpoint: Manifest, target: Manifest) -> Manifest:
    """``checkpoint`` as the target's own loader would pass it to the model.

    Args:
        checkpoint: the checkpoint's manifest.
        target: a manifest built by :func:`ckptdiff.targets.build_target`.

    Returns:
        A manifest keyed by the names the model receives (checkpoint names where the loader
        keeps them, or where the model has no place for a key), with ``metadata["loaded_from"]``
        and an ``info`` finding that says which loader's rules were applied; ``checkpoint``
        itself when the loader changes nothing.
    """
    if target.format != "meta-model" or not _is_transformers_target(target):
        return checkpoint
    if checkpoint.metadata.get(LOADED_FROM) is not None:
        return checkpoint  # already converted
    from ckptdiff.loading.hf import transformers_view

    return transformers_view(checkpoint, target)


def loader_findings(report: Report, checkpoint: Manifest) -> list[Finding]:
    """Findings that name the checkpoint keys behind converted keys that still differ."""
    loaded_from = checkpoint.metadata.get(LOADED_FROM)
    if not isinstance(loaded_from, dict) or not loaded_from:
        return []
    from ckptdiff.loading.hf import converted_mismatch_findings

    return converted_mismatch_findings(report, loaded_from)


def _is_transformers_target(target: Manifest) -> bool:
    info = target.metadata.get("target")
    kind = info.get("kind") if isinstance(info, dict) else None
    return kind in ("hf-config", "hf-class")
