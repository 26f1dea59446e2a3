"""Key alignment: find the key rules that turn unexpected + missing keys into matches.

Pure and torch-free. Given the keys only one side has, look for a prefix ``p1`` on the
checkpoint's keys and ``p2`` on the target's such that ``p1 + rest`` and ``p2 + rest`` pair
them up (``module.`` / ``_orig_mod.`` wrappers, a Lightning ``model.`` attribute, a branch moved
under ``text_branch.``...); beyond prefixes, one-to-one renames (``gamma`` -> ``weight``),
fused vs split q/k/v projections and transposed (``Conv1D``) weights, each with its transform.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.keymap import KeyMap
from ckptdiff.types import Finding, Manifest

__all__ = [
    "base_model_prefix_keymap",
    "FUSED_QKV",
    "KeyTransform",
    "PrefixMatch",
    "SPLIT_QKV",
    "WRAPPER_PREFIXES",
    "find_fused_qkv",
    "find_prefix_matches",
    "find_renames",
    "find_transposed",
    "scoped_prefix_rules",
    "shared_components",
]

#: Prefixes that wrappers add to every key (DDP, torch.compile, FSDP, Lightning, PEFT).
WRAPPER_PREFIXES = (
    "module.",
    "_orig_mod.",
    "model.",
    "_fsdp_wrapped_module.",
    "base_model.model.",
)


@dataclass(frozen=True)
class PrefixMatch:
    """Checkpoint keys ``strip + rest`` that are target keys ``add + rest``.

    Attributes:
        strip: prefix to remove from checkpoint keys ("" for none).
        add: prefix to put on checkpoint keys ("" for none).
        pairs: ``(checkpoint_key, target_key)`` pairs it explains.
    """

    strip: str
    add: str
    pairs: tuple[tuple[str, str], ...]

    @property
    def is_wrapper(self) -> bool:
        """True when the rule only strips or adds a known wrapper prefix (or a stack of them)."""
        p = self.strip or self.add
        if self.strip and self.add:
            return False
        while p:
            for w in WRAPPER_PREFIXES:
                if p.startswith(w):
                    p = p[len(w) :]
                    break
            else:
                return False
        return True

    def rules(self) -> list[dict[str, str]]:
        """The key-map rules (see :mod:`ckptdiff.keymap`)."""
        out = []
        if self.strip:
            out.append({"op": "strip_prefix", "prefix": self.strip})
        if self.add:
            out.append({"op": "add_prefix", "prefix": self.add})
        return out

    def options(self, side: str = "") -> str:
        """The CLI options that apply it (``--strip-prefix module.``)."""
        parts = []
        if self.strip:
            parts.append(f"--{side}strip-prefix {self.strip}")
        if self.add:
            parts.append(f"--{side}add-prefix {self.add}")
        return " ".join(parts)


def _splits(key: str) -> Iterable[tuple[str, str]]:
    """``(prefix, rest)`` at every dot boundary, the empty prefix first; rest never empty."""
    yield "", key
    i = key.find(".")
    while i != -1 and i + 1 < len(key):
        yield key[: i + 1], key[i + 1 :]
        i = key.find(".", i + 1)


def _ends_in_index(prefix: str) -> bool:
    parts = prefix.rstrip(".").rsplit(".", 1)
    return bool(prefix) and parts[-1].isdigit()


def _indices(prefix: str) -> list[str]:
    return [p for p in prefix.split(".") if p.isdigit()]


def _module_name(prefix: str) -> str:
    return next((p for p in reversed(prefix.rstrip(".").split(".")) if not p.isdigit()), "")


#: Qualifiers that make a module another one (``k_proj`` is not ``proj``).
_ROLE_QUALIFIERS = frozenset(
    {"q", "k", "v", "o", "query", "key", "value", "gate", "up", "down", "in", "out", "w1", "w2",
     "w3", "c", "fc1", "fc2", "lm", "pre", "post"}
)


def _similar_names(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    if not a or not b:
        return not a and not b
    short, long_ = sorted((a, b), key=len)
    if short != long_ and long_.endswith("_" + short):
        if long_[: -len(short) - 1] in _ROLE_QUALIFIERS:
            return False  # k_proj -> proj drops the role
    return short in long_ or difflib.SequenceMatcher(None, a, b).ratio() >= 0.6


def _structurally_sound(p1: str, p2: str, pairs: Sequence[tuple[str, str]]) -> bool:
    """A prefix rule keeps layer indices (``layers.1.`` never becomes ``blocks.0.`` or a
    top-level module), and one that pairs only leaves (``weight``, ``bias``) renames a module
    to a module of a similar name (``ln_final.`` -> ``final_layer_norm.``), not ``k_proj.``
    to ``norm2.`` because both hold a weight and a bias."""
    if _indices(p1) != _indices(p2):
        return False
    if not p1 or not p2 or any("." in u[len(p1) :] for u, _ in pairs):
        return True  # a prefix added or stripped keeps whole keys
    return _similar_names(_module_name(p1), _module_name(p2))


def find_prefix_matches(
    unexpected: Iterable[str], missing: Iterable[str], *, min_share: float = 0.5
) -> list[PrefixMatch]:
    """Prefix rules that pair checkpoint-only keys with target-only keys, best first.

    A rule is kept when it explains at least half of the checkpoint-only keys under its strip
    prefix and half of the target-only keys under its add prefix (so a rule built from a
    coincidental leaf name such as ``weight`` is not proposed), and each key is used once.

    Args:
        unexpected: keys only the checkpoint has.
        missing: keys only the target has.
        min_share: the share of keys under a prefix that a rule must explain.

    Returns:
        The rules, most keys explained first.

    Example:
        >>> [m.strip for m in find_prefix_matches(["module.a.w", "module.b.w"], ["a.w", "b.w"])]
        ['module.']
    """
    unexpected = list(unexpected)
    missing = list(missing)
    if not unexpected or not missing:
        return []
    by_rest: dict[str, list[str]] = defaultdict(list)
    for m in missing:
        for p2, rest in _splits(m):
            by_rest[rest].append(p2)
    counts: Counter[tuple[str, str]] = Counter()
    for u in unexpected:
        for p1, rest in _splits(u):
            for p2 in by_rest.get(rest, ()):
                if p1 != p2:
                    counts[(p1, p2)] += 1
    if not counts:
        return []

    used_u: set[str] = set()
    used_m: set[str] = set()
    missing_set = set(missing)
    out: list[PrefixMatch] = []
    for (p1, p2), _ in counts.most_common():
        pairs = []
        for u in unexpected:
            if u in used_u or not u.startswith(p1):
                continue
            t = p2 + u[len(p1) :]
            if t in missing_set and t not in used_m:
                pairs.append((u, t))
        if not pairs:
            continue
        under_p1 = sum(1 for u in unexpected if u.startswith(p1) and u not in used_u)
        under_p2 = sum(1 for m in missing if m.startswith(p2) and m not in used_m)
        if len(pairs) < min_share * under_p1 or len(pairs) < min_share * under_p2:
            continue
        match = PrefixMatch(p1, p2, tuple(pairs))
        if len(pairs) == 1 and not match.is_wrapper:
            continue
        if _ends_in_index(p1) and _ends_in_index(p2):
            continue  # layer 3 -> layer 5 is a depth difference, not a key map
        if not _structurally_sound(p1, p2, pairs):
            continue
        out.append(match)
        used_u.update(u for u, _ in pairs)
        used_m.update(t for _, t in pairs)
    out.sort(key=lambda m: -len(m.pairs))
    return out


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


def _template(key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``("a", "#", "w"), ("3",)`` for ``a.3.w``: components with indices as ``#``, and indices."""
    parts = key.split(".")
    return tuple("#" if p.isdigit() else p for p in parts), tuple(p for p in parts if p.isdigit())


