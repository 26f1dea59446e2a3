"""Solving: one round's config values that reproduce the checkpoint's shapes from the probes
(:func:`solve_round`); a dimension moved by one field alone by a linear fit a build confirms,
position grids, fields that move the same dims together (widths with heads, heads with
key/value heads), then a search.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.grid import patch_of, square_grid
from ckptdiff.diagnosis.probe import DimKey, Prober, Sensitivity
from ckptdiff.naming import POSITION_HINTS
from ckptdiff.types import Manifest


def _solve_linear(v0: float, v1: float, d0: int, d1: int, want: int) -> float | None:
    if d1 == d0:
        return None
    slope = (d1 - d0) / (v1 - v0)
    return v0 + (want - d0) / slope


def _as_value(v: float, like: int | float) -> int | float | None:
    if isinstance(like, int):
        r = round(v)
        return int(r) if abs(v - r) < 1e-9 and r > 0 else None
    return round(v, 6) if v > 0 else None


@dataclass
class Solved:
    """A solved field: its value, and the dimensions and containers it reproduces."""

    value: int | float
    dims: list[DimKey]
    containers: list[str]


def _free(s: Sensitivity, loads: AbstractSet[str]) -> bool:
    """True when changing the field moves no key that loads now."""
    return not any(k in loads for k, _ in s.dims)


def _solve_fields(
    sens: Mapping[str, Sensitivity],
    dims: Mapping[DimKey, tuple[int, int]],
    containers: Mapping[str, tuple[int, int]],
    values: Mapping[str, int | float],
    loads: AbstractSet[str] = frozenset(),
    unset: AbstractSet[str] = frozenset(),
) -> tuple[dict[str, Solved], list[str]]:
    """Fields whose value follows from observations they move alone (or as the only field
    among their movers that breaks no key that loads now: ``num_kv_heads`` for k/v rows that
    ``hidden_size`` moves too); and conflicts."""

    def solvers(movers: list[str]) -> list[str]:
        return movers if len(movers) == 1 else [f for f in movers if _free(sens[f], loads)]

    movers_d = {d: solvers([f for f, s in sens.items() if d in s.dims]) for d in dims}
    movers_c = {c: [f for f, s in sens.items() if c in s.containers] for c in containers}
    out: dict[str, Solved] = {}
    conflicts: list[str] = []
    for f, s in sens.items():
        got: list[float] = []
        used_d: list[DimKey] = []
        used_c: list[str] = []
        for d, (want, _) in dims.items():
            if movers_d[d] == [f]:
                d0, d1 = s.dims[d]
                v = _solve_linear(s.v0, s.v1, d0, d1, want)
                if v is not None:
                    got.append(v)
                    used_d.append(d)
        for c, (want, _) in containers.items():
            if movers_c[c] == [f]:
                n0, n1 = s.containers[c]
                v = _solve_linear(s.v0, s.v1, n0, n1, want)
                if v is not None:
                    got.append(v)
                    used_c.append(c)
        if not got:
            continue
        vals = {_as_value(v, values[f]) for v in got}
        if len(vals) != 1 or None in vals:
            conflicts.append(f)
            continue
        value = vals.pop()
        assert value is not None  # noqa: S101 - checked above
        if value != values[f] or f in unset:
            out[f] = Solved(value, used_d, used_c)
    return out, conflicts


def _grid_solve(
    prober: Prober,
    base: Mapping[str, Any],
    ck: Manifest,
    cur: Manifest,
    dims: Mapping[DimKey, tuple[int, int]],
    sens: Mapping[str, Sensitivity],
    values: Mapping[str, int | float],
) -> dict[str, Solved]:
    """A ViT position grid, ``(image / patch)**2 (+1)`` rows: when the patch embedding's
    kernel already agrees, the image size is ``grid * patch``; verified by a rebuild."""
    for (key, i), (want, _) in dims.items():
        g = square_grid(want) if any(h in key for h in POSITION_HINTS) else None
        if g is None:
            continue
        branch = key.split(".")[0]
        patch = patch_of(ck, branch)
        if patch is None or patch != patch_of(cur, branch):
            continue  # the patch size is solved first, from the kernel
        for f, s in sens.items():
            leaf = f.rsplit(".", 1)[-1].lower()
            if (key, i) not in s.dims or not any(w in leaf for w in ("image", "img", "resol")):
                continue
            image = g[0] * patch
            if image == values.get(f):
                continue
            m = prober.build({**base, f: image})
            t = m.tensors.get(key) if m is not None else None
            if t is not None and len(t.shape) > i and t.shape[i] == want:
                return {f: Solved(image, [(key, i)], [])}
    return {}


def _search(
    prober: Prober,
    base: Mapping[str, Any],
    fld: str,
    v0: int,
    dims: Mapping[DimKey, tuple[int, int]],
    s: Sensitivity,
) -> Solved | None:
    """The smallest integer value of ``fld`` that reproduces the dims it moves, by bisection
    (for dims moved by several fields, e.g. positions from image and patch size)."""
    mine = [d for d in dims if d in s.dims]
    if not mine or not isinstance(v0, int):
        return None
    d = mine[0]
    want = dims[d][0]
    d0, d1 = s.dims[d]
    increasing = (d1 - d0) * (s.v1 - s.v0) > 0

    def at(v: int) -> int | None:
        m = prober.build({**base, fld: v})
        if m is None or d[0] not in m.tensors or len(m.tensors[d[0]].shape) <= d[1]:
            return None
        return m.tensors[d[0]].shape[d[1]]

    lo, hi = 1, max(v0, 1)
    # grow hi until the dim passes the wanted value (monotone in the direction seen)
    for _ in range(12):
        got = at(hi)
        if got is None:
            return None
        if (got >= want) if increasing else (got <= want):
            break
        lo, hi = hi, hi * 2
    else:
        return None
    for _ in range(24):
        if lo >= hi:
            break
        mid = (lo + hi) // 2
        got = at(mid)
        if got is None:
            return None
        if (got >= want) if increasing else (got <= want):
            hi = mid
        else:
            lo = mid + 1
    m = prober.build({**base, fld: hi})
    if m is None:
        return None
    ok = [
        x
        for x in mine
        if m.tensors.get(x[0]) is not None
        and len(m.tensors[x[0]].shape) > x[1]
        and m.tensors[x[0]].shape[x[1]] == dims[x][0]
    ]
    if not ok or hi == v0:
        return None
    return Solved(hi, ok, [])


def _linear_holds(
    prober: Prober,
    base: Mapping[str, Any],
    solved: dict[str, Solved],
    dims: Mapping[DimKey, tuple[int, int]],
) -> dict[str, Solved]:
    """The linear fits that a build confirms: ``(image / patch)**2 + 1`` positions are not
    linear in the image size, and a fit of 38 for 101 rows is no answer."""
    out = {}
    for f, sol in solved.items():
        if not sol.dims:
            out[f] = sol
            continue
        m = prober.build({**base, f: sol.value})
        # one that does not build alone (width 1024 with 12 heads) gets companions later
        if m is None or all(_dim_is(m, k, i, dims[(k, i)][0]) for k, i in sol.dims):
            out[f] = sol
    return out


#: Builds a joint search may spend on one group of fields.
_JOINT_BUDGET = 48


def _joint_candidates(
    f: str,
    v0: int,
    mine: Sequence[DimKey],
    dims: Mapping[DimKey, tuple[int, int]],
    s: Sensitivity,
    values: Mapping[str, int | float],
    overrides: Mapping[str, Any],
) -> list[int]:
    """Values worth trying for ``f``: the one that keeps its ratio to a width changed in the
    same sub-config (the head dim), its own, linear fits, then divisors of the wanted dims."""
    sub = f.rsplit(".", 1)[0] if "." in f else ""
    out: list[int] = []
    for w, new in overrides.items():
        old = values.get(w)
        if (w.rsplit(".", 1)[0] if "." in w else "") != sub or not isinstance(old, int):
            continue
        if isinstance(new, int) and v0 and old % v0 == 0 and new % (old // v0) == 0:
            out.append(new // (old // v0))
    out.append(v0)
    for d in mine:
        d0, d1 = s.dims[d]
        v = _solve_linear(s.v0, s.v1, d0, d1, dims[d][0])
        if v is not None and abs(v - round(v)) < 1e-9 and v > 0:
            out.append(int(round(v)))
    divisors = {x for d in mine for x in range(1, dims[d][0] + 1) if dims[d][0] % x == 0}
    out += sorted(divisors, key=lambda x: abs(math.log(x / v0)) if v0 > 0 else x)
    return list(dict.fromkeys(v for v in out if v > 0))[:8]


def _dim_is(m: Manifest, key: str, i: int, want: int) -> bool:
    t = m.tensors.get(key)
    return t is not None and len(t.shape) > i and t.shape[i] == want


def _joint_solve(
    prober: Prober,
    base: Mapping[str, Any],
    ck: Manifest,
    dims: Mapping[DimKey, tuple[int, int]],
    sens: Mapping[str, Sensitivity],
    values: Mapping[str, int | float],
    now_loads: AbstractSet[str],
    overrides: Mapping[str, Any],
) -> dict[str, Solved]:
    """Fields that move the same dims solved together (heads and key/value heads for k/v
    rows once the width is set): the combination nearest the current values that reproduces
    every dim they move and breaks nothing that loads, within a budget of builds."""
    movers = {
        d: tuple(
            sorted(
                f
                for f, s in sens.items()
                if d in s.dims and isinstance(values.get(f), int) and _free(s, now_loads)
            )
        )
        for d in dims
    }
    group = next((m for m in movers.values() if 2 <= len(m) <= 3), None)
    if group is None:
        return {}
    mine = {f: [d for d in dims if d in sens[f].dims] for f in group}
    wanted = [d for f in group for d in mine[f]]
    options = [
        _joint_candidates(f, int(values[f]), mine[f], dims, sens[f], values, overrides)
        for f in group
    ]
    combos = sorted(itertools.product(*(range(len(o)) for o in options)), key=lambda c: (sum(c), c))
    for combo in combos[:_JOINT_BUDGET]:
        trial = {f: options[i][j] for i, (f, j) in enumerate(zip(group, combo, strict=True))}
        m = prober.build({**base, **trial})
        if m is None:
            continue
        if not all(_dim_is(m, k, i, dims[(k, i)][0]) for k, i in wanted):
            continue
        r = compare(ck, m)
        if now_loads - set(r.matched) - set(r.tied):
            continue
        return {f: Solved(v, mine[f], []) for f, v in trial.items() if v != values[f]}
    return {}


def solve_round(
    prober: Prober,
    base: Mapping[str, Any],
    checkpoint: Manifest,
    cur: Manifest,
    dims: Mapping[DimKey, tuple[int, int]],
    containers: Mapping[str, tuple[int, int]],
    sens: Mapping[str, Sensitivity],
    values: Mapping[str, int | float],
    unset: Mapping[str, int],
    now_loads: AbstractSet[str],
    overrides: Mapping[str, Any],
) -> dict[str, Solved]:
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
