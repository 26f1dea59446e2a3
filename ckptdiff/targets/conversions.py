"""A transformers model's weight conversions: the transforms ``from_pretrained`` applies to its
checkpoint, and the source patterns a target's manifest records of them, so that a checkpoint
none of whose keys they match skips the model (and torch). :mod:`ckptdiff.loading.hf` runs the
transforms; importing this module imports neither transformers nor torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PATTERNS_KEY", "source_patterns", "weight_conversions"]

#: ``Manifest.metadata`` key of a transformers target: the source patterns of its conversion
#: mapping, so that a checkpoint none of whose keys they match skips the model (and torch).
PATTERNS_KEY = "loader_source_patterns"


def weight_conversions(model: Any) -> list[Any]:
    """The transforms ``from_pretrained`` applies to ``model``'s checkpoint (fresh copies)."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    return list(get_model_conversion_mapping(model))


def source_patterns(model: Any) -> list[str]:
    """Regexes that match every key some transform of ``model`` could rename (a superset:
    anchors dropped, as a transform scoped to a sub-model matches after its prefix)."""
    out: set[str] = set()
    for transform in weight_conversions(model):
        for pattern in transform.source_patterns:
            out.add(str(pattern).removeprefix("^").replace("*.", r".*\."))
    return sorted(out)