def _tail_regex(old: Sequence[str], new: Sequence[str]) -> tuple[str, str] | None:
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
        buckets[(shape, _template(m)[1])].append(m)
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[str, str]]] = defaultdict(list)
    budget = 400_000
    for u, shape in unexpected.items():
        tu, idx = _template(u)
        for m in buckets.get((shape, idx), ()):
            budget -= 1
            if budget < 0:
                return groups
            tm = _template(m)[0]
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
    ta, tb = _template(a)[0], _template(b)[0]
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
        rx = _tail_regex(x, y)
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


def _qkv_parse(key: str) -> tuple[str, str, str, str] | None:
    """``(kind, parent, name, leaf)``: ``("fused", "a.attn", "in_proj", "weight")`` or
    ``("q"|"k"|"v", "a.attn", "q_proj", "weight")``; None for other keys."""
    parts = key.split(".")
    last = parts[-1]
    if last in ("in_proj_weight", "in_proj_bias"):
        return "fused", ".".join(parts[:-1]), "in_proj", last[len("in_proj_") :]
    if len(parts) < 2 or last not in ("weight", "bias"):
        return None
    name, parent = parts[-2], ".".join(parts[:-2])
    if name in FUSED_QKV and name != "in_proj":
        return "fused", parent, name, last
    for names in SPLIT_QKV:
        if name in names:
            return "qkv"[names.index(name)], parent, name, last
    return None


