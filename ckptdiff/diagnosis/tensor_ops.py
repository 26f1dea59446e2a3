"""Key rules that change tensors: fused vs split q/k/v projections (concatenate, split)
and transposed (``Conv1D``) weights. Pure.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ckptdiff.diagnosis.prefixes import PrefixMatch
from ckptdiff.diagnosis.transforms import (
    FUSED_QKV,
    SPLIT_QKV,
    KeyTransform,
    Shape,
    key_template,
    tail_regex,
)
from ckptdiff.keymap import KeyMap
from ckptdiff.types import Finding, Manifest


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
                ft, fi = key_template(fparent) if fparent else ((), ())
                st, si = key_template(sparent) if sparent else ((), ())
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
            rx_f = tail_regex(fused_tail, fused_tail)
            if rx_f is None:
                continue
            fpat = rx_f[0].removesuffix(r"(?=\.|$)") + "$"
            rule: dict[str, Any]
            if kind == "split":
                into = []
                for n in names:
                    rx = tail_regex(fused_tail, list(sdiff) + [n, leaf])
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
                rx = tail_regex(split_tail, fused_tail)
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
