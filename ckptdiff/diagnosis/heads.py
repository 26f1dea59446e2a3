"""Output-head fixes: ``tie_word_embeddings`` for a checkpoint saved tied, a causal-LM class
for a checkpoint with ``lm_head`` against a base model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.fields import factory_defaults
from ckptdiff.diagnosis.lint import vocab_tensors
from ckptdiff.diagnosis.probe import Candidate, Prober, Rebuild
from ckptdiff.naming import VOCAB_HEAD_ROWS
from ckptdiff.targets.factory import dotted_leaves
from ckptdiff.types import Manifest, Report, Suggestion
from ckptdiff.wording import key_shape_str

# --- heads: tied embeddings, a causal-LM head ---------------------------------------------------


@dataclass
class HeadFixes:
    """What :func:`head_fixes` proposes: config candidates (``tie_word_embeddings``), the
    class to build instead (a causal-LM head the target lacks), and the keys they explain."""

    candidates: list[Candidate] = field(default_factory=list)
    explained: set[str] = field(default_factory=set)
    overrides: dict[str, Any] = field(default_factory=dict)
    auto_class: str | None = None
    lm_head_keys: tuple[str, ...] = ()


_TIE_FIELD = re.compile(r"^tie_(word_)?embeddings?$")


def head_fixes(
    report: Report, checkpoint: Manifest, target: Manifest, *, rebuild: Rebuild
) -> HeadFixes:
    """The output head:

    - the target expects ``lm_head.weight``, the checkpoint has none but an embedding of the
      same shape, and the config unties them: ``tie_word_embeddings = true``;
    - the checkpoint has ``lm_head.*`` and the target is a transformers base model
      (``LlamaModel``): build ``LlamaForCausalLM`` instead (``--auto-class``).
    """
    out = HeadFixes()
    _tie_fix(out, report, checkpoint, target, rebuild)
    _causal_lm_class(out, report, target)
    return out


def _vocab_head(key: str) -> bool:

    return key.endswith("weight") and any(p in VOCAB_HEAD_ROWS for p in key.split("."))


def _tie_fix(
    out: HeadFixes,
    report: Report,
    ck: Manifest,
    target: Manifest,
    rebuild: Rebuild,
) -> None:

    heads = [t for t in report.missing if _vocab_head(t.key) and len(t.shape) == 2]
    embeds = vocab_tensors(ck)[0]
    # head -> the checkpoint's embedding of its shape (or of the target's embedding of its
    # shape: the widths may differ too, and are solved apart)
    twins = {
        h.key: e
        for h in heads
        for e in embeds
        if h.shape in (ck.tensors[e].shape, getattr(target.tensors.get(e), "shape", None))
    }
    if not twins:
        return
    config = target.config or {}
    defaults = factory_defaults(target)
    fields = [
        d
        for d, v in [*dotted_leaves(config), *defaults.items()]
        if v is False and _TIE_FIELD.match(d.rsplit(".", 1)[-1])
    ]
    prober = Prober(target, rebuild)
    for f in fields:
        m = prober.build({f: True})
        if m is None:
            continue
        r = compare(ck, m)
        still = {t.key for t in r.missing}
        fixed = [h for h in twins if h not in still]
        if not fixed or not set(report.matched) <= set(r.matched):
            continue
        head, embed = fixed[0], twins[fixed[0]]
        shape = key_shape_str(ck, embed)
        out.overrides[f] = True
        out.explained.update(fixed)
        out.candidates.append(
            Candidate(
                Suggestion(
                    "config",
                    f,
                    False,
                    True,
                    "unverified",
                    f"set {f} = true: the checkpoint stores no {head} but has {embed} "
                    f"({shape}), which is how a model with tied input and output embeddings "
                    f"saves itself; rebuilt with it, {head} is tied to {embed} and loads. If "
                    "the model was trained with a separate head, that head was not saved.",
                    (f"{head}: missing; {embed}: {shape}",),
                    {"explains": len(fixed), "tied_to": embed},
                ),
                frozenset(fixed),
            )
        )
        return


def _causal_lm_class(out: HeadFixes, report: Report, target: Manifest) -> None:
    """``LlamaModel`` with ``lm_head.*`` in the checkpoint: propose ``LlamaForCausalLM``."""
    info = target.metadata.get("target")
    cls = target.metadata.get("class")
    if not isinstance(info, Mapping) or info.get("kind") != "hf-config" or not isinstance(cls, str):
        return
    name = cls.rsplit(".", 1)[-1]
    if not name.endswith("Model") or "For" in name or name == "Model":
        return
    heads = tuple(t.key for t in report.unexpected if t.key.split(".")[0] == "lm_head")
    if heads:
        out.auto_class = name.removesuffix("Model") + "ForCausalLM"
        out.lm_head_keys = heads
