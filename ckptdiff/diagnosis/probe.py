"""Probing: rebuild the target with one config field changed and see which dimensions of
which keys move, and which layer containers grow; what still differs from the checkpoint. The
config fields worth probing (heads among them) and the candidate type the solver hands the
verifier.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.errors import CkptDiffError
from ckptdiff.naming import containers
from ckptdiff.targets.factory import dotted_leaves
from ckptdiff.types import Finding, Manifest, Suggestion

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


def probe_worthy(dotted: str) -> bool:
    """True for a config field worth probing: not an id, seed, epsilon, dropout... (by its
    leaf's name) and not inside a list (``id2label.0``)."""
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


def unset_fields(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, int]:
    """Int fields whose value is None (in the config, or a factory's default) that are worth
    probing: ``dotted -> 0`` (they are probed from explicit values, see :func:`sensitivity`)."""
    out: dict[str, int] = {}
    leaves = [(d, v) for d, v in dotted_leaves(config)] + list(defaults.items())
    for dotted, v in leaves:
        name = dotted.rsplit(".", 1)[-1].lower()
        if v is None and probe_worthy(dotted) and _INT_LIKE.search(name):
            out[dotted] = 0
    return out


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for p in dotted.split("."):
        node = node[p]
    return node


def current_value(config: Mapping[str, Any], defaults: Mapping[str, Any], dotted: str) -> Any:
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


#: Config fields shapes cannot pin down that change what the weights compute: the heads.
HEADS_LIKE = re.compile(r"(^|_)(heads?|n_head|head_dim)($|_)")


def observations(
    ck: Manifest, cur: Manifest
) -> tuple[dict[DimKey, tuple[int, int]], dict[str, tuple[int, int]]]:
    """``(key, dim) -> (checkpoint, current)`` and ``container -> (checkpoint, current)``."""
    dims = shape_changes(cur, ck)
    dims = {k: (c, t) for k, (t, c) in dims.items()}
    ca, cc = container_counts(ck), container_counts(cur)
    containers = {c: (ca[c], cc[c]) for c in cc if c in ca and ca[c] != cc[c]}
    return dims, containers


def heads_like(dotted: str) -> bool:
    """True for attention-head fields (``num_attention_heads``, ``vision_cfg.heads``,
    ``num_key_value_heads``, ``head_dim``): shapes show their product with the head dim at
    most, so a value is verified only when no other value fits as well."""
    return HEADS_LIKE.search(dotted.rsplit(".", 1)[-1].lower()) is not None or (
        "heads" in dotted.rsplit(".", 1)[-1].lower()
    )
