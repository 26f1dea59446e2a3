"""The solving rounds: probe, solve, rebuild, and again on what is left; each round takes
the first solver of :mod:`ckptdiff.diagnosis.solve` that finds values.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.diagnosis.probe import (
    DimKey,
    _Prober,
    _Sensitivity,
    _sensitivity,
)

# --- observations and solving --------------------------------------------------------------------
from ckptdiff.diagnosis.solve import (
    _companions,
    _drop_breaking,
    _free,
    _grid_solve,
    _joint_solve,
    _keep_head_dim,
    _linear_holds,
    _observations,
    _search,
    _solve_fields,
    _Solved,
    _touched_keys,
)
from ckptdiff.types import Manifest


def _solve_round(
    prober: _Prober,
    base: Mapping[str, Any],
    checkpoint: Manifest,
    cur: Manifest,
    dims: Mapping[DimKey, tuple[int, int]],
    containers: Mapping[str, tuple[int, int]],
    sens: Mapping[str, _Sensitivity],
    values: Mapping[str, int | float],
    unset: Mapping[str, int],
    now_loads: AbstractSet[str],
    overrides: Mapping[str, Any],
) -> dict[str, _Solved]:
    """One round's values, by the first solver that finds any: a linear fit a build confirms,
    a position grid, fields solved together, then a search."""
    solved, _ = _solve_fields(sens, dims, containers, values, now_loads, set(unset))
    solved = _linear_holds(prober, base, solved, dims)
    if not solved:
        solved = _grid_solve(prober, base, checkpoint, cur, dims, sens, values)
    if not solved:
        solved = _joint_solve(prober, base, checkpoint, dims, sens, values, now_loads, overrides)
    if not solved:
        # a search only over fields that break nothing that loads: any other value it
        # found would be dropped, and is no answer worth reporting
        for f, s in sorted(sens.items(), key=lambda kv: -len(kv[1].dims)):
            if (
                any(d in s.dims for d in dims)
                and isinstance(values[f], int)
                and _free(s, now_loads)
            ):
                hit = _search(prober, base, f, int(values[f]), dims, s)
                if hit is not None:
                    solved = {f: hit}
                    break
    return solved


@dataclass
class Rounds:
    """What :func:`solve_rounds` found: the values with their evidence, the head counts kept
    so they build (``companions``), the rebuilt target, the fields no shape moves
    (``quiet``), the first probes, why it stopped, values rejected for breaking keys that
    load, and the keys each value moves."""

    evidence: dict[str, _Solved] = field(default_factory=dict)
    companions: dict[str, Any] = field(default_factory=dict)
    cur: Manifest = field(default_factory=lambda: Manifest("", "", {}))
    quiet: list[str] = field(default_factory=list)
    first_sens: dict[str, _Sensitivity] = field(default_factory=dict)
    failure: str = ""
    rejected: dict[str, tuple[Any, list[str]]] = field(default_factory=dict)
    touched: dict[str, set[str]] = field(default_factory=dict)


def solve_rounds(
    prober: _Prober,
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
    evidence: dict[str, _Solved] = {}
    companions: dict[str, Any] = {}
    cur = target
    quiet: list[str] = []
    first_sens: dict[str, _Sensitivity] = {}
    failure = ""
    rejected: dict[str, tuple[Any, list[str]]] = {}
    touched: dict[str, set[str]] = {}
    for rnd in range(max_rounds):
        dims, containers = _observations(checkpoint, cur)
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
        sens: dict[str, _Sensitivity] = {}
        for f in pool:
            s = _sensitivity(prober, base, cur, f, values[f], f in unset)
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
        solved = _solve_round(
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
