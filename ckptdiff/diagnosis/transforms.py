"""Key rules beyond prefixes: one-to-one renames (``gamma`` -> ``weight``), fused vs
split q/k/v projections and transposed (``Conv1D``) weights, each with its tensor op. Pure.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# --- renames, fused q/k/v and transposed weights ------------------------------------------------

Shape = tuple[int, ...]

#: Renames worth proposing even when only one key shows them.
KNOWN_RENAMES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("gamma",): ("weight",),
    ("beta",): ("bias",),
}

#: Names of split query/key/value projections, as (q, k, v).
SPLIT_QKV = (
    ("q_proj", "k_proj", "v_proj"),
    ("query", "key", "value"),
    ("q", "k", "v"),
    ("to_q", "to_k", "to_v"),
    ("wq", "wk", "wv"),
    ("q_lin", "k_lin", "v_lin"),
)
#: Names of fused projections (a module holding ``weight``/``bias``); ``in_proj`` is
#: ``nn.MultiheadAttention``'s ``in_proj_weight``/``in_proj_bias`` attribute style.
FUSED_QKV = ("in_proj", "qkv", "qkv_proj", "query_key_value", "Wqkv", "wqkv", "to_qkv", "c_attn")


@dataclass(frozen=True)
class KeyTransform:
    """A key rule (or a few) found by alignment, with the keys it pairs up.

    Attributes:
        kind: ``rename``, ``transpose``, ``split`` (one checkpoint tensor becomes several
            target tensors) or ``concat`` (several become one).
        rules: the key-map rules (see :mod:`ckptdiff.keymap`).
        pairs: ``(checkpoint keys, target keys)`` it explains.
        message: one sentence naming the transform.
        data: extra detail (the keys a transpose also touches that shapes cannot tell...).
    """

    kind: str
    rules: tuple[dict[str, Any], ...]
    pairs: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def target_keys(self) -> list[str]:
        """Every target key it supplies."""
        return [t for _, ts in self.pairs for t in ts]


def key_template(key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``("a", "#", "w"), ("3",)`` for ``a.3.w``: components with indices as ``#``, and indices."""
    parts = key.split(".")
    return tuple("#" if p.isdigit() else p for p in parts), tuple(p for p in parts if p.isdigit())


def tail_regex(old: Sequence[str], new: Sequence[str]) -> tuple[str, str] | None:
    """A ``re.sub`` pattern and replacement turning components ``old`` into ``new``.

    The pattern starts at a component boundary (``(?P<pre>^|\\.)``); ``#`` components become
    named groups, which must appear in the same order on both sides.
    """
    if old.count("#") != new.count("#"):
        return None
    pat = [r"(?P<pre>^|\.)"]
    rep = [r"\g<pre>"]
    n = 0
    for i, p in enumerate(old):
        if i:
            pat.append(r"\.")
        if p == "#":
            pat.append(f"(?P<i{n}>\\d+)")
            n += 1
        else:
            pat.append(re.escape(p))
    n = 0
    for i, p in enumerate(new):
        if i:
            rep.append(".")
        if p == "#":
            rep.append(f"\\g<i{n}>")
            n += 1
        else:
            rep.append(p)
    return "".join(pat) + r"(?=\.|$)", "".join(rep)


def _rename_candidates(
    unexpected: Mapping[str, Shape], missing: Mapping[str, Shape]
) -> dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[str, str]]]:
    buckets: dict[tuple[Shape, tuple[str, ...]], list[str]] = defaultdict(list)
    for m, shape in missing.items():
        buckets[(shape, key_template(m)[1])].append(m)
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[str, str]]] = defaultdict(list)
    budget = 400_000
    for u, shape in unexpected.items():
        tu, idx = key_template(u)
        for m in buckets.get((shape, idx), ()):
            budget -= 1
            if budget < 0:
                return groups
            tm = key_template(m)[0]
            p = 0
            while p < min(len(tu), len(tm)) and tu[p] == tm[p]:
                p += 1
            s = 0
            while s < min(len(tu), len(tm)) - p and tu[-1 - s] == tm[-1 - s]:
                s += 1
            x, y = tu[p : len(tu) - s], tm[p : len(tm) - s]
            if not x or not y or x.count("#") != y.count("#"):
                continue
            groups[(x, y)].append((u, m))
    return groups


