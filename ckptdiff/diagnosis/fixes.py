"""Config, call and class fixes: candidates from :mod:`ckptdiff.suggest`, proven together by
:mod:`ckptdiff.diagnosis.verify`.

Every candidate is judged on the whole set the user gets: the emitted config (all config
values at once), rebuilt on meta and compared on the whole model. A value the shapes cannot
tell (a head count another head count fits as well) is ``undetermined``; a vocabulary the
config cannot reproduce on every vocab-sized tensor (mllama's embedding, 8 rows more by design)
gets the call ``model.resize_token_embeddings(N)`` instead of a field.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ckptdiff.diagnosis.fields import heads_like
from ckptdiff.diagnosis.heads import head_fixes
from ckptdiff.diagnosis.lint import vocab_tensors
from ckptdiff.diagnosis.suggest import suggest_config
from ckptdiff.diagnosis.verify import (
    Builder,
    Fix,
    Outcome,
    Rebuild,
    Verdict,
    apply_fix,
    bad_keys,
    judge,
)
from ckptdiff.naming import VOCAB_HEAD_ROWS
from ckptdiff.types import Finding, Manifest, Report, Suggestion
from ckptdiff.wording import listed, sampled

__all__ = ["ConfigFixes", "config_fixes"]

_VOCAB_LEAVES = ("vocab_size", "n_vocab", "vocab")


@dataclass
class ConfigFixes:
    """What :func:`config_fixes` proved.

    Attributes:
        findings: ``no_fix``, ``undetermined``, ``vocab_offset``, ``causal_lm_head`` findings.
        suggestions: ``config`` and ``call`` suggestions, each with its status.
        config: the emitted config (the target's config with every config suggestion), None
            when there is no config suggestion.
        writable: True when every config suggestion is verified or undetermined, so the
            emitted config reproduces what was verified.
        explained: keys the head fixes explain.
        target: the target rebuilt from the emitted config, when it is writable (key maps
            are verified against it: the user applies both).
    """

    findings: list[Finding] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    config: dict[str, Any] | None = None
    writable: bool = False
    explained: set[str] = field(default_factory=set)
    target: Manifest | None = None


def _only_under(keys: Collection[str], prefixes: tuple[str, ...]) -> bool:
    return bool(prefixes) and bool(keys) and all(k.startswith(prefixes) for k in keys)


def _all_explained(report: Report, explained: Collection[str]) -> bool:
    if report.mismatched or report.buffers_missing:
        return False
    return all(t.key in explained for t in report.missing + report.unexpected)


def config_fixes(
    report: Report,
    checkpoint: Manifest,
    target: Manifest,
    *,
    ignore: Collection[str] = (),
    foreign: tuple[str, ...] = (),
    rebuild: Rebuild | None = None,
) -> ConfigFixes:
    """Infer config values, a resize call and a model class, and judge them together.

    Args:
        report: the comparison (after key alignment).
        checkpoint: the checkpoint with the key map applied.
        target: a target made by :func:`ckptdiff.targets.build_target`.
        ignore: keys explained otherwise (a new head).
        foreign: prefixes of branches that are another architecture: a value that moves only
            keys under them is no fix.
        rebuild: ``(target, overrides) -> Manifest`` for the probes (tests inject it).

    Returns:
        :class:`ConfigFixes`.
    """

    out = ConfigFixes()
    builder = Builder(target, rebuild)
    heads = head_fixes(report, checkpoint, target, rebuild=builder)
    out.explained = set(heads.explained)
    candidates = list(heads.candidates)
    overrides: dict[str, Any] = dict(heads.overrides)
    known = set(ignore) | heads.explained | set(heads.lm_head_keys)
    if not _all_explained(report, known):
        res = suggest_config(report, checkpoint, target, rebuild=builder, ignore=known)
        out.findings += res.findings
        candidates += [c for c in res.candidates if not _only_under(c.touched, foreign)]
        overrides.update({c.suggestion.field: c.suggestion.suggested for c in candidates})
    judged, outcome = _judge_all(candidates, overrides, report, checkpoint, target)
    call = _vocab_call(judged, overrides, report, checkpoint, target)
    if call is not None:
        suggestion, vocab_fields = call
        if vocab_fields:  # the call fixes what no vocab field can: the field goes
            candidates = [c for c in candidates if c.suggestion.field not in vocab_fields]
            overrides = {f: v for f, v in overrides.items() if f not in vocab_fields}
            out.findings = [f for f in out.findings if f.kind != "no_fix" or not _vocab_keys(f)]
            if not candidates:  # nothing left to build: no head counts to doubt
                out.findings = [f for f in out.findings if f.kind != "undetermined"]
            judged, outcome = _judge_all(candidates, overrides, report, checkpoint, target)
        out.suggestions.append(suggestion)
    _vocab_offset(out, judged, checkpoint)
    _heads_alternatives(judged, overrides, outcome, checkpoint, target)
    shown: list[Suggestion] = []
    for c, v in judged:
        s = replace(c.suggestion, status=v.status, still_differ=v.still_differ[:20])
        shown.append(s)
        if v.status in ("partial", "unverified"):
            out.findings.append(_not_verified(s, v, outcome))
    out.suggestions = shown + out.suggestions
    if not any(s.kind == "config" for s in out.suggestions):  # no head count was changed
        out.findings = [f for f in out.findings if f.kind != "undetermined"]
    if any(s.kind == "config" for s in out.suggestions):
        out.config = dict(outcome.config or {}) or None
        out.writable = outcome.report is not None and all(
            s.status in ("verified", "undetermined") for s in out.suggestions if s.kind == "config"
        )
        out.target = outcome.target if out.writable else None
    if heads.auto_class:
        _auto_class(
            out, heads.auto_class, heads.lm_head_keys, overrides, report, checkpoint, target
        )
    return out


def _judge_all(
    candidates: list[Any],
    overrides: dict[str, Any],
    report: Report,
    ck: Manifest,
    target: Manifest,
) -> tuple[list[tuple[Any, Verdict]], Outcome]:
    """Apply every candidate at once (the emitted config) and judge each; candidates that
    help nothing are dropped and the rest judged again without them."""
    for _ in range(3):
        outcome = apply_fix(ck, target, Fix(dict(overrides)))
        if _drop_breaking_followers(candidates, overrides, outcome, ck, target):
            outcome = apply_fix(ck, target, Fix(dict(overrides)))
        judged = [
            (c, judge(outcome, report, c.touched, shape_invisible=c.shape_invisible))
            for c in candidates
        ]
        useless = {c.suggestion.field for c, v in judged if not v.helps and not c.shape_invisible}
        if outcome.report is None or not useless:
            return judged, outcome
        candidates[:] = [c for c in candidates if c.suggestion.field not in useless]
        for f in useless:
            overrides.pop(f, None)
        if not any(not c.shape_invisible for c in candidates):  # only build companions left
            candidates.clear()
            overrides.clear()
    return [], apply_fix(ck, target, Fix())


def _drop_breaking_followers(
    candidates: list[Any],
    overrides: dict[str, Any],
    outcome: Outcome,
    ck: Manifest,
    target: Manifest,
) -> bool:
    """A vocabulary field set only because it repeats the solved one (the decoder's beside
    the encoder's) goes when the whole fix fits better without it: there it is a field of its
    own that shapes show (Dia's decoder vocabulary sizes its embeddings). True when one went."""
    followers = [c for c in candidates if c.suggestion.data.get("follows")]
    if outcome.report is None or not followers:
        return False
    bad = len(bad_keys(outcome.report))
    if not bad:
        return False
    dropped = False
    for c in followers:
        f = c.suggestion.field
        rest = {k: v for k, v in overrides.items() if k != f}
        trial = apply_fix(ck, target, Fix(rest))
        if trial.report is not None and len(bad_keys(trial.report)) < bad:
            candidates.remove(c)
            overrides.pop(f, None)
            bad, dropped = len(bad_keys(trial.report)), True
    return dropped


def _not_verified(s: Suggestion, v: Verdict, outcome: Outcome) -> Finding:
    if outcome.report is None:
        why = f"the target does not build with the suggested config ({outcome.error})"
    elif v.still_differ:
        why = (
            f"with every suggested value applied, {len(v.still_differ)} key(s) it moves still "
            f"differ ({', '.join(v.still_differ[:3])})"
        )
    else:
        why = f"it breaks {len(v.broken)} key(s) that load now ({', '.join(v.broken[:3])})"
    return Finding(
        "no_fix",
        f"No verified fix from {s.field} = {s.suggested} ({v.status}): {why}.",
        tuple((v.still_differ or v.broken)[:20]),
        "warning",
        {"field": s.field, "tried": s.suggested, "status": v.status},
    )


def _vocab_keys(f: Finding) -> bool:

    return bool(f.keys) and all(
        any(p in VOCAB_HEAD_ROWS or "embed" in p for p in k.split(".")) for k in f.keys
    )


def _is_vocab(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1] in _VOCAB_LEAVES


def _vocab_call(
    judged: Sequence[tuple[Any, Verdict]],
    overrides: Mapping[str, Any],
    report: Report,
    ck: Manifest,
    target: Manifest,
) -> tuple[Suggestion, set[str]] | None:
    """``model.resize_token_embeddings(N)`` when every vocab-sized tensor of the checkpoint
    has N rows and the target's do not; proven by making the call on the rebuilt model.

    Returns the call and the vocab fields it replaces (those not verified themselves)."""

    embeds, heads = vocab_tensors(ck)
    rows = set(embeds.values()) | set(heads.values())
    t_embeds, t_heads = vocab_tensors(target)
    if len(rows) != 1 or not embeds or set(t_embeds.values()) | set(t_heads.values()) == rows:
        return None
    n = rows.pop()
    vocab = [(c, v) for c, v in judged if _is_vocab(c.suggestion.field)]
    weak = {c.suggestion.field for c, v in vocab if v.status != "verified"}
    base = {f: v for f, v in overrides.items() if f not in weak}
    outcome = apply_fix(ck, target, Fix(base, resize_to=n))
    touched = set(embeds) | set(heads) | set(t_embeds) | set(t_heads)
    verdict = judge(outcome, report, touched)
    if verdict.status not in ("verified", "partial"):
        return None
    old = sorted(set(t_embeds.values()))
    data: dict[str, Any] = {"new_num_tokens": n}
    message = f"resize the embeddings to the checkpoint's {n} rows before loading"
    if old and n != old[0]:
        data["grown_by"] = n - old[0]
        pad = 64 if n % 64 == 0 else 8 if n % 8 == 0 else None
        if pad:
            data["pad_to_multiple_of"] = pad
            message += (
                f"; {n} is a multiple of {pad}: if it came from len(tokenizer) with padding, "
                f"call resize_token_embeddings(len(tokenizer), pad_to_multiple_of={pad})"
            )
    if weak:
        message += (
            f" (no value of {', '.join(sorted(weak))} reproduces every vocab-sized tensor: "
            "this architecture sizes them apart)"
        )
    evidence = tuple(
        f"{k}: [{ck.tensors[k].shape[0]}, ...] vs "
        f"[{target.tensors[k].shape[0] if k in target.tensors else '-'}, ...]"
        for k in sorted(set(embeds) | set(heads))
    )[:5]
    call = Suggestion(
        "call",
        "resize_token_embeddings",
        None,
        f"model.resize_token_embeddings({n})",
        verdict.status,
        message,
        evidence,
        data,
        verdict.still_differ[:20],
    )
    return call, (weak if verdict.status == "verified" else set())


def _vocab_offset(out: ConfigFixes, judged: Sequence[tuple[Any, Verdict]], ck: Manifest) -> None:
    """Embedding and head rows that differ by design, reproduced by a verified vocab field."""

    embeds, heads = vocab_tensors(ck)
    e_rows, h_rows = set(embeds.values()), set(heads.values())
    done = [c for c, v in judged if _is_vocab(c.suggestion.field) and v.status == "verified"]
    if not done or len(e_rows) != 1 or not h_rows or h_rows == e_rows:
        return
    s = done[0].suggestion
    out.findings.append(
        Finding(
            "vocab_offset",
            f"The embedding has {min(e_rows)} rows and the head {min(h_rows)}: by design for "
            f"this architecture (the rebuild with {s.field} = {s.suggested} reproduces both); "
            "do not resize to the embedding's rows.",
            tuple(list(embeds) + list(heads)),
            "info",
        )
    )


def _same_sub(a: str, b: str) -> bool:
    return (a.rsplit(".", 1)[0] if "." in a else "") == (b.rsplit(".", 1)[0] if "." in b else "")


def _heads_alternatives(
    judged: list[tuple[Any, Verdict]],
    overrides: Mapping[str, Any],
    outcome: Outcome,
    ck: Manifest,
    target: Manifest,
) -> None:
    """A verified head count stays verified only when no other count fits as well: twice or
    half of it, alone and with the other head fields of its sub-config (the head dim), and
    the field left as it was with another head field of its sub-config doubled or halved
    instead (4 key/value heads of 8 fit where 2 query heads of 16 do); a patch or image size
    only when the other one scaled to the same grid does not fit."""
    if outcome.report is None:
        return
    bad = bad_keys(outcome.report)
    for i, (c, v) in enumerate(judged):
        f = c.suggestion.field
        if v.status != "verified":
            continue
        before = _int_leaves(target.config or {})
        values = {**before, **overrides}
        trials = _grid_trials(f, values, before)
        if _heads_field(f):
            group = [g for g in values if _heads_field(g) and _same_sub(g, f)] or [f]
            for factor in (2.0, 0.5):
                for fields in ([f], group, *([g] for g in group if g != f)):
                    alt = {g: values[g] * factor for g in fields}
                    if all(float(x).is_integer() and x >= 1 for x in alt.values()):
                        trials.append({g: int(x) for g, x in alt.items()})
                for g in group:
                    x = values[g] * factor
                    if g != f and f in before and float(x).is_integer() and x >= 1:
                        trials.append({f: before[f], g: int(x)})
        for alt in trials:
            other = apply_fix(ck, target, Fix({**overrides, **alt}))
            if other.report is not None and bad_keys(other.report) <= bad:
                judged[i] = (c, replace(v, status="undetermined"))
                shown = ", ".join(f"{g} = {x}" for g, x in alt.items())
                c2 = replace(
                    c,
                    suggestion=replace(
                        c.suggestion,
                        message=c.suggestion.message
                        + f"; the shapes cannot tell it ({shown} fits as well): check it "
                        "against the model card",
                    ),
                )
                judged[i] = (c2, judged[i][1])
                break


def _grid_trials(
    f: str, values: Mapping[str, int], before: Mapping[str, int]
) -> list[dict[str, int]]:
    """A patch size whose kernel no weight shows (LeViT's conv stem) is told only by the grid
    ``image / patch``: the old patch with the image scaled to the same grid is the other
    answer to try (and the old image with the patch scaled, for an image size)."""
    leaf = f.rsplit(".", 1)[-1].lower()
    kinds = {"patch": ("image", "img", "resol"), "image": ("patch",), "img": ("patch",)}
    mine = next((k for k in kinds if k in leaf), None)
    if mine is None or f not in before:
        return []
    out = []
    for g, gv in values.items():
        g_leaf = g.rsplit(".", 1)[-1].lower()
        if g == f or not _same_sub(g, f) or not any(w in g_leaf for w in kinds[mine]):
            continue
        old, new = before[f], values[f]
        if mine == "patch" and old and new and gv // new > 0:
            out.append({f: old, g: (gv // new) * old})  # the grid is image // patch
        elif mine != "patch" and old and new and gv and new // gv > 0:
            out.append({f: old, g: max(1, old // (new // gv))})
    return out


def _int_leaves(config: Mapping[str, Any]) -> dict[str, int]:
    from ckptdiff.targets.factory import dotted_leaves

    return {
        d: v for d, v in dotted_leaves(config) if isinstance(v, int) and not isinstance(v, bool)
    }


def _heads_field(dotted: str) -> bool:

    return heads_like(dotted)


def _auto_class(
    out: ConfigFixes,
    wanted: str,
    lm_head: Sequence[str],
    overrides: Mapping[str, Any],
    report: Report,
    ck: Manifest,
    target: Manifest,
) -> None:
    """``--auto-class XForCausalLM`` for a checkpoint with a causal-LM head, proven by building
    that class with the rest of the fix."""

    outcome = apply_fix(ck, target, Fix(dict(overrides), auto_class=wanted))
    if outcome.report is None:
        return  # transformers has no such class for this model: say nothing
    verdict = judge(outcome, report, lm_head)
    if verdict.status != "verified":
        return
    info = target.metadata.get("target")
    auto = info.get("auto_class") if isinstance(info, Mapping) else None
    name = str(target.metadata.get("class", "")).rsplit(".", 1)[-1]
    why = f"--auto-class {auto}" if auto else "the config names no architectures"
    if not auto and (target.config or {}).get("architectures"):
        why = "the config's architectures"
    then = "every key then loads" if outcome.report.ok else "the head then loads"
    out.explained.update(lm_head)
    shown = listed(lm_head, 3)
    out.findings.append(
        Finding(
            "causal_lm_head",
            f"The checkpoint has a causal-LM head ({shown}) that the target, {name} ({why}), "
            f"has no place for: build {wanted} (--auto-class {wanted}); rebuilt on meta, "
            f"{then}. Keep {name} only to drop the head on purpose.",
            tuple(lm_head),
            "warning",
            {"class": name, "suggested_class": wanted},
        )
    )
    out.suggestions.append(
        Suggestion(
            "call",
            "--auto-class",
            None,
            wanted,
            verdict.status,
            f"build {wanted}, the class with the checkpoint's causal-LM head",
            sampled([f"{h}: unexpected in {name}" for h in lm_head]),
            {"class": wanted, "all_keys_load": outcome.report.ok},
        )
    )
