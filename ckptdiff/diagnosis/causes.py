"""Causes: a tuple of small rules, each taking the comparison (after alignment) and both
manifests and returning ``kind="cause"`` findings or None. Pure and torch-free.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ckptdiff.diagnosis.cause_finding import cause_finding
from ckptdiff.diagnosis.grid import patch_size, position_rows
from ckptdiff.diagnosis.lint import vocab_tensors
from ckptdiff.naming import (
    CLASS_HEADS,
    EMBED_NAMES,
    HEAD_NAMES,
    MLP_HINTS,
    POSITION_HINTS,
    RNN_LEAF,
    VOCAB_HEAD_ROWS,
    containers,
    has_part,
    in_container,
    key_parts,
)
from ckptdiff.types import Finding, Manifest, Mismatch, Report
from ckptdiff.wording import listed

Shape = tuple[int, ...]
CauseRule = Callable[[Report, Manifest, Manifest], "list[Finding] | None"]


# --- causes ---------------------------------------------------------------------------------------


def zero3_placeholders(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """ZeRO-3 saves ``torch.Size([0])`` placeholders for partitioned parameters."""
    out = []
    for side, m in (("checkpoint", ck), ("target", target)):
        empty = [k for k, t in m.tensors.items() if t.shape == (0,)]
        if len(empty) >= 2 and len(empty) * 2 >= len(m.tensors):
            fix = (
                "gather it first (DeepSpeed's zero_to_fp32.py, or "
                "convert_zero_checkpoint_to_fp32_state_dict)"
                if side == "checkpoint"
                else "the target is still partitioned: load before the DeepSpeed engine wraps it"
            )
            out.append(
                cause_finding(
                    "zero3",
                    f"ZeRO-3 placeholders: {len(empty)} of the {side}'s {len(m.tensors)} "
                    f"tensors have shape [0]: {fix}",
                    sorted(empty)[:50],
                    len(empty) if side == "checkpoint" else 0,
                    len(empty) if side == "target" else 0,
                    "error",
                )
            )
    return out or None


def scalar_vs_one(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """``logit_scale`` saved as a scalar ``[]`` where the model has ``[1]`` (or the reverse)."""
    keys = [m.key for m in report.mismatched if {m.checkpoint_shape, m.target_shape} == {(), (1,)}]
    if not keys:
        return None
    m0 = next(m for m in report.mismatched if m.key == keys[0])
    return [
        cause_finding(
            "scalar",
            f"{listed(keys)}: a scalar [] on one side and [1] on the other; "
            "reshape-compatible (value.reshape(target_shape)), as open_clip does",
            keys,
            list(m0.checkpoint_shape),
            list(m0.target_shape),
            "info",
        )
    ]


def depth(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """Layer indices present on one side only: ``resblocks.12-23`` in the checkpoint only."""
    a, b = containers(ck.tensors), containers(target.tensors)
    only = [t.key for t in report.unexpected] + [t.key for t in report.missing]
    out = []
    for tmpl in sorted(set(a) & set(b)):
        if len(a[tmpl]) == len(b[tmpl]):
            continue
        keys = [k for k in only if in_container(k, tmpl)]
        if not keys:
            continue
        n, m = len(a[tmpl]), len(b[tmpl])
        extra = f"{abs(n - m)} layer{'s' if abs(n - m) != 1 else ''}"
        out.append(
            cause_finding(
                "depth",
                f"depth: the checkpoint has {n} layers in {tmpl}, the target "
                f"{m} (the keys of {extra} are "
                f"{'unexpected' if n > m else 'missing'})",
                keys,
                n,
                m,
                container=tmpl,
            )
        )
    # nested containers repeat their parent's story: keep the outermost
    kept = [
        f
        for f in out
        if not any(
            g is not f and f.data["container"].startswith(g.data["container"] + ".") for g in out
        )
    ]
    return kept or None


def _pairs(m: Mismatch) -> list[tuple[int, int, int]]:
    if len(m.checkpoint_shape) != len(m.target_shape):
        return []
    pairs = zip(m.checkpoint_shape, m.target_shape, strict=True)
    return [(i, a, b) for i, (a, b) in enumerate(pairs) if a != b]


def _is_special(key: str) -> bool:
    return (
        has_part(key, EMBED_NAMES)
        or has_part(key, HEAD_NAMES)
        or has_part(key, POSITION_HINTS)
        or any(h in key for h in POSITION_HINTS)
    )


def _width_pairs(report: Report) -> list[tuple[int, int]]:
    """``(checkpoint, target)`` widths: 1-D tensors (norms, biases) that differ, on 2+ keys;
    a pair that is a multiple of a more common one (a fused q/k/v bias: 3x) is not a width."""
    counts: Counter[tuple[int, int]] = Counter()
    for m in report.mismatched:
        if len(m.checkpoint_shape) == 1 and len(m.target_shape) == 1 and not _is_special(m.key):
            counts[(m.checkpoint_shape[0], m.target_shape[0])] += 1
    out: list[tuple[int, int]] = []
    for (x, y), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n < 2 or x == 0 or y == 0:
            continue
        if any(x * b == y * a and x % a == 0 and x != a for a, b in out):
            continue
        out.append((x, y))
    return out


def width(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """One number differs across many keys (1024 vs 768): the hidden width."""
    out = []
    for a, b in _width_pairs(report):
        keys = [
            m.key
            for m in report.mismatched
            if any(
                (x, y) == (a, b) or (x * b == y * a and x % a == 0 and y % b == 0)
                for _, x, y in _pairs(m)
            )
        ]
        out.append(
            cause_finding(
                "width",
                f"hidden width: {a} in the checkpoint vs {b} in the target{_scale(report, a, b)}, "
                f"across {len(keys)} keys ({listed(keys)})",
                keys,
                a,
                b,
            )
        )
    return out or None


def _scale(report: Report, a: int, b: int) -> str:
    """`` (8x, as is 512 vs 64)`` when the width moved by a whole-number factor and other
    dimensions (the MLP's) moved by the same one."""
    big, small = max(a, b), min(a, b)
    if small == 0 or big % small:
        return ""
    others = sorted(
        {
            (x, y)
            for m in report.mismatched
            for _, x, y in _pairs(m)
            if (x, y) != (a, b) and x * b == y * a
        }
    )
    if not others:
        return ""
    shown = " and ".join(f"{x} vs {y}" for x, y in others[:3])
    verb = "is" if len(others[:3]) == 1 else "are"
    return f" ({big // small}x, as {verb} {shown})"


def _explained_by_width(report: Report, m: Mismatch) -> bool:
    widths = _width_pairs(report)
    return bool(_pairs(m)) and all(any(x * b == y * a for a, b in widths) for _, x, y in _pairs(m))


def mlp_size(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """MLP (intermediate) size: MLP keys whose dims differ other than by the width ratio."""
    by_pair: dict[tuple[int, int], list[str]] = defaultdict(list)
    widths = _width_pairs(report)
    for m in report.mismatched:
        if not has_part(m.key, MLP_HINTS):
            continue
        for _, x, y in _pairs(m):
            if not any(x * b == y * a for a, b in widths) and (x, y) not in widths:
                by_pair[(x, y)].append(m.key)
    out = [
        cause_finding(
            "mlp",
            f"MLP size: {x} in the checkpoint vs {y} in the target ({listed(keys)})",
            keys,
            x,
            y,
        )
        for (x, y), keys in sorted(by_pair.items(), key=lambda kv: -len(kv[1]))
    ]
    return out or None


def vocab_rows(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """Input embedding and output head rows: the vocabulary."""

    vocab_keys: set[str] = set()
    for side in (ck, target):
        embeds, heads = vocab_tensors(side)
        vocab_keys.update(embeds)
        vocab_keys.update(k for k in heads if set(key_parts(k)) & set(VOCAB_HEAD_ROWS))
    widths = _width_pairs(report)
    rows: dict[str, tuple[int, int]] = {}
    for m in report.mismatched:
        if m.key not in vocab_keys or len(m.checkpoint_shape) != 2 or len(m.target_shape) != 2:
            continue
        pair = (m.checkpoint_shape[0], m.target_shape[0])
        if pair[0] != pair[1] and pair not in widths:  # the hidden width is not a vocabulary
            rows[m.key] = pair
    if not rows:
        return None
    keys = list(rows)
    a, b = rows[keys[0]]
    grown = a - b
    detail = "; ".join(f"{k} {x} vs {y}" for k, (x, y) in rows.items())
    how = (
        f"{grown} more rows in the checkpoint (added tokens: resize_token_embeddings)"
        if grown > 0
        else f"{-grown} fewer rows in the checkpoint"
    )
    return [
        cause_finding(
            "vocab",
            f"vocabulary rows: {detail}: {how}",
            keys,
            a,
            b,
            rows={k: list(v) for k, v in rows.items()},
        )
    ]


def relative_position_heads(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """Relative-position tables ``[entries, heads]``: the number of attention heads."""
    keys = []
    pair = None
    for m in report.mismatched:
        if (
            ("relative_position_bias_table" in m.key or "relative_attention_bias" in m.key)
            and len(m.checkpoint_shape) == 2
            and len(m.target_shape) == 2
            and m.checkpoint_shape[1] != m.target_shape[1]
        ):
            keys.append(m.key)
            pair = pair or (m.checkpoint_shape[1], m.target_shape[1])
    if not keys or pair is None:
        return None
    return [
        cause_finding(
            "heads",
            f"attention heads: the relative-position tables have {pair[0]} "
            f"columns in the checkpoint vs {pair[1]} in the target "
            f"({listed(keys)})",
            keys,
            pair[0],
            pair[1],
        )
    ]


def _attn_rows(m: Manifest, parent: str, names: Sequence[str]) -> int | None:
    for n in names:
        t = m.tensors.get(f"{parent}.{n}.weight")
        if t is not None and t.shape:
            return t.shape[0]
    return None


def _heads_in_config(config: Mapping[str, Any] | None) -> int | None:
    if not config:
        return None
    for name in ("num_attention_heads", "num_heads", "n_head", "n_heads"):
        v = config.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    text = config.get("text_config")
    return _heads_in_config(text) if isinstance(text, Mapping) else None


def kv_heads(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """Grouped-query attention: k/v projection rows differ while q rows agree."""
    keys = []
    info = None
    for m in report.mismatched:
        parts = m.key.rsplit(".", 2)
        if len(parts) != 3 or parts[1] not in ("k_proj", "v_proj", "key", "value", "wk", "wv"):
            continue
        parent = parts[0]
        q_ck = _attn_rows(ck, parent, ("q_proj", "query", "wq"))
        q_tg = _attn_rows(target, parent, ("q_proj", "query", "wq"))
        if q_ck is None or q_ck != q_tg or m.checkpoint_shape[0] == m.target_shape[0]:
            continue
        keys.append(m.key)
        info = info or (m.checkpoint_shape[0], m.target_shape[0], q_tg)
    if not keys or info is None:
        return None
    a, b, q = info
    heads = _heads_in_config(target.config)
    if heads:
        head_dim = q // heads
        n = a // head_dim if head_dim else 0
        how = (
            f" = {n} key/value head{'s' if n != 1 else ''} of {head_dim} "
            f"(head_dim from {heads} heads)"
            if head_dim and a % head_dim == 0
            else ""
        )
    else:
        how = " (key/value heads = rows / head_dim; head_dim is not in the shapes)"
    return [
        cause_finding(
            "kv_heads",
            f"grouped-query attention: k/v projections have {a} rows in the "
            f"checkpoint vs {b} in the target{how} ({listed(keys)})",
            keys,
            a,
            b,
        )
    ]


_GATES = {1: "a plain RNN (1 block)", 3: "GRU (3 gates)", 4: "LSTM (4 gates)"}


def rnn_cell(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """Recurrent layers of another cell type: ``weight_hh_l0`` has gates x hidden rows (LSTM 4,
    GRU 3, RNN 1), so a GRU checkpoint against an LSTM target is 48 vs 64 rows at hidden 16."""
    keys, pair = [], None
    for m in report.mismatched:
        leaf = m.key.rsplit(".", 1)[-1]
        rnn = RNN_LEAF.match(leaf)
        if rnn is None or "_hr_" in leaf:
            continue
        hh = f"{m.key[: len(m.key) - len(leaf)]}weight_hh_l{rnn.group(1)}{rnn.group(2) or ''}"
        a, b = ck.tensors.get(hh), target.tensors.get(hh)
        if a is None or b is None or len(a.shape) != 2 or len(b.shape) != 2:
            continue
        if not a.shape[1] or not b.shape[1] or a.shape[1] != b.shape[1]:
            continue
        ga, gb = a.shape[0] // a.shape[1], b.shape[0] // b.shape[1]
        if ga != gb and ga in _GATES and gb in _GATES and a.shape[0] % a.shape[1] == 0:
            keys.append(m.key)
            pair = pair or (ga, gb, a.shape[1])
    if not keys or pair is None:
        return None
    ga, gb, h = pair
    return [
        cause_finding(
            "rnn_cell",
            f"recurrent cell: the checkpoint's layers are {_GATES[ga]}, the target's "
            f"{_GATES[gb]}: {ga * h} vs {gb * h} rows at hidden size {h} ({listed(keys)}); "
            "build the target with the checkpoint's cell type",
            keys,
            _GATES[ga].split()[0],
            _GATES[gb].split()[0],
        )
    ]


def class_count(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """A classification head with another number of classes: ``classifier.weight [3, 768]``."""
    keys = []
    pair = None
    for m in report.mismatched:
        parts = key_parts(m.key)
        if (
            len(parts) < 2
            or not any(p in CLASS_HEADS for p in parts[:-1])
            or has_part(m.key, EMBED_NAMES)
        ):
            continue
        a, b = m.checkpoint_shape, m.target_shape
        if len(a) == 1 and _explained_by_width(report, m):
            continue  # the head's hidden dense (classifier.dense.bias): a width, not classes
        if a and b and len(a) == len(b) and a[0] != b[0] and a[1:] == b[1:]:
            keys.append(m.key)
            pair = pair or (a[0], b[0])
    if not keys or pair is None:
        return None
    return [
        cause_finding(
            "classes",
            f"class count of the head: {pair[0]} classes in the checkpoint vs "
            f"{pair[1]} in the target ({listed(keys)}): set num_labels/num_classes to "
            f"{pair[0]}, or re-initialise the head on purpose",
            keys,
            pair[0],
            pair[1],
        )
    ]


#: The cause rules, in the order their findings are listed.
CAUSE_RULES: tuple[CauseRule, ...] = (
    zero3_placeholders,
    depth,
    width,
    mlp_size,
    kv_heads,
    rnn_cell,
    vocab_rows,
    position_rows,
    patch_size,
    relative_position_heads,
    class_count,
    scalar_vs_one,
)


def causes(
    report: Report, checkpoint: Manifest, target: Manifest, rules: Sequence[CauseRule] = CAUSE_RULES
) -> list[Finding]:
    """Every cause finding the rules give for a comparison (run it after key alignment).

    Example:
        >>> from ckptdiff.diagnosis.compare import compare
        >>> from ckptdiff.types import TensorSpec as T
        >>> keys = ("a.ln.weight", "b.ln.weight")
        >>> ck = Manifest("c", "x", {k: T(k, (8,), "float32") for k in keys})
        >>> tg = Manifest("t", "x", {k: T(k, (4,), "float32") for k in ck.tensors})
        >>> causes(compare(ck, tg), ck, tg)[0].data["cause"]
        'width'
    """
    out: list[Finding] = []
    for rule in rules:
        found = rule(report, checkpoint, target)
        if found:
            out.extend(found)
    # k/v biases of another size look like a width on their own; with the query rows equal
    # the hidden width did not move: the key/value heads tell the story
    kv = {k for f in out if f.data.get("cause") in ("kv_heads", "rnn_cell") for k in f.keys}
    return [f for f in out if not (f.data.get("cause") == "width" and set(f.keys) <= kv)]
