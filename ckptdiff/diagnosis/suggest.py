"""Config fixes, inferred by probing the target's builder on meta and verified by rebuilding.

For a target with a config (a factory's keyword arguments, a transformers config) this finds
the config values that reproduce the checkpoint's shapes:

1. probe: rebuild the target on meta with one numeric field changed (doubled) and see which
   dimensions of which keys move, and which layer containers grow (probes are cached);
2. solve: a dimension (or layer count) moved by one field alone gives that field's value by a
   linear fit (``rows = vocab_size + 8`` for mllama's embedding, ``3 * width`` for a fused
   ``in_proj``); dimensions moved by several fields (``(image / patch)**2 + 1`` positions) are
   solved after the others, by a search on rebuilds;
3. verify: rebuild with every proposed value and diff again; a suggestion is ``verified`` only
   when the keys (and dimensions) it explains now match.

What the shapes cannot tell (heads when q/k/v are square, activations, epsilons, dropout) is
listed as "not determined by the checkpoint"; when nothing reproduces the shapes the answer is
a ``no_fix`` finding with the reason, never a guess. Rebuilding imports torch; this module
itself does not at import time.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.fields import (
    HEADS_LIKE,
    current_value,
    factory_defaults,
    numeric_fields,
    probe_worthy,
    unset_fields,
)
from ckptdiff.diagnosis.probe import (
    Candidate,
    Prober,
    Rebuild,
    Sensitivity,
    SuggestResult,
    container_counts,
)
from ckptdiff.diagnosis.rounds import solve_rounds
from ckptdiff.diagnosis.solve import Solved
from ckptdiff.naming import layer_range
from ckptdiff.targets.factory import dotted_leaves
from ckptdiff.types import Finding, Manifest, Report, Suggestion
from ckptdiff.wording import key_shape_str, listed, sampled

# --- the whole step ------------------------------------------------------------------------------


def suggest_config(
    report: Report,
    checkpoint: Manifest,
    target: Manifest,
    *,
    key_map: Any = None,
    rebuild: Rebuild,
    max_rounds: int = 4,
    ignore: Collection[str] = (),
) -> SuggestResult:
    """Infer the config values that make the target's shapes the checkpoint's; verify on meta.

    Args:
        report: the comparison of ``checkpoint`` and ``target`` (after key alignment).
        checkpoint: the checkpoint's manifest (keys already mapped).
        target: a ``meta-model`` manifest with ``config`` and ``metadata["target"]``.
        key_map: the key map already applied (shown in messages only).
        rebuild: ``(target, overrides) -> Manifest``; default :func:`ckptdiff.targets.rebuild`.
        max_rounds: solve/rebuild rounds (each round solves what the previous one unlocked).
        ignore: keys already explained otherwise (a new head): not reported as unfixed.

    Returns:
        A :class:`SuggestResult`: verified ``config`` (and ``call``) suggestions, and findings.

    Example:
        >>> result = suggest_config(report, ck, built)  # doctest: +SKIP
        >>> [(s.field, s.suggested) for s in result.suggestions]  # doctest: +SKIP
        [('vision_cfg.width', 1024), ('vision_cfg.layers', 24), ...]
    """
    out = SuggestResult()
    config = dict(target.config or {})
    defaults = factory_defaults(target)
    values = numeric_fields(config)
    values.update(
        {
            f: v
            for f, v in defaults.items()
            if isinstance(v, int) and not isinstance(v, bool) and probe_worthy(f)
        }
    )
    unset = unset_fields(config, defaults)
    values.update(unset)
    prober = Prober(target, rebuild)
    rounds = solve_rounds(
        prober, checkpoint, target, values, unset, set(report.matched), max_rounds
    )
    evidence, companions, cur = rounds.evidence, rounds.companions, rounds.cur
    quiet, first_sens, failure = rounds.quiet, rounds.first_sens, rounds.failure
    rejected, touched = rounds.rejected, rounds.touched

    for f, sol in evidence.items():
        keys = list(dict.fromkeys(k for k, _ in sol.dims)) + [
            layer_range(c, _count(checkpoint, c)) for c in sol.containers
        ]
        out.overrides[f] = sol.value
        now = current_value(config, defaults, f)
        if now is None and f not in unset:
            now = values.get(f)  # derived: num_labels is the size of id2label
        now_text = f"now {now}" if f in config or now is not None else "now unset"
        if f not in config and f.split(".")[0] not in config:
            now_text += ", the factory's default"
        out.candidates.append(
            Candidate(
                Suggestion(
                    "config",
                    f,
                    now,
                    sol.value,
                    "unverified",
                    f"set {f} = {sol.value} ({now_text}): {_reason(sol, checkpoint, target)}",
                    tuple(_evidence(keys, checkpoint, target, sol)),
                    {"explains": len(keys)},
                ),
                frozenset(touched.get(f, ())),
            )
        )
    for h, v in companions.items():
        if out.overrides:
            out.overrides[h] = v
            out.candidates.append(
                Candidate(
                    Suggestion(
                        "config",
                        h,
                        current_value(config, defaults, h),
                        v,
                        "undetermined",
                        f"set {h} = {v} so the model builds with the widths above (keeping the "
                        "head dim); the shapes cannot tell it: check it against the model card",
                        (),
                        {"determined": False},
                    ),
                    frozenset(),
                    True,
                )
            )
    for f, (v, keys) in rejected.items():
        out.findings.append(
            Finding(
                "no_fix",
                f"No verified fix from {f} = {v}: it would reproduce some shapes but "
                f"break {len(keys)} keys that load now ({listed(keys, 3)}).",
                tuple(keys[:20]),
                "warning",
                {"field": f, "tried": v},
            )
        )
    _vocab_extras(out, config, values)

    residual = compare(checkpoint, cur)
    leftover = [
        k
        for k in (
            [m.key for m in residual.mismatched]
            + [t.key for t in residual.missing]
            + [t.key for t in residual.unexpected]
        )
        if k not in ignore
    ]
    if leftover:
        reason = failure or _why_not(leftover, first_sens, values, prober)
        out.findings.append(
            Finding(
                "no_fix",
                f"No verified config fix for {len(leftover)} keys ({listed(leftover, 3)}): "
                f"{reason}.",
                tuple(leftover[:50]),
                "warning",
                {"reason": reason},
            )
        )
    undetermined, other = _undetermined(config, quiet, out.overrides)
    # the heads matter when the attention is resized, not for a vocabulary or an image size
    resized = any(
        _ATTENTION.search(k)
        for f in out.overrides
        if f in first_sens
        for k, _ in first_sens[f].dims
    )
    if undetermined and (resized or leftover):
        out.findings.append(
            Finding(
                "undetermined",
                "Not determined by the checkpoint (shapes cannot tell; keep the "
                f"values the model was trained with): {', '.join(undetermined)}.",
                tuple(undetermined),
                "info",
                {"fields": undetermined, "other": other},
            )
        )
    return out


def _count(m: Manifest, container: str) -> int:
    return container_counts(m).get(container, 0)


def _evidence(keys: Sequence[str], ck: Manifest, target: Manifest, sol: Solved) -> list[str]:
    out = []
    seen = set()
    for k, _ in sol.dims:
        if k in seen:
            continue
        seen.add(k)
        out.append(f"{k}: {key_shape_str(ck, k)} vs {key_shape_str(target, k)}")
    for c in sol.containers:
        out.append(f"{c}: {_count(ck, c)} layers vs {_count(target, c)}")
    return list(sampled(out))


def _reason(sol: Solved, ck: Manifest, target: Manifest) -> str:
    if sol.containers:
        c = sol.containers[0]
        return f"the checkpoint has {_count(ck, c)} layers in {c}, the target {_count(target, c)}"
    k, i = sol.dims[0]
    n = len({k for k, _ in sol.dims})
    return (
        f"{n} key{'s' if n != 1 else ''} move{'s' if n == 1 else ''} with it, e.g. {k} "
        f"{key_shape_str(ck, k)} vs {key_shape_str(target, k)}"
    )


def _why_not(
    keys: Sequence[str],
    sens: Mapping[str, Sensitivity],
    values: Mapping[str, Any],
    prober: Prober,
) -> str:
    moved = {k for s in sens.values() for k, _ in s.dims}
    if not values:
        return "the target's config has no numeric fields to change"
    if not any(k in moved for k in keys):
        return (
            "no numeric config field of the target changes these shapes, so the checkpoint "
            "is not this model at another size (another architecture, or another key layout)"
        )
    return "no single value of the fields that move these shapes reproduces them"


#: Keys of attention projections, whose split into heads the shapes do not show.
_ATTENTION = re.compile(r"attn|attention|(^|\.)(q|k|v|o)_proj\.|query|key|value|qkv|in_proj")
#: Leaves that are labels, not architecture (``label2id.LABEL_1``, ``id2label.0``).
_LABEL_PARTS = ("label2id", "id2label")


def _undetermined(
    config: Mapping[str, Any], quiet: Sequence[str], chosen: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """``(fields, others)``: the fields the shapes cannot tell that matter to what the weights
    compute (attention heads, key/value heads, head_dim), listed to the user; and the others
    (activations, epsilons, dropout), kept for JSON only."""
    names: list[str] = []
    other: list[str] = []
    for dotted in quiet:
        if any(p in _LABEL_PARTS for p in dotted.split(".")):
            continue
        leaf = dotted.rsplit(".", 1)[-1].lower()
        if "label" in leaf:
            continue  # num_labels moves nothing in a model without a head
        (names if HEADS_LIKE.search(leaf) else other).append(dotted)
    for dotted, v in dotted_leaves(config):
        leaf = dotted.rsplit(".", 1)[-1].lower()
        if dotted in names or dotted in other or any(p.isdigit() for p in dotted.split(".")):
            continue
        if isinstance(v, (str, float, bool)) and any(
            leaf == h or leaf.startswith(h + "_") or leaf.endswith("_" + h) or h in leaf
            for h in ("act", "activation", "eps", "dropout", "quick_gelu")
        ):
            other.append(dotted)
    return names, other


def _vocab_extras(
    out: SuggestResult,
    config: Mapping[str, Any],
    values: Mapping[str, int | float],
) -> None:
    """Every other vocab field that repeats the solved one follows it (the loss and generation
    read them); the verifier judges them with the rest."""
    vocab = [
        c
        for c in out.candidates
        if c.suggestion.field.rsplit(".", 1)[-1] in ("vocab_size", "n_vocab", "vocab")
    ]
    if not vocab:
        return
    first = vocab[0].suggestion
    followers = [
        f
        for f, v in values.items()
        if f.rsplit(".", 1)[-1] == "vocab_size" and v == first.current and f not in out.overrides
    ]
    for f in followers:
        out.overrides[f] = first.suggested
        out.candidates.append(
            Candidate(
                Suggestion(
                    "config",
                    f,
                    first.current,
                    first.suggested,
                    "unverified",
                    f"set {f} = {first.suggested} as well if it repeats {first.field} (the "
                    "loss and generation read it); no weight shows it",
                    first.evidence,
                    {"follows": first.field},
                ),
                frozenset(),
                True,  # it moves no shape: the checkpoint cannot tell it
            )
        )