def _qkv_key(parent: str, name: str, leaf: str) -> str:
    body = f"{name}_{leaf}" if name == "in_proj" else f"{name}.{leaf}"
    return f"{parent}.{body}" if parent else body


def find_fused_qkv(
    unexpected: Mapping[str, Shape], missing: Mapping[str, Shape]
) -> list[KeyTransform]:
    """Fused ``in_proj_weight`` / ``qkv`` / ``query_key_value`` [q+k+v, d] on one side and split
    ``q_proj``/``k_proj``/``v_proj`` (or ``query``/``key``/``value``) on the other, under the
    same parent module (or parents that differ the same way for every layer).

    Shapes decide: the fused rows must be the sum of the split rows, other dims equal (GQA's
    smaller k/v rows give a split with ``sizes``). The order q, k, v is assumed; a shape diff
    cannot prove the packing of a fused tensor.

    Returns:
        ``split`` transforms (checkpoint fused, target split) and ``concat`` ones (the reverse).
    """
    out: list[KeyTransform] = []
    for fused_side, split_side, kind in (
        (unexpected, missing, "split"),
        (missing, unexpected, "concat"),
    ):
        fused: dict[tuple[str, str], tuple[str, str]] = {}  # (parent, leaf) -> (name, key)
        split: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
        for key in fused_side:
            p = _qkv_parse(key)
            if p and p[0] == "fused":
                fused[(p[1], p[3])] = (p[2], key)
        for key in split_side:
            p = _qkv_parse(key)
            if p and p[0] != "fused":
                split[(p[1], p[3], _split_family(p[2]))][p[0]] = key
        groups: dict[tuple[Any, ...], list[tuple[str, tuple[str, str, str], Shape]]] = defaultdict(
            list
        )
        for (sparent, leaf, family), roles in split.items():
            if len(roles) != 3:
                continue
            keys3 = (roles["q"], roles["k"], roles["v"])
            shapes = [split_side[k] for k in keys3]
            if len({s[1:] for s in shapes}) != 1 or not shapes[0]:
                continue
            rows = tuple(s[0] for s in shapes)
            for (fparent, fleaf), (fname, fkey) in fused.items():
                fshape = fused_side[fkey]
                if (
                    fleaf != leaf
                    or not fshape
                    or fshape[0] != sum(rows)
                    or fshape[1:] != shapes[0][1:]
                ):
                    continue
                ft, fi = _template(fparent) if fparent else ((), ())
                st, si = _template(sparent) if sparent else ((), ())
                if fi != si:
                    continue
                common = 0
                while common < min(len(ft), len(st)) and ft[common] == st[common]:
                    common += 1
                diff = (ft[common:], st[common:])
                sizes = None if len(set(rows)) == 1 else rows
                groups[(diff, fname, family, leaf, sizes)].append((fkey, keys3, fshape))
        for (diff, fname, family, leaf, sizes), items in groups.items():
            items = _one_to_one(items)
            if not items:
                continue
            fdiff, sdiff = diff
            names = next(n for n in SPLIT_QKV if _split_family(n[0]) == family)
            fused_tail = list(fdiff) + (
                [f"in_proj_{leaf}"] if fname == "in_proj" else [fname, leaf]
            )
            rx_f = _tail_regex(fused_tail, fused_tail)
            if rx_f is None:
                continue
            fpat = rx_f[0].removesuffix(r"(?=\.|$)") + "$"
            rule: dict[str, Any]
            if kind == "split":
                into = []
                for n in names:
                    rx = _tail_regex(fused_tail, list(sdiff) + [n, leaf])
                    if rx is None:
                        break
                    into.append(rx[1])
                else:
                    rule = {"op": "split", "pattern": fpat, "into": into, "dim": 0}
                    if sizes:
                        rule["sizes"] = list(sizes)
                    how = "split into 3 along dim 0" + (f" (sizes {list(sizes)})" if sizes else "")
                    out.append(_qkv_transform("split", rule, items, how, fname, names))
            else:
                split_tail = list(sdiff) + ["__PART__", leaf]
                rx = _tail_regex(split_tail, fused_tail)
                if rx is None:
                    continue
                part = "(?P<part>" + "|".join(re.escape(n) for n in names) + ")"
                pattern = rx[0].replace("__PART__", part).removesuffix(r"(?=\.|$)") + "$"
                rule = {
                    "op": "concat",
                    "pattern": pattern,
                    "parts": list(names),
                    "replacement": rx[1],
                    "dim": 0,
                }
                out.append(
                    _qkv_transform(
                        "concat",
                        rule,
                        items,
                        "concatenate along dim 0 in q, k, v order",
                        fname,
                        names,
                    )
                )
    return out


