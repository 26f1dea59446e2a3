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

import itertools
import json
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.errors import CkptDiffError
from ckptdiff.targets.factory import dotted_leaves
from ckptdiff.types import Finding, Manifest, Report, Suggestion

__all__ = [
    "Candidate",
    "HeadFixes",
    "SuggestResult",
    "heads_like",
    "factory_defaults",
    "head_fixes",
    "fixed_config",
    "numeric_fields",
    "suggest_config",
]

Rebuild = Callable[[Manifest, Mapping[str, Any]], Manifest]
DimKey = tuple[str, int]

#: Config leaves never probed (ids, seeds, floats that shape nothing).
_SKIP_SUFFIXES = ("_id", "_ids", "seed", "_index", "_idx")
_SKIP_WORDS = (
    "eps",
    "dropout",
    "theta",
    "range",
    "std",
    "temperature",
    "prob",
    "factor",
    "scale",
    "epsilon",
    "version",
    "chunk",
    "bucket",
    "max_length",
    "min_length",
    "beams",
    "beam",
    "top_k",
    "top_p",
    "penalty",
    "window",
    "sliding",
    "return",
    "output",
    "no_repeat",
    "length_penalty",
    "batch",
    "dtype",
    "cross_attention_layers",
)
#: Names that shapes cannot determine, listed when present in the config.
_UNDETERMINED_HINTS = (
    "act",
    "activation",
    "eps",
    "dropout",
    "quick_gelu",
    "heads",
    "head_dim",
    "rope",
    "norm",
)



@dataclass(frozen=True)
class Candidate:
    """A suggestion before the verifier judged it.

    Attributes:
        suggestion: the suggestion, status ``unverified`` (``undetermined`` for values kept
            only so the model builds).
        touched: the keys whose shapes it moves (both sides' names): every one must match
            after the fix for it to be ``verified``.
        shape_invisible: a value the shapes may not pin down (attention heads): verified
            only when no other value fits as well.
    """

    suggestion: Suggestion
    touched: frozenset[str] = frozenset()
    shape_invisible: bool = False


@dataclass
class SuggestResult:
    """What :func:`suggest_config` found.

    Attributes:
        findings: ``no_fix`` (the reason there is no fix) and ``undetermined`` (fields shapes
            cannot tell).
        candidates: ``config`` candidates, for :mod:`ckptdiff.verify` to judge together.
        overrides: ``dotted field -> value`` of every candidate: the emitted config's changes.
    """

    findings: list[Finding] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)


def numeric_fields(config: Mapping[str, Any]) -> dict[str, int | float]:
    """The config leaves worth probing: positive ints (and ``*ratio*`` floats), by dotted path.

    Example:
        >>> numeric_fields({"vision_cfg": {"width": 768, "mlp_ratio": 4.0}, "eps": 1e-5})
        {'vision_cfg.width': 768, 'vision_cfg.mlp_ratio': 4.0}
    """
    out: dict[str, int | float] = {}
    for dotted, v in dotted_leaves(config):
        name = dotted.rsplit(".", 1)[-1].lower()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            continue
        if name.endswith(_SKIP_SUFFIXES) or any(w in name for w in _SKIP_WORDS):
            continue
        if any(p.isdigit() for p in dotted.split(".")):
            continue  # id2label.0 and the like
        if isinstance(v, float) and "ratio" not in name and "mult" not in name:
            continue
        out[dotted] = v
    out.update(_label_counts(config))
    return out


def _label_counts(config: Mapping[str, Any], at: str = "") -> dict[str, int]:
    """``num_labels`` wherever a (sub-)config holds ``id2label``: transformers derives the
    class count from it, and the verifier writes it back as maps of the new size."""
    out: dict[str, int] = {}
    labels = config.get("id2label")
    if isinstance(labels, Mapping) and labels and "num_labels" not in config:
        out[f"{at}num_labels"] = len(labels)
    for k, v in config.items():
        if isinstance(v, Mapping) and k not in ("id2label", "label2id"):
            out.update(_label_counts(v, f"{at}{k}."))
    return out


def _probe_worthy(dotted: str) -> bool:
    name = dotted.rsplit(".", 1)[-1].lower()
    if name.endswith(_SKIP_SUFFIXES) or any(w in name for w in _SKIP_WORDS):
        return False
    return not any(p.isdigit() for p in dotted.split("."))


#: Names of int fields that may be left None (``num_kv_heads=None``: "same as num_heads").
_INT_LIKE = re.compile(r"(^|_)(num|n)_|_(size|dim|heads|layers)$|^(heads|layers|width)$")


