"""The solving rounds: probe, solve, rebuild, and again on what is left; each round takes
the first solver of :mod:`ckptdiff.diagnosis.solve` that finds values, and keeps those that
build and break no key that loads (head counts adjusted with a width, where that is all it
takes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.fields import heads_like
from ckptdiff.diagnosis.probe import (
    Prober,
    Sensitivity,
    observations,
    sensitivity,
)
from ckptdiff.diagnosis.solve import Solved, solve_round
from ckptdiff.naming import in_container
from ckptdiff.types import Manifest


@dataclass
class Rounds:
    """What :func:`solve_rounds` found: the values with their evidence, the head counts kept
    so they build (``companions``), the rebuilt target, the fields no shape moves
    (``quiet``), the first probes, why it stopped, values rejected for breaking keys that
    load, and the keys each value moves."""

    evidence: dict[str, Solved] = field(default_factory=dict)
    companions: dict[str, Any] = field(default_factory=dict)
    cur: Manifest = field(default_factory=lambda: Manifest("", "", {}))
    quiet: list[str] = field(default_factory=list)
    first_sens: dict[str, Sensitivity] = field(default_factory=dict)
    failure: str = ""
    rejected: dict[str, tuple[Any, list[str]]] = field(default_factory=dict)
    touched: dict[str, set[str]] = field(default_factory=dict)


def solve_rounds(
    prober: Prober,
    checkpoint: Manifest,
    target: Manifest,
    values: dict[str, int | float],
    unset: Mapping[str, int],
    loads: set[str],
    max_rounds: int = 4,
) -> Rounds:
    """Probe, solve, rebuild, and again on what is left (each round solves what the previous
    one unlocked), at most ``max_rounds`` times."""
    overrides: dict[str, Any] = {}
    evidence: dict[str, Solved] = {}
    companions: dict[str, Any] = {}
    cur = target
    quiet: list[str] = []
    first_sens: dict[str, Sensitivity] = {}
    failure = ""
    rejected: dict[str, tuple[Any, list[str]]] = {}
    touched: dict[str, set[str]] = {}
    for rnd in range(max_rounds):
        dims, containers = observations(checkpoint, cur)
        if not dims and not containers:
            break
        pool = [f for f in values if f not in overrides]
        if rnd:  # later rounds: only the fields the first probes saw moving something left
            pool = [
                f
                for f in pool
                if f in first_sens
                and (
                    any(d in first_sens[f].dims for d in dims)
                    or any(c in first_sens[f].containers for c in containers)
                )
            ]
        base = {**overrides, **companions}
        sens: dict[str, Sensitivity] = {}
        for f in pool:
            s = sensitivity(prober, base, cur, f, values[f], f in unset)
            if s is not None:
                sens[f] = s
                if f in unset:
                    values[f] = int(s.v0)
        if not rnd:
            first_sens = dict(sens)
            quiet = [f for f, s in sens.items() if s.moves_nothing]
        now_loads = {
            k
            for k, t in cur.tensors.items()
            if k in checkpoint.tensors and checkpoint.tensors[k].shape == t.shape
        }
        solved = solve_round(
            prober,
            base,
            checkpoint,
            cur,
            dims,
            containers,
            sens,
            values,
            unset,
            now_loads,
            overrides,
        )
        if not solved:
            break
        for f in solved:
            touched.setdefault(f, set()).update(_touched_keys(sens[f], checkpoint, cur))
        changed = {f: s.value for f, s in solved.items()}
        changed, broke = _drop_breaking(prober, base, changed, sens, checkpoint, loads | now_loads)
        for f, keys in broke.items():
            kept = _keep_head_dim(
                prober,
                {**base, **changed},
                f,
                solved[f].value,
                values,
                checkpoint,
                loads | now_loads,
            )
            if kept is None:
                rejected[f] = (solved[f].value, keys)
                continue
            changed[f] = solved[f].value
            companions.update(kept)
            base = {**base, **kept}
        if not changed:
            break
        solved = {f: solved[f] for f in changed}
        m = prober.build({**base, **changed})
        if m is None:
            moved = {f: len(s.dims) for f, s in first_sens.items()}
            fix = _companions(prober, base, changed, values, quiet, moved)
            if fix is None:
                shown = ", ".join(f"{f}={v}" for f, v in changed.items())
                err = next(reversed(prober.errors.values()), "")
                failure = f"the target does not build with {shown} ({err})"
                break
            trial, m = fix
            companions.update(trial)
        overrides.update(changed)
        evidence.update(solved)
        cur = m
    return Rounds(evidence, companions, cur, quiet, first_sens, failure, rejected, touched)


def _touched_keys(s: Sensitivity, ck: Manifest, cur: Manifest) -> set[str]:
    """The keys a field moves: the dims it changes and every key in a container it grows."""
    out = {k for k, _ in s.dims}
    for c in s.containers:
        out.update(k for k in (*ck.tensors, *cur.tensors) if in_container(k, c))
    return out


def _drop_breaking(
    prober: Prober,
    base: Mapping[str, Any],
    changed: dict[str, Any],
    sens: Mapping[str, Sensitivity],
    ck: Manifest,
    loads: set[str],
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Drop proposed values that break keys which load now; a wrong fix is worse than none."""
    broke: dict[str, list[str]] = {}
    while changed:
        m = prober.build({**base, **changed})
        if m is None:
            return changed, broke  # the caller tries companions, then gives up with the error
        r = compare(ck, m)
        bad = sorted(loads & ({x.key for x in r.mismatched} | {t.key for t in r.missing}))
        if not bad:
            return changed, broke
        guilty = [
            f for f in changed if f in sens and any(k in bad for k, _ in sens[f].dims)
        ] or list(changed)
        for f in guilty:
            broke[f] = bad
            del changed[f]
    return changed, broke