def _split_family(name: str) -> str:
    for names in SPLIT_QKV:
        if name in names:
            return names[0]
    return name


def _one_to_one(
    items: list[tuple[str, tuple[str, str, str], Shape]],
) -> list[tuple[str, tuple[str, str, str], Shape]]:
    seen_f: set[str] = set()
    seen_s: set[str] = set()
    out = []
    for f, s, shape in items:
        if f in seen_f or any(k in seen_s for k in s):
            continue
        seen_f.add(f)
        seen_s.update(s)
        out.append((f, s, shape))
    return out


def _qkv_transform(
    kind: str,
    rule: dict[str, Any],
    items: list[tuple[str, tuple[str, str, str], Shape]],
    how: str,
    fname: str,
    names: Sequence[str],
) -> KeyTransform:
    pairs: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    if kind == "split":
        pairs = tuple(((f,), s) for f, s, _ in items)
        what = f"the checkpoint's fused '{fname}' holds the target's {'/'.join(names)}"
    else:
        pairs = tuple((s, (f,)) for f, s, _ in items)
        what = f"the checkpoint's {'/'.join(names)} are the target's fused '{fname}'"
    shape = items[0][2]
    return KeyTransform(
        kind,
        (rule,),
        pairs,
        f"{len(items)} times {what} ({list(shape)}): {how}; the q, k, v order is assumed, "
        "shapes cannot prove it",
        {"transform": how, "fused_shape": list(shape)},
    )


#: Projections whose output is wider than their input (``c_attn`` [d -> 3d], ``c_fc``...).
_UP_PROJECTIONS = frozenset(
    {
        "c_attn",
        "c_fc",
        "qkv",
        "query_key_value",
        "Wqkv",
        "wqkv",
        "fc1",
        "fc_in",
        "up_proj",
        "gate_proj",
        "gate_up_proj",
        "dense_h_to_4h",
        "w1",
        "w3",
        "in_proj",
        "c_fc2",
    }
)
#: Projections whose output is narrower than their input (``mlp.c_proj`` [4d -> d]...).
_DOWN_PROJECTIONS = frozenset({"fc2", "fc_out", "down_proj", "dense_4h_to_h", "w2"})
#: transformers modules whose linear layers are GPT-2's ``Conv1D`` ([in, out]).
_CONV1D_MODULES = re.compile(r"modeling_(gpt2|openai|imagegpt|decision_transformer)\b")


def _stores_in_out(key: str, shape: Shape) -> bool | None:
    """True when a 2-D weight of this name is stored [in, out], False for [out, in], None when
    its name does not tell which of its dims is the input."""
    parts = key.split(".")
    if len(parts) < 2 or shape[0] == shape[1]:
        return None
    name, parent = parts[-2], parts[-3] if len(parts) > 2 else ""
    if name in _UP_PROJECTIONS:
        return shape[1] > shape[0]
    if name in _DOWN_PROJECTIONS or (name == "c_proj" and parent == "mlp"):
        return shape[0] > shape[1]
    return None


