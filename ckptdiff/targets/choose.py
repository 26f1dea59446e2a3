"""Which transformers class a config without ``architectures`` is meant for, from evidence.

``config.json`` names the class to build in ``architectures``; many do not (adapter bases,
configs written by hand, ``AutoConfig.save_pretrained``). Building ``AutoModel`` then checks a
causal-LM checkpoint against the headless model and blames the checkpoint for ``lm_head``.
The evidence, in order:

1. a PEFT adapter's ``adapter_config.json``: ``auto_mapping.base_model_class`` (the class the
   adapter was trained on), else its ``task_type`` (``CAUSAL_LM`` -> ``AutoModelForCausalLM``);
2. the checkpoint's own keys: every model class transformers registers for the config's
   ``model_type`` (``LlamaModel``, ``LlamaForCausalLM``, ``LlamaForSequenceClassification``...)
   is built on meta and the one that places the most checkpoint tensors with their shapes, and
   leaves the fewest unplaced or missing, is chosen.

``--auto-class`` always wins; the choice is said in an ``info`` finding of the target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ckptdiff.types import Finding, Manifest

__all__ = ["Choice", "PEFT_TASK_CLASSES", "candidate_classes", "choose_class", "fit"]

#: PEFT's ``task_type`` -> the auto class its ``AutoPeftModelFor...`` loads the base with.
PEFT_TASK_CLASSES: Mapping[str, str] = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "FEATURE_EXTRACTION": "AutoModel",
}
_MAX_CANDIDATES = 16


@dataclass(frozen=True)
class Choice:
    """The class chosen for a config without ``architectures``, and why."""

    name: str
    reason: str
    evidence: str

    def finding(self) -> Finding:
        """The ``info`` finding that says which class was built and why."""
        return Finding(
            "target_class",
            f"Built as {self.name}: the config names no architectures, and {self.reason}. "
            "Pass --auto-class to build another class.",
            (),
            "info",
            {"class": self.name, "evidence": self.evidence},
        )


def choose_class(
    model_type: str,
    evidence: Manifest,
    build: Callable[[str], Manifest],
    baseline: int = 0,
) -> Choice | None:
    """The class to build for a config of ``model_type`` without ``architectures``.

    Args:
        model_type: the config's ``model_type``.
        evidence: the checkpoint (or adapter) the target is checked against.
        build: builds a class by name and returns its manifest (on meta).
        baseline: checkpoint tensors the default class places: a class chosen by fit must
            place more (weights of another architecture place nothing anywhere).

    Returns:
        The choice, or None when nothing points away from ``AutoModel``.
    """
    import transformers

    peft = evidence.metadata.get("peft")
    if isinstance(peft, Mapping):
        auto_mapping = peft.get("auto_mapping")
        name = auto_mapping.get("base_model_class") if isinstance(auto_mapping, Mapping) else None
        if isinstance(name, str) and name.isidentifier() and hasattr(transformers, name):
            return Choice(
                name,
                f"adapter_config.json's auto_mapping.base_model_class is {name}",
                "peft_base_model_class",
            )
        task = peft.get("task_type")
        auto = PEFT_TASK_CLASSES.get(task) if isinstance(task, str) else None
        if auto is not None:
            return Choice(auto, f"adapter_config.json's task_type is {task}", "peft_task_type")
        return None
    return _by_fit(model_type, evidence, build, baseline)


def candidate_classes(model_type: str) -> list[str]:
    """Every model class transformers' auto mappings register for ``model_type``."""
    import transformers
    from transformers.models.auto import modeling_auto

    out: list[str] = []
    for attr in sorted(dir(modeling_auto)):
        if not (attr.startswith("MODEL") and attr.endswith("_MAPPING_NAMES")):
            continue
        names = getattr(modeling_auto, attr).get(model_type)
        for name in names if isinstance(names, (tuple, list)) else (names,):
            if isinstance(name, str) and name not in out and hasattr(transformers, name):
                out.append(name)
    return out[:_MAX_CANDIDATES]


def fit(checkpoint: Mapping[str, Any], target: Manifest) -> tuple[int, int, int]:
    """``(placed, unplaced, missing)`` of checkpoint tensors in ``target``, the base-model
    prefix added or stripped key by key as transformers does."""
    prefix = target.metadata.get("base_model_prefix")
    dot = f"{prefix}." if isinstance(prefix, str) and prefix else None
    expected = target.tensors
    placed: set[str] = set()
    unplaced = 0
    for key, spec in checkpoint.items():
        name = key
        if name not in expected and dot:
            name = key[len(dot) :] if key.startswith(dot) else dot + key
        hit = expected.get(name)
        if hit is not None and hit.shape == spec.shape:
            placed.add(name)
        else:
            unplaced += 1
    supplied = placed | {a for a, b in target.aliases.items() if b in placed}
    for group in target.tied:
        if placed & set(group):
            supplied |= set(group)
    missing = sum(1 for k in expected if k not in supplied and k not in target.buffers)
    return len(placed), unplaced, missing


def _by_fit(
    model_type: str, evidence: Manifest, build: Callable[[str], Manifest], baseline: int
) -> Choice | None:
    from ckptdiff.errors import TargetError

    tensors = evidence.tensors
    if not tensors:
        return None
    scored: list[tuple[tuple[int, int], str, tuple[int, int, int]]] = []
    for name in candidate_classes(model_type):
        try:
            manifest = build(name)
        except TargetError:
            continue
        placed, unplaced, missing = fit(tensors, manifest)
        scored.append(((placed, -(unplaced + missing)), name, (placed, unplaced, missing)))
    if not scored:
        return None
    scored.sort(key=lambda s: s[0], reverse=True)
    _, best, (placed, unplaced, missing) = scored[0]
    if placed <= baseline:
        return None  # no class places more of it than the default one
    if len(scored) > 1 and scored[1][0] == scored[0][0]:
        return None  # the keys do not tell two classes apart: keep AutoModel's answer
    runner = scored[1] if len(scored) > 1 else None
    why = (
        f"of the {len(scored)} {model_type} classes built on meta, {best} places the most "
        f"checkpoint tensors ({placed} of {len(tensors)}, {missing} of its own left missing)"
    )
    if runner is not None:
        r_placed, r_unplaced, r_missing = runner[2]
        why += f"; next is {runner[1]} ({r_placed} placed, {r_missing} missing)"
    return Choice(best, why, "checkpoint_keys")