def _keep_head_dim(
    prober: Prober,
    base: Mapping[str, Any],
    fld: str,
    value: Any,
    values: Mapping[str, int | float],
    ck: Manifest,
    loads: AbstractSet[str],
) -> dict[str, int] | None:
    """A width that breaks key/value rows which load now (hidden 32 -> 64 with 2 key/value
    heads of dim 8) fits once the attention heads grow with it, keeping the head dim: the
    head counts that do so (never verified: shapes cannot tell them), or None."""
    old = values.get(fld)
    if not isinstance(old, int) or not isinstance(value, int) or old <= 0:
        return None
    sub = fld.rsplit(".", 1)[0] if "." in fld else ""
    trial: dict[str, int] = {}
    for h, hv in values.items():
        leaf = h.rsplit(".", 1)[-1].lower()
        if (h.rsplit(".", 1)[0] if "." in h else "") != sub or not isinstance(hv, int):
            continue
        if not heads_like(h) or "kv" in leaf or "key_value" in leaf or "head_dim" in leaf:
            continue
        if (hv * value) % old == 0:
            trial[h] = hv * value // old
    if not trial:
        return None
    m = prober.build({**base, fld: value, **trial})
    if m is None:
        return None
    r = compare(ck, m)
    return None if loads - set(r.matched) - set(r.tied) else trial


def _companions(
    prober: Prober,
    base: dict[str, Any],
    changed: Mapping[str, Any],
    values: Mapping[str, int | float],
    quiet: Sequence[str],
    moved: Mapping[str, int],
) -> tuple[dict[str, Any], Manifest] | None:
    """When the proposed values do not build (width 1024 with 12 heads), adjust fields the
    shapes cannot determine (heads) in the same sub-config, keeping their ratio to the width."""
    trial: dict[str, Any] = {}
    for h in quiet:
        hp = h.rsplit(".", 1)[0] if "." in h else ""
        hv = values.get(h)
        if "head" not in h.rsplit(".", 1)[-1] or not isinstance(hv, int):
            continue
        # the width of the same sub-config: the changed field that moves the most dims
        widths = [
            f
            for f in changed
            if (f.rsplit(".", 1)[0] if "." in f else "") == hp
            and isinstance(values.get(f), int)
            and isinstance(changed[f], int)
        ]
        if not widths:
            continue
        f = max(widths, key=lambda x: moved.get(x, 0))
        old, new = int(values[f]), int(changed[f])
        if (hv * new) % old == 0 and old % hv == 0:
            trial[h] = hv * new // old  # keep the head dim
    if not trial:
        return None
    m = prober.build({**base, **changed, **trial})
    if m is None:
        return None
    for h in list(trial):  # keep only the adjustments the build needs
        fewer = {k: v for k, v in trial.items() if k != h}
        m2 = prober.build({**base, **changed, **fewer})
        if m2 is not None:
            trial, m = fewer, m2
    return trial, m