def transposed_layout(
    mismatched: Iterable[tuple[str, Shape, Shape]], target_class: str | None = None
) -> str | None:
    """Which layout the checkpoint's transposed weights are in: ``"conv1d"`` ([in, out], as
    GPT-2's ``Conv1D``), ``"linear"`` ([out, in], ``nn.Linear``), or None when nothing tells.

    A target built from a transformers GPT-2-family module is Conv1D, so the checkpoint is
    Linear; otherwise the names of up and down projections (``c_attn`` is wider out than in,
    ``mlp.c_proj`` narrower) tell which dim of the checkpoint's shape is the input.

    Example:
        >>> transposed_layout([("h.0.mlp.c_fc.weight", (8, 32), (32, 8))])
        'conv1d'
    """
    if target_class and _CONV1D_MODULES.search(target_class):
        return "linear"
    votes: Counter[bool] = Counter()
    for key, a, _ in mismatched:
        v = _stores_in_out(key, a)
        if v is not None:
            votes[v] += 1
    if votes[True] > votes[False]:
        return "conv1d"
    if votes[False] > votes[True]:
        return "linear"
    return None


def find_transposed(
    mismatched: Iterable[tuple[str, Shape, Shape]],
    matched: Mapping[str, Shape] | None = None,
    *,
    target_class: str | None = None,
) -> KeyTransform | None:
    """Weights stored transposed: [in, out] (GPT-2's ``Conv1D``) on one side and [out, in]
    (``nn.Linear``) on the other.

    One rule covers every key ending like a transposed one (``c_attn.weight``,
    ``c_fc.weight``): square weights with those endings (``attn.c_proj.weight``) are
    transposed too, as the layout is a property of the module type, and are listed in
    ``data["square"]`` because their shapes alone cannot show it. Which side is which is said
    only when it is known (:func:`transposed_layout`): ``data["checkpoint_layout"]``.

    Args:
        mismatched: ``(key, checkpoint_shape, target_shape)`` for keys on both sides.
        matched: ``key -> shape`` of keys that already load, to find the square ones.
        target_class: the target model's class path, when it was built.
    """
    items = [(k, a, b) for k, a, b in mismatched if len(a) == 2 and a != b and a == b[::-1]]
    keys = [k for k, _, _ in items]
    if not keys:
        return None
    endings = sorted({".".join(k.split(".")[-2:]) for k in keys})
    alternatives = "|".join(re.escape(e) for e in endings)
    pattern = rf"(^|\.)({alternatives})$"
    compiled = re.compile(pattern)
    square = sorted(
        k for k, s in (matched or {}).items() if len(s) == 2 and s[0] == s[1] and compiled.search(k)
    )
    note = (
        f"; {len(square)} square weights with the same names are transposed too "
        "(shapes cannot tell)"
        if square
        else ""
    )
    layout = transposed_layout(items, target_class)
    n = f"{len(keys)} weight{'s' if len(keys) != 1 else ''}"
    if layout == "conv1d":
        message = (
            f"{n}: the checkpoint stores them as [in, out] (GPT-2's Conv1D); the target "
            f"expects [out, in] (nn.Linear): transpose them (.t()){note}"
        )
    elif layout == "linear":
        message = (
            f"{n}: the checkpoint stores them as [out, in] (nn.Linear); the target (GPT-2's "
            f"Conv1D) expects [in, out]: transpose them (.t()){note}"
        )
    else:
        k, a, b = items[0]
        message = (
            f"{n} are stored transposed relative to the target ({k}: {list(a)} where the "
            f"target has {list(b)}): transpose them (.t()){note}"
        )
    return KeyTransform(
        "transpose",
        ({"op": "transpose", "pattern": pattern},),
        tuple(((k,), (k,)) for k in keys),
        message,
        {"transform": ".t()", "square": square, "checkpoint_layout": layout},
    )


