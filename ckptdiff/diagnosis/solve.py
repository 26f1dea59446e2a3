"""Solving: the config values that reproduce the checkpoint's shapes from the probes; a
dimension moved by one field alone by a linear fit a build confirms, fields that move the
same dims together (widths with heads, heads with key/value heads), position grids.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.grid import _grid, _patch
from ckptdiff.diagnosis.probe import (
    _HEADS_LIKE,
    DimKey,
    _container_counts,
    _Prober,
    _Sensitivity,
    _shape_changes,
    _under,
)
from ckptdiff.naming import POSITION_HINTS
from ckptdiff.types import Manifest
from ckptdiff.wording import shape_str

# --- observations and solving --------------------------------------------------------------------


def _observations(
    ck: Manifest, cur: Manifest
) -> tuple[dict[DimKey, tuple[int, int]], dict[str, tuple[int, int]]]:
    """``(key, dim) -> (checkpoint, current)`` and ``container -> (checkpoint, current)``."""
    dims = _shape_changes(cur, ck)
    dims = {k: (c, t) for k, (t, c) in dims.items()}
    ca, cc = _container_counts(ck), _container_counts(cur)
    containers = {c: (ca[c], cc[c]) for c in cc if c in ca and ca[c] != cc[c]}
    return dims, containers


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
class _Solved:
    value: int | float
    dims: list[DimKey]
    containers: list[str]


def _free(s: _Sensitivity, loads: AbstractSet[str]) -> bool:
    """True when changing the field moves no key that loads now."""
    return not any(k in loads for k, _ in s.dims)


def _solve_fields(
    sens: Mapping[str, _Sensitivity],
    dims: Mapping[DimKey, tuple[int, int]],
    containers: Mapping[str, tuple[int, int]],
    values: Mapping[str, int | float],
    loads: AbstractSet[str] = frozenset(),
    unset: AbstractSet[str] = frozenset(),
) -> tuple[dict[str, _Solved], list[str]]:
    """Fields whose value follows from observations they move alone (or as the only field
    among their movers that breaks no key that loads now: ``num_kv_heads`` for k/v rows that
    ``hidden_size`` moves too); and conflicts."""

    def solvers(movers: list[str]) -> list[str]:
        return movers if len(movers) == 1 else [f for f in movers if _free(sens[f], loads)]

    movers_d = {d: solvers([f for f, s in sens.items() if d in s.dims]) for d in dims}
    movers_c = {c: [f for f, s in sens.items() if c in s.containers] for c in containers}
    out: dict[str, _Solved] = {}
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
            out[f] = _Solved(value, used_d, used_c)
    return out, conflicts


def _grid_solve(
    prober: _Prober,
    base: Mapping[str, Any],
    ck: Manifest,
    cur: Manifest,
    dims: Mapping[DimKey, tuple[int, int]],
    sens: Mapping[str, _Sensitivity],
    values: Mapping[str, int | float],
) -> dict[str, _Solved]:
    """A ViT position grid, ``(image / patch)**2 (+1)`` rows: when the patch embedding's
    kernel already agrees, the image size is ``grid * patch``; verified by a rebuild."""
    for (key, i), (want, _) in dims.items():
        g = _grid(want) if any(h in key for h in POSITION_HINTS) else None
        if g is None:
            continue
        branch = key.split(".")[0]
        patch = _patch(ck, branch)
        if patch is None or patch != _patch(cur, branch):
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
                return {f: _Solved(image, [(key, i)], [])}
    return {}


def _search(
    prober: _Prober,
    base: Mapping[str, Any],
    fld: str,
    v0: int,
    dims: Mapping[DimKey, tuple[int, int]],
    s: _Sensitivity,
) -> _Solved | None:
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
    return _Solved(hi, ok, [])


def _companions(
    prober: _Prober,
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


def _linear_holds(
    prober: _Prober,
    base: Mapping[str, Any],
    solved: dict[str, _Solved],
    dims: Mapping[DimKey, tuple[int, int]],
) -> dict[str, _Solved]:
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


def heads_like(dotted: str) -> bool:
    """True for attention-head fields (``num_attention_heads``, ``vision_cfg.heads``,
    ``num_key_value_heads``, ``head_dim``): shapes show their product with the head dim at
    most, so a value is verified only when no other value fits as well."""
    return _HEADS_LIKE.search(dotted.rsplit(".", 1)[-1].lower()) is not None or (
        "heads" in dotted.rsplit(".", 1)[-1].lower()
    )


def _touched_keys(s: _Sensitivity, ck: Manifest, cur: Manifest) -> set[str]:
    """The keys a field moves: the dims it changes and every key in a container it grows."""
    out = {k for k, _ in s.dims}
    for c in s.containers:
        out.update(k for k in (*ck.tensors, *cur.tensors) if _under(k, c))
    return out


#: Builds a joint search may spend on one group of fields.
_JOINT_BUDGET = 48


def _joint_candidates(
    f: str,
    v0: int,
    mine: Sequence[DimKey],
    dims: Mapping[DimKey, tuple[int, int]],
    s: _Sensitivity,
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
    prober: _Prober,
    base: Mapping[str, Any],
    ck: Manifest,
    dims: Mapping[DimKey, tuple[int, int]],
    sens: Mapping[str, _Sensitivity],
    values: Mapping[str, int | float],
    now_loads: AbstractSet[str],
    overrides: Mapping[str, Any],
) -> dict[str, _Solved]:
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
        return {f: _Solved(v, mine[f], []) for f, v in trial.items() if v != values[f]}
    return {}


def _keep_head_dim(
    prober: _Prober,
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


def _drop_breaking(
    prober: _Prober,
    base: Mapping[str, Any],
    changed: dict[str, Any],
    sens: Mapping[str, _Sensitivity],
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


def _shape_text(m: Manifest, key: str) -> str:
    t = m.tensors.get(key)
    return shape_str(t.shape) if t is not None else "-"
