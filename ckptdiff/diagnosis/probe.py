"""Probing: rebuild the target with one config field changed and see which dimensions of
which keys move, and which layer containers grow; what still differs from the checkpoint. The
candidate type the solver hands the verifier. The fields worth probing are
:mod:`ckptdiff.diagnosis.fields`'.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.errors import CkptDiffError
from ckptdiff.naming import containers
from ckptdiff.types import Finding, Manifest, Suggestion

Rebuild = Callable[[Manifest, Mapping[str, Any]], Manifest]
DimKey = tuple[str, int]


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


class Prober:
    """Builds the target with overrides on meta through ``rebuild`` (the verifier's cached
    builder); a build that fails is None, its error kept in ``errors``."""

    def __init__(self, target: Manifest, rebuild: Rebuild) -> None:
        self.target = target
        self._rebuild = rebuild
        self.builds = 0
        self.errors: dict[str, str] = {}

    def build(self, overrides: Mapping[str, Any]) -> Manifest | None:
        """The target rebuilt with ``overrides`` (the target itself for none), or None when it
        does not build."""
        if not overrides:
            return self.target
        self.builds += 1
        try:
            return self._rebuild(self.target, dict(overrides))
        except CkptDiffError as e:
            self.errors[json.dumps(dict(overrides), sort_keys=True, default=str)] = str(e)
            return None


@dataclass
class Sensitivity:
    """What changing one field (from ``v0`` to ``v1``) moves: ``(key, dim) -> (d0, d1)`` and
    ``container -> (n0, n1)`` (layer counts)."""

    v0: float
    v1: float
    dims: dict[DimKey, tuple[int, int]]  # (key, dim) -> (d0, d1)
    containers: dict[str, tuple[int, int]]  # container -> (n0, n1)

    @property
    def moves_nothing(self) -> bool:
        return not self.dims and not self.containers


def shape_changes(a: Manifest, b: Manifest) -> dict[DimKey, tuple[int, int]]:
    """``(key, dim) -> (size in a, size in b)`` of every dimension that differs between keys
    of the same rank in both."""
    out = {}
    for key, t in a.tensors.items():
        u = b.tensors.get(key)
        if u is None or len(u.shape) != len(t.shape):
            continue
        for i, (x, y) in enumerate(zip(t.shape, u.shape, strict=True)):
            if x != y:
                out[(key, i)] = (x, y)
    return out


def container_counts(m: Manifest) -> dict[str, int]:
    """``container -> number of layers`` (``encoder.layer`` -> 12) of a manifest."""
    return {k: len(v) for k, v in containers(m.tensors).items()}


def _probe_value(v: int | float) -> int | float:
    return v * 2 if isinstance(v, int) else round(v * 2, 6)


#: Explicit values an unset (None) field is probed at, in pairs; the first pair that builds.
_UNSET_PROBES = ((1, 2), (2, 4), (4, 8), (8, 16))


def sensitivity(
    prober: Prober,
    base: Mapping[str, Any],
    cur: Manifest,
    fld: str,
    v0: int | float,
    unset: bool = False,
) -> Sensitivity | None:
    """What changing ``fld`` moves, measured against ``cur`` by a rebuild at twice its value
    (or one more); an unset field (``unset``) is compared between two explicit values. None
    when no probe builds."""
    if unset:  # no value to start from: compare two explicit ones
        for a, b in _UNSET_PROBES:
            ma, mb = prober.build({**base, fld: a}), prober.build({**base, fld: b})
            if ma is None or mb is None:
                continue
            ca, cb = container_counts(ma), container_counts(mb)
            containers = {c: (ca[c], cb[c]) for c in ca if c in cb and ca[c] != cb[c]}
            return Sensitivity(a, b, shape_changes(ma, mb), containers)
        return None
    for v1 in (_probe_value(v0), v0 + 1 if isinstance(v0, int) else v0 + 0.5):
        m = prober.build({**base, fld: v1})
        if m is None:
            continue
        ca, cb = container_counts(cur), container_counts(m)
        containers = {c: (ca[c], cb[c]) for c in ca if c in cb and ca[c] != cb[c]}
        return Sensitivity(v0, v1, shape_changes(cur, m), containers)
    return None


def observations(
    ck: Manifest, cur: Manifest
) -> tuple[dict[DimKey, tuple[int, int]], dict[str, tuple[int, int]]]:
    """``(key, dim) -> (checkpoint, current)`` and ``container -> (checkpoint, current)``."""
    dims = shape_changes(cur, ck)
    dims = {k: (c, t) for k, (t, c) in dims.items()}
    ca, cc = container_counts(ck), container_counts(cur)
    containers = {c: (ca[c], cc[c]) for c in cc if c in ca and ca[c] != cc[c]}
    return dims, containers