def scoped_prefix_rules(match: PrefixMatch, checkpoint_keys: Iterable[str]) -> list[dict[str, Any]]:
    """The rules of a prefix match, limited to the keys it pairs when it would touch others.

    ``--add-prefix text_branch.`` moves every key, also an ``audio_branch.*`` that loads as it
    is (and ``--strip-prefix a. --add-prefix b.`` moves the keys outside ``a.`` too); then the
    rule becomes a rename of the paired keys' first components only
    (``^(?=(?:embeddings|encoder)\\.)`` -> ``text_branch.``).

    Example:
        >>> m = PrefixMatch("", "text_branch.", (("embeddings.w", "text_branch.embeddings.w"),))
        >>> scoped_prefix_rules(m, ["embeddings.w", "audio_branch.w"])[0]["pattern"]
        '^(?=(?:embeddings)(?:\\\\.|$))'
    """
    paired = {u for u, _ in match.pairs}
    checkpoint_keys = list(checkpoint_keys)
    # an add_prefix rule moves every key, also those outside the strip prefix
    if not match.add or all(k in paired for k in checkpoint_keys):
        return match.rules()
    if match.strip and all(k in paired for k in checkpoint_keys if k.startswith(match.strip)):
        # every key under the stripped prefix moves: one rename of that prefix says it
        return [{"op": "rename", "pattern": "^" + re.escape(match.strip), "replacement": match.add}]
    heads = sorted({u[len(match.strip) :].split(".", 1)[0] for u in paired})
    alternatives = "|".join(re.escape(h) for h in heads)
    return [
        {
            "op": "rename",
            "pattern": f"^{re.escape(match.strip)}(?=(?:{alternatives})(?:\\.|$))",
            "replacement": match.add,
        }
    ]


def base_model_prefix_keymap(
    checkpoint: Manifest, target: Manifest, key_map: KeyMap | None = None
) -> tuple[KeyMap | None, Finding | None]:
    """The base-model prefix rule transformers would apply, if it makes more keys match.

    A ``BertModel`` checkpoint (``embeddings.*``) loaded into ``BertForSequenceClassification``
    (``bert.embeddings.*``) gets ``bert.`` added; the reverse gets it stripped. Checkpoint keys
    whose first part is one of the target's own top-level modules (``classifier``) are left as
    they are, as transformers does key by key.

    Args:
        checkpoint: the checkpoint's manifest.
        target: the target's manifest (``metadata["base_model_prefix"]``).
        key_map: the user's rules, applied before deciding.

    Returns:
        The rule (or None) and an ``info`` finding that says what was done.
    """
    prefix = target.metadata.get("base_model_prefix")
    if not isinstance(prefix, str) or not prefix:
        return None, None
    dot = prefix + "."
    keys = [key_map.apply(k) if key_map else k for k in checkpoint.tensors]
    if not keys:
        return None, None
    ck_has = any(k.startswith(dot) for k in keys)
    target_has = any(k.startswith(dot) for k in target.tensors)
    if target_has and not ck_has:
        heads = sorted({k.split(".", 1)[0] for k in target.tensors if not k.startswith(dot)})
        own = [h for h in heads if any(k.split(".", 1)[0] == h for k in keys)]
        if own:
            pattern = "^(?!(?:" + "|".join(re.escape(h) for h in own) + r")(?:\.|$))"
            rules = [{"op": "rename", "pattern": pattern, "replacement": dot}]
        else:
            rules = [{"op": "add_prefix", "prefix": dot}]
        what = f"without the '{dot}' prefix the target puts on its base model"
        done = "adds it"
    elif ck_has and not target_has:
        rules = [{"op": "strip_prefix", "prefix": dot}]
        what = f"under the base-model prefix '{dot}', which the target does not have"
        done = "strips it"
    else:
        return None, None
    prefix_map = KeyMap.from_rules(rules)
    before = sum(1 for k in keys if k in target.tensors)
    after = sum(1 for k in keys if prefix_map.apply(k) in target.tensors)
    if after <= before:
        return None, None
    cls = str(target.metadata.get("class", target.source)).rsplit(".", 1)[-1]
    option = f"--add-prefix {dot}" if rules[0]["op"] != "strip_prefix" else f"--strip-prefix {dot}"
    finding = Finding(
        "base_model_prefix",
        f"The checkpoint holds the base model {what} ({cls}); transformers {done} when "
        f"loading, and so does this check ({after - before} more keys match).",
        (),
        "info",
        {"prefix": dot, "rules": rules, "option": option},
    )
    return prefix_map, finding
