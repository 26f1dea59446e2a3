"""The config fields worth probing: numeric leaves by dotted path (and the class counts
transformers derives from ``id2label``), a factory's keyword defaults, int fields left None,
and the value each has now; the head fields whose values shapes cannot pin down.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ckptdiff.errors import CkptDiffError
from ckptdiff.targets.factory import dotted_leaves
from ckptdiff.types import Manifest

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
    probing: ``dotted -> 0`` (they are probed from explicit values, see
    :func:`ckptdiff.diagnosis.probe.sensitivity`)."""
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


#: Config fields shapes cannot pin down that change what the weights compute: the heads.
HEADS_LIKE = re.compile(r"(^|_)(heads?|n_head|head_dim)($|_)")


def heads_like(dotted: str) -> bool:
    """True for attention-head fields (``num_attention_heads``, ``vision_cfg.heads``,
    ``num_key_value_heads``, ``head_dim``): shapes show their product with the head dim at
    most, so a value is verified only when no other value fits as well."""
    return HEADS_LIKE.search(dotted.rsplit(".", 1)[-1].lower()) is not None or (
        "heads" in dotted.rsplit(".", 1)[-1].lower()
    )