def factory_defaults(target: Manifest) -> dict[str, Any]:
    """The keyword parameters of a factory target the config does not set, with their
    defaults: ints, bools, and ``None`` where the annotation allows an int.

    Example:
        >>> m = build_target("fixtures.models:build_llama")  # doctest: +SKIP
        >>> factory_defaults(m)["num_kv_heads"]  # doctest: +SKIP
        None
    """
    import inspect

    info = target.metadata.get("target")
    if not isinstance(info, Mapping) or info.get("kind") != "factory":
        return {}
    from ckptdiff.targets.factory import load_callable

    try:
        params = inspect.signature(load_callable(str(info["spec"]))).parameters.values()
    except (CkptDiffError, TypeError, ValueError):
        return {}
    config = target.config or {}
    out: dict[str, Any] = {}
    for p in params:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name in config:
            continue
        d = p.default
        if d is None:
            if re.search(r"\bint\b", str(p.annotation)):
                out[p.name] = None
        elif isinstance(d, (bool, int)):
            out[p.name] = d
    return out


def _unset_fields(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, int]:
    """Int fields whose value is None (in the config, or a factory's default) that are worth
    probing: ``dotted -> 0`` (they are probed from explicit values, see :func:`_sensitivity`)."""
    out: dict[str, int] = {}
    leaves = [(d, v) for d, v in dotted_leaves(config)] + list(defaults.items())
    for dotted, v in leaves:
        name = dotted.rsplit(".", 1)[-1].lower()
        if v is None and _probe_worthy(dotted) and _INT_LIKE.search(name):
            out[dotted] = 0
    return out


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for p in dotted.split("."):
        node = node[p]
    return node


def _current(config: Mapping[str, Any], defaults: Mapping[str, Any], dotted: str) -> Any:
    """The value a field has now: the config's, else the factory's default, else None."""
    try:
        return _get(config, dotted)
    except (KeyError, TypeError):
        return defaults.get(dotted)