def shared_components(a: str, b: str) -> float:
    """The share of two keys' components that agree at both ends (indices as ``#``).

    ``enc.layers.0.layer_norm1.weight`` and ``enc.layers.0.ln_1.weight`` share 4 of 5;
    ``encoder.layer.0.output.LayerNorm.weight`` and ``layers.0.input_layernorm.weight`` 1 of 6.

    Example:
        >>> shared_components("a.0.norm1.weight", "a.0.ln_1.weight")
        0.75
    """
    ta, tb = key_template(a)[0], key_template(b)[0]
    n = min(len(ta), len(tb))
    p = 0
    while p < n and ta[p] == tb[p]:
        p += 1
    s = 0
    while s < n - p and ta[-1 - s] == tb[-1 - s]:
        s += 1
    return (p + s) / max(len(ta), len(tb), 1)


def find_renames(
    unexpected: Mapping[str, Shape], missing: Mapping[str, Shape], *, min_pairs: int = 2
) -> list[KeyTransform]:
    """One-to-one renames: checkpoint-only and target-only keys with one shape, whose names
    differ in one run of components, when the same rename holds for several keys.

    ``ln.gamma`` -> ``ln.weight`` and ``beta`` -> ``bias`` are proposed even for one key; other
    renames need ``min_pairs`` keys showing the same pattern. Layer indices must agree.

    Args:
        unexpected: ``key -> shape`` of the keys only the checkpoint has.
        missing: ``key -> shape`` of the keys only the target has.
        min_pairs: keys a rename must explain to be proposed.

    Returns:
        One ``rename`` :class:`KeyTransform` per pattern, most keys first.

    Example:
        >>> r = find_renames({"n.gamma": (4,), "n.beta": (4,)}, {"n.weight": (4,), "n.bias": (4,)})
        >>> [t.rules[0]["replacement"] for t in r]
        ['\\\\g<pre>weight', '\\\\g<pre>bias']
    """
    groups = _rename_candidates(unexpected, missing)

    def rank(item: tuple[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[str, str]]]) -> Any:
        (x, y), pairs = item
        known = KNOWN_RENAMES.get(x) == y
        sim = difflib.SequenceMatcher(None, ".".join(x), ".".join(y)).ratio()
        return (not known, -len(pairs), len(x) + len(y), -sim, x, y)

    used_u: set[str] = set()
    used_m: set[str] = set()
    out: list[KeyTransform] = []
    for (x, y), pairs in sorted(groups.items(), key=rank):
        free = [(u, m) for u, m in pairs if u not in used_u and m not in used_m]
        # one checkpoint key may pair with one target key only
        seen_u: set[str] = set()
        seen_m: set[str] = set()
        unique = []
        for u, m in free:
            if u in seen_u or m in seen_m:
                continue
            seen_u.add(u)
            seen_m.add(m)
            unique.append((u, m))
        known = KNOWN_RENAMES.get(x) == y
        if not unique or (len(unique) < min_pairs and not known):
            continue
        rx = tail_regex(x, y)
        if rx is None:
            continue
        pattern, replacement = rx
        compiled = re.compile(pattern)
        # the rule is applied to every key: keep it only if it sends the paired keys home
        if any(compiled.sub(replacement, u, count=1) != m for u, m in unique):
            continue
        used_u.update(u for u, _ in unique)
        used_m.update(m for _, m in unique)
        old, new = ".".join(x), ".".join(y)
        similarity = sum(shared_components(u, m) for u, m in unique) / len(unique)
        out.append(
            KeyTransform(
                "rename",
                ({"op": "rename", "pattern": pattern, "replacement": replacement},),
                tuple(((u,), (m,)) for u, m in unique),
                f"{len(unique)} checkpoint keys name '{old}' what the target calls '{new}' "
                f"(same shapes): rename it",
                {"from": old, "to": new, "known": known, "similarity": round(similarity, 3)},
            )
        )
    out.sort(key=lambda t: -len(t.pairs))
    return out