def fixed_config(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``overrides`` (dotted keys) applied; neither is modified."""
    from ckptdiff.targets.factory import deep_merge

    return deep_merge(config, overrides)


# --- probing -------------------------------------------------------------------------------------


class _Prober:
    """Builds the target with overrides on meta through ``rebuild`` (the verifier's cached
    builder); a build that fails is None, its error kept in ``errors``."""

    def __init__(self, target: Manifest, rebuild: Rebuild) -> None:
        self.target = target
        self._rebuild = rebuild
        self.builds = 0
        self.errors: dict[str, str] = {}

    def build(self, overrides: Mapping[str, Any]) -> Manifest | None:
        if not overrides:
            return self.target
        self.builds += 1
        try:
            return self._rebuild(self.target, dict(overrides))
        except CkptDiffError as e:
            self.errors[json.dumps(dict(overrides), sort_keys=True, default=str)] = str(e)
            return None


@dataclass
class _Sensitivity:
    """What changing one field (from ``v0`` to ``v1``) moves."""

    v0: float
    v1: float
    dims: dict[DimKey, tuple[int, int]]  # (key, dim) -> (d0, d1)
    containers: dict[str, tuple[int, int]]  # container -> (n0, n1)

    @property
    def moves_nothing(self) -> bool:
        return not self.dims and not self.containers


def _shape_changes(a: Manifest, b: Manifest) -> dict[DimKey, tuple[int, int]]:
    out = {}
    for key, t in a.tensors.items():
        u = b.tensors.get(key)
        if u is None or len(u.shape) != len(t.shape):
            continue
        for i, (x, y) in enumerate(zip(t.shape, u.shape, strict=True)):
            if x != y:
                out[(key, i)] = (x, y)
    return out


def _container_counts(m: Manifest) -> dict[str, int]:
    from ckptdiff.explain import _containers

    return {k: len(v) for k, v in _containers(m.tensors).items()}


def _probe_value(v: int | float) -> int | float:
    return v * 2 if isinstance(v, int) else round(v * 2, 6)


#: Explicit values an unset (None) field is probed at, in pairs; the first pair that builds.
_UNSET_PROBES = ((1, 2), (2, 4), (4, 8), (8, 16))


def _sensitivity(
    prober: _Prober,
    base: Mapping[str, Any],
    cur: Manifest,
    fld: str,
    v0: int | float,
    unset: bool = False,
) -> _Sensitivity | None:
    if unset:  # no value to start from: compare two explicit ones
        for a, b in _UNSET_PROBES:
            ma, mb = prober.build({**base, fld: a}), prober.build({**base, fld: b})
            if ma is None or mb is None:
                continue
            ca, cb = _container_counts(ma), _container_counts(mb)
            containers = {c: (ca[c], cb[c]) for c in ca if c in cb and ca[c] != cb[c]}
            return _Sensitivity(a, b, _shape_changes(ma, mb), containers)
        return None
    for v1 in (_probe_value(v0), v0 + 1 if isinstance(v0, int) else v0 + 0.5):
        m = prober.build({**base, fld: v1})
        if m is None:
            continue
        ca, cb = _container_counts(cur), _container_counts(m)
        containers = {c: (ca[c], cb[c]) for c in ca if c in cb and ca[c] != cb[c]}
        return _Sensitivity(v0, v1, _shape_changes(cur, m), containers)
    return None


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
    from ckptdiff.explain import POSITION_HINTS, _grid, _patch

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
    from ckptdiff.diff import compare

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
        return {
            f: _Solved(v, mine[f], [])
            for f, v in trial.items()
            if v != values[f]
        }
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
    from ckptdiff.diff import compare

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
    from ckptdiff.diff import compare

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
    return "[" + ", ".join(map(str, t.shape)) + "]" if t is not None else "-"


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
    from ckptdiff.diff import compare

    out = SuggestResult()
    config = dict(target.config or {})
    defaults = factory_defaults(target)
    values = numeric_fields(config)
    values.update(
        {
            f: v
            for f, v in defaults.items()
            if isinstance(v, int) and not isinstance(v, bool) and _probe_worthy(f)
        }
    )
    unset = _unset_fields(config, defaults)
    values.update(unset)
    prober = _Prober(target, rebuild)
    overrides: dict[str, Any] = {}
    evidence: dict[str, _Solved] = {}
    companions: dict[str, Any] = {}
    cur = target
    quiet: list[str] = []
    first_sens: dict[str, _Sensitivity] = {}
    failure = ""
    loads = set(report.matched)
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
        solved, _ = _solve_fields(sens, dims, containers, values, now_loads, set(unset))
        solved = _linear_holds(prober, base, solved, dims)
        if not solved:
            solved = _grid_solve(prober, base, checkpoint, cur, dims, sens, values)
        if not solved:
            solved = _joint_solve(
                prober, base, checkpoint, dims, sens, values, now_loads, overrides
            )
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
        if not solved:
            break
        for f in solved:
            touched.setdefault(f, set()).update(_touched_keys(sens[f], checkpoint, cur))
        changed = {f: s.value for f, s in solved.items()}
        changed, broke = _drop_breaking(
            prober, base, changed, sens, checkpoint, loads | now_loads
        )
        for f, keys in broke.items():
            kept = _keep_head_dim(
                prober, {**base, **changed}, f, solved[f].value, values, checkpoint,
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

    for f, sol in evidence.items():
        keys = list(dict.fromkeys(k for k, _ in sol.dims)) + [
            f"{c}.{{0-{_count(checkpoint, c) - 1}}}" for c in sol.containers
        ]
        out.overrides[f] = sol.value
        now = _current(config, defaults, f)
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
                        _current(config, defaults, h),
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
                f"break {len(keys)} keys that load now ({_ex(keys)}).",
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
                f"No verified config fix for {len(leftover)} keys ({_ex(leftover)}): {reason}.",
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


def _under(key: str, container: str) -> bool:
    rx = "^" + re.escape(container).replace("\\#", r"\d+") + r"\.\d+(\.|$)"
    return re.match(rx, key) is not None


def _count(m: Manifest, container: str) -> int:
    return _container_counts(m).get(container, 0)


def _ex(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _evidence(keys: Sequence[str], ck: Manifest, target: Manifest, sol: _Solved) -> list[str]:
    out = []
    seen = set()
    for k, _ in sol.dims:
        if k in seen:
            continue
        seen.add(k)
        out.append(f"{k}: {_shape_text(ck, k)} vs {_shape_text(target, k)}")
    for c in sol.containers:
        out.append(f"{c}: {_count(ck, c)} layers vs {_count(target, c)}")
    from ckptdiff.explain import sampled

    return list(sampled(out))


def _reason(sol: _Solved, ck: Manifest, target: Manifest) -> str:
    if sol.containers:
        c = sol.containers[0]
        return f"the checkpoint has {_count(ck, c)} layers in {c}, the target {_count(target, c)}"
    k, i = sol.dims[0]
    n = len({k for k, _ in sol.dims})
    return (
        f"{n} key{'s' if n != 1 else ''} move{'s' if n == 1 else ''} with it, e.g. {k} "
        f"{_shape_text(ck, k)} vs {_shape_text(target, k)}"
    )


def _why_not(
    keys: Sequence[str],
    sens: Mapping[str, _Sensitivity],
    values: Mapping[str, Any],
    prober: _Prober,
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
#: Config fields shapes cannot pin down that change what the weights compute: the heads.
_HEADS_LIKE = re.compile(r"(^|_)(heads?|n_head|head_dim)($|_)")
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
        (names if _HEADS_LIKE.search(leaf) else other).append(dotted)
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
                    f"set {f} = {first.suggested} as well: it repeats {first.field} (the loss "
                    "and generation read it), and a stale copy breaks training after a resize",
                    first.evidence,
                    {"follows": first.field},
                ),
                vocab[0].touched,
            )
        )


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
    from ckptdiff.lint import VOCAB_HEAD_ROWS

    return key.endswith("weight") and any(p in VOCAB_HEAD_ROWS for p in key.split("."))


def _tie_fix(
    out: HeadFixes,
    report: Report,
    ck: Manifest,
    target: Manifest,
    rebuild: Rebuild,
) -> None:
    from ckptdiff.diff import compare
    from ckptdiff.lint import vocab_tensors

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
    prober = _Prober(target, rebuild)
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
        shape = _shape_text(ck, embed)
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
