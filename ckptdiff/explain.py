"""Explain a comparison: align keys beyond prefixes, and name the cause of each mismatch.

Pure and torch-free. :data:`CAUSE_RULES` is a tuple of small rules; each takes the report
(after the key alignment found here), the checkpoint's and the target's manifests, and returns
``kind="cause"`` findings or None. A finding's ``data`` is ``{"cause": "width" | "depth" | ...,
"checkpoint": n, "target": m, "keys": [...]}``.

:func:`explain` runs it all for :func:`ckptdiff.diff.diff_manifests`: key alignment
(renames, fused vs split q/k/v, transposed weights, on top of the prefix rules), the causes,
verified config fixes when the target can be rebuilt (:mod:`ckptdiff.suggest`, which imports
torch), and the consistency lint (:mod:`ckptdiff.lint`).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ckptdiff.align import (
    KNOWN_RENAMES,
    KeyTransform,
    find_fused_qkv,
    find_prefix_matches,
    find_renames,
    find_transposed,
    scoped_prefix_rules,
)
from ckptdiff.diagnosis.conventions import (
    foreign_branches,
    naming_convention,
    other_architecture,
)
from ckptdiff.keymap import KeyMap, rules_to_options
from ckptdiff.types import Finding, Manifest, Mismatch, Report, Suggestion

__all__ = [
    "Alignment",
    "CAUSE_RULES",
    "align",
    "causes",
    "explain",
    "fixed_config_of",
    "key_map_to_emit",
    "write_fixed_config",
    "write_key_map",
]

Shape = tuple[int, ...]
CauseRule = Callable[[Report, Manifest, Manifest], "list[Finding] | None"]


# --- key alignment -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alignment:
    """The key map that pairs a checkpoint's keys with a target's, and what it achieves.

    Attributes:
        prefix_rules: the prefix rules (wrappers, branches) found first.
        transforms: renames, transposes, splits and concatenations found after them.
        key_map: all rules, in the order they apply.
        before: the comparison with no rules.
        after: the comparison with every rule applied.
        checkpoint: the checkpoint manifest with every rule applied.
    """

    prefix_rules: tuple[dict[str, Any], ...]
    transforms: tuple[KeyTransform, ...]
    key_map: KeyMap
    before: Report
    after: Report
    checkpoint: Manifest
    foreign: Finding | None = None

    @property
    def verified(self) -> bool:
        """True when every target key a transform explains loads after the map, and no
        transform rests on equal shapes alone (a rename between unrelated names)."""
        ok = set(self.after.matched) | set(self.after.tied)
        if any(t.data.get("basis") == "shapes" for t in self.transforms):
            return False
        return all(k in ok for t in self.transforms for k in t.target_keys)


def _only(report: Report) -> tuple[dict[str, Shape], dict[str, Shape]]:
    return ({t.key: t.shape for t in report.unexpected}, {t.key: t.shape for t in report.missing})


def align(checkpoint: Manifest, target: Manifest, *, depth: int = 2) -> Alignment:
    """Find the key map that turns unexpected + missing (and transposed) keys into matches.

    Prefixes first (:func:`~ckptdiff.align.find_prefix_matches`), then transposed weights,
    renames, fused vs split q/k/v and renames again, each on what is still unpaired.

    Args:
        checkpoint: the checkpoint's manifest (after the user's key map).
        target: the target's manifest.
        depth: coverage depth of the reports.

    Returns:
        The :class:`Alignment`; ``key_map`` is empty when nothing pairs up.

    Example:
        >>> from ckptdiff.types import TensorSpec as T
        >>> ck = Manifest("c", "x", {"n.gamma": T("n.gamma", (4,), "float32")})
        >>> tg = Manifest("t", "x", {"n.weight": T("n.weight", (4,), "float32")})
        >>> align(ck, tg).key_map.to_list()[0]["op"]
        'rename'
    """
    from ckptdiff.diff import compare

    before = compare(checkpoint, target, depth=depth)
    unpaired = other_architecture(checkpoint, target) or naming_convention(
        checkpoint, target, before
    )
    if unpaired is not None:  # no key map is safe: none is proposed
        return Alignment((), (), KeyMap(), before, before, checkpoint, unpaired)
    prefix_rules: list[dict[str, Any]] = []
    for m in find_prefix_matches(
        (t.key for t in before.unexpected), (t.key for t in before.missing)
    ):
        prefix_rules += scoped_prefix_rules(m, checkpoint.tensors)
    km = KeyMap.from_rules(prefix_rules)
    ck = km.apply_to_manifest(checkpoint)
    report = compare(ck, target, depth=depth) if prefix_rules else before
    transforms: list[KeyTransform] = []
    foreign = other_architecture(ck, target)
    if foreign is not None:  # per-key renames between two architectures are coincidences
        return Alignment(tuple(prefix_rules), (), km, before, report, ck, foreign)

    def take(found: Iterable[KeyTransform]) -> None:
        nonlocal ck, report, km
        for found_t in found:
            t: KeyTransform | None = found_t
            if found_t.kind == "rename" and not found_t.data.get("known", True):
                t = _rename_basis(found_t, report)
            if t is None:
                continue
            step = KeyMap.from_rules(t.rules)
            trial = step.apply_to_manifest(ck)
            trial_report = compare(trial, target, depth=depth)
            if len(trial_report.matched) <= len(report.matched):
                continue  # a rule must make more keys load, or it is not proposed
            transforms.append(t)
            km, ck, report = km + step, trial, trial_report

    take(
        filter(
            None,
            [
                find_transposed(
                    ((m.key, m.checkpoint_shape, m.target_shape) for m in report.mismatched),
                    {k: ck.tensors[k].shape for k in report.matched if k in ck.tensors},
                    target_class=_target_class(target),
                )
            ],
        )
    )
    take(find_renames(*_only(report)))
    take(find_fused_qkv(*_only(report)))
    take(find_renames(*_only(report)))
    take(_known_renames_then_prefix(report))
    return Alignment(tuple(prefix_rules), tuple(transforms), km, before, report, ck)


def _target_class(target: Manifest) -> str | None:
    cls = target.metadata.get("class")
    return cls if isinstance(cls, str) else None


#: A rename whose keys share this share of their components is a rename of the same model.
SIMILAR_NAMES = 0.5
#: Share of the target's parameters that must already load for a rename on shapes alone.
MOSTLY_MATCHES = 0.5


def _rename_basis(t: KeyTransform, report: Report) -> KeyTransform | None:
    """A rename that is not a known one is kept when the renamed keys share most of their
    components (``basis="names"``), or when most of the model already loads as it is
    (``basis="shapes"``: proposed, never verified); otherwise it is a coincidence of shapes."""
    if float(t.data.get("similarity", 0.0)) >= SIMILAR_NAMES:
        return replace(t, data={**t.data, "basis": "names"})
    share = report.coverage[0].share if report.coverage else 0.0
    if share < MOSTLY_MATCHES:
        return None
    return replace(
        t,
        message=t.message.replace(
            "(same shapes): rename it",
            "(same shapes, names with little in common): check it before renaming",
        ),
        data={**t.data, "basis": "shapes"},
    )


def _known_renames_then_prefix(report: Report) -> list[KeyTransform]:
    """``module.ln.gamma`` vs ``ln.weight``: a known rename hides a prefix; try both at once."""
    unexpected, missing = _only(report)
    rules = [
        {"op": "rename", "pattern": rf"(?P<pre>^|\.){old[0]}$", "replacement": rf"\g<pre>{new[0]}"}
        for old, new in KNOWN_RENAMES.items()
    ]
    km = KeyMap.from_rules(rules)
    renamed = {km.apply(u): u for u in unexpected}
    if all(k == v for k, v in renamed.items()):
        return []
    out = []
    for m in find_prefix_matches(renamed, missing):
        pairs = tuple(((renamed[u],), (t,)) for u, t in m.pairs)
        out.append(
            KeyTransform(
                "rename",
                tuple(rules) + tuple(m.rules()),
                pairs,
                f"{len(pairs)} checkpoint keys are target keys after renaming "
                f"gamma/beta to weight/bias and '{m.options()}'",
                {"option": m.options()},
            )
        )
    return out


def _module_shares(report: Report) -> dict[str, float]:
    return {c.module: c.share for c in report.coverage if c.module.count(".") == 0}


def _alignment_findings(al: Alignment) -> tuple[list[Finding], list[Suggestion]]:
    if not al.transforms:
        return [], []
    findings = []
    for t in al.transforms:
        kind = {"rename": "key_rename", "transpose": "transposed"}.get(t.kind, "fused_qkv")
        keys = tuple(k for ks, _ in t.pairs for k in ks)
        findings.append(
            Finding(
                kind,
                t.message,
                keys[:20],
                "warning",
                {**t.data, "rules": list(t.rules), "explains": len(t.pairs)},
            )
        )
    before = al.before.coverage[0].share if al.before.coverage else 0.0
    after = al.after.coverage[0].share if al.after.coverage else 0.0
    b_mod, a_mod = _module_shares(al.before), _module_shares(al.after)
    by_module = [
        {"module": m, "before": round(b_mod.get(m, 0.0), 6), "after": round(a, 6)}
        for m, a in a_mod.items()
        if m and round(a, 6) != round(b_mod.get(m, 0.0), 6)
    ]
    kinds = ", ".join(sorted({t.kind for t in al.transforms}))
    evidence = _key_map_evidence(al.transforms)
    rules = al.key_map.to_list()
    suggestion = Suggestion(
        "key_map",
        rules_to_options(rules) or "--key-map",
        None,
        rules,
        "unverified",
        f"A key map ({kinds}) pairs {sum(len(t.pairs) for t in al.transforms)} more keys: "
        f"coverage {100 * before:.1f}% -> {100 * after:.1f}%; write it with --emit-key-map",
        evidence,
        {
            "combined": True,
            "names_unrelated": any(t.data.get("basis") == "shapes" for t in al.transforms),
            "coverage_before": round(before, 6),
            "coverage_after": round(after, 6),
            "coverage_by_module": by_module,
            "python": al.key_map.python_snippet(),
        },
    )
    return findings, [suggestion]


#: Samples of keys a suggestion shows; a last ``"... N more"`` entry counts the rest.
EVIDENCE_SAMPLES = 5


def sampled(entries: Sequence[str], n: int = EVIDENCE_SAMPLES) -> tuple[str, ...]:
    """Up to ``n`` entries, then ``"... N more"`` with the exact number of the others.

    Example:
        >>> sampled([f"k{i}" for i in range(8)], 2)
        ('k0', 'k1', '... 6 more')
    """
    rest = len(entries) - n
    return tuple(entries[:n]) + ((f"... {rest} more",) if rest > 0 else ())


def _key_map_evidence(transforms: Sequence[KeyTransform]) -> tuple[str, ...]:
    """One entry per key a transform moves (transposed square keys too), the transforms
    taking turns so each shows up in the samples."""
    per: list[list[str]] = []
    for t in transforms:
        if t.kind == "transpose":
            keys = [k for ks, _ in t.pairs for k in ks] + list(t.data.get("square", ()))
            per.append([f"{k}: .t()" for k in keys])
        else:
            per.append([f"{' + '.join(ks)} -> {' + '.join(ts)}" for ks, ts in t.pairs])
    entries = [e for row in _zip_longest(per) for e in row]
    return sampled(entries)


def _zip_longest(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    width = max((len(r) for r in rows), default=0)
    return [[r[i] for r in rows if i < len(r)] for i in range(width)]


def key_map_to_emit(report: Report) -> list[dict[str, Any]] | None:
    """The verified key map of a report, as rules for ``--key-map``; None when there is none.

    The combined map (renames, transforms) when there is one, else the verified prefix rules.
    """
    for s in report.suggestions:
        if s.kind == "key_map" and s.data.get("combined"):
            return list(s.suggested) if s.verified else None
    rules = [
        r for s in report.suggestions if s.kind == "key_map" and s.verified for r in s.suggested
    ]
    return rules or None


# --- causes ---------------------------------------------------------------------------------------

_INT = re.compile(r"^[0-9]{1,18}$")
EMBED_NAMES = (
    "embed_tokens",
    "word_embeddings",
    "token_embedding",
    "wte",
    "tok_embeddings",
    "embed_in",
    "shared",
    "word_embedding",
    "tok_embedding",
)
HEAD_NAMES = ("lm_head", "embed_out", "output", "decoder")
POSITION_HINTS = (
    "positional_embedding",
    "position_embedding",
    "position_embeddings",
    "pos_embed",
    "wpe",
    "pos_embedding",
    "positional_embeddings",
)
CLASS_HEADS = ("classifier", "head", "fc", "score", "heads", "classification_head", "cls_head")
MLP_HINTS = (
    "mlp",
    "ffn",
    "feed_forward",
    "intermediate",
    "fc1",
    "fc2",
    "c_fc",
    "gate_proj",
    "up_proj",
    "down_proj",
    "w1",
    "w2",
    "w3",
    "dense_h_to_4h",
    "dense_4h_to_h",
)


def _cause(
    cause: str,
    message: str,
    keys: Sequence[str],
    checkpoint: Any,
    target: Any,
    severity: str = "warning",
    **extra: Any,
) -> Finding:
    keys = list(keys)
    return Finding(
        "cause",
        message,
        tuple(keys),
        severity,  # type: ignore[arg-type]
        {"cause": cause, "checkpoint": checkpoint, "target": target, "keys": keys, **extra},
    )


def _parts(key: str) -> list[str]:
    return key.split(".")


def _has(key: str, names: Iterable[str]) -> bool:
    parts = set(_parts(key))
    return any(n in parts for n in names)


def _examples(keys: Sequence[str], n: int = 2) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


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
                _cause(
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
        _cause(
            "scalar",
            f"{_examples(keys)}: a scalar [] on one side and [1] on the other; "
            "reshape-compatible (value.reshape(target_shape)), as open_clip does",
            keys,
            list(m0.checkpoint_shape),
            list(m0.target_shape),
            "info",
        )
    ]


def _containers(keys: Iterable[str]) -> dict[str, set[int]]:
    """``container template -> indices``: ``visual.transformer.resblocks -> {0..23}``."""
    out: dict[str, set[int]] = defaultdict(set)
    for key in keys:
        parts = _parts(key)
        for i, p in enumerate(parts):
            if _INT.match(p) and i:
                tmpl = ".".join("#" if _INT.match(q) else q for q in parts[:i])
                out[tmpl].add(int(p))
    return out


def depth(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """Layer indices present on one side only: ``resblocks.12-23`` in the checkpoint only."""
    a, b = _containers(ck.tensors), _containers(target.tensors)
    only = [t.key for t in report.unexpected] + [t.key for t in report.missing]
    out = []
    for tmpl in sorted(set(a) & set(b)):
        if len(a[tmpl]) == len(b[tmpl]):
            continue
        rx = re.compile("^" + re.escape(tmpl).replace("\\#", r"\d+") + r"\.(\d+)(\.|$)")
        keys = [k for k in only if rx.match(k)]
        if not keys:
            continue
        n, m = len(a[tmpl]), len(b[tmpl])
        extra = f"{abs(n - m)} layer{'s' if abs(n - m) != 1 else ''}"
        out.append(
            _cause(
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
        _has(key, EMBED_NAMES)
        or _has(key, HEAD_NAMES)
        or _has(key, POSITION_HINTS)
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
            _cause(
                "width",
                f"hidden width: {a} in the checkpoint vs {b} in the target, "
                f"across {len(keys)} keys ({_examples(keys)})",
                keys,
                a,
                b,
            )
        )
    return out or None


def _explained_by_width(report: Report, m: Mismatch) -> bool:
    widths = _width_pairs(report)
    return bool(_pairs(m)) and all(any(x * b == y * a for a, b in widths) for _, x, y in _pairs(m))


def mlp_size(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """MLP (intermediate) size: MLP keys whose dims differ other than by the width ratio."""
    by_pair: dict[tuple[int, int], list[str]] = defaultdict(list)
    widths = _width_pairs(report)
    for m in report.mismatched:
        if not _has(m.key, MLP_HINTS):
            continue
        for _, x, y in _pairs(m):
            if not any(x * b == y * a for a, b in widths) and (x, y) not in widths:
                by_pair[(x, y)].append(m.key)
    out = [
        _cause(
            "mlp",
            f"MLP size: {x} in the checkpoint vs {y} in the target ({_examples(keys)})",
            keys,
            x,
            y,
        )
        for (x, y), keys in sorted(by_pair.items(), key=lambda kv: -len(kv[1]))
    ]
    return out or None


def vocab_rows(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """Input embedding and output head rows: the vocabulary."""
    from ckptdiff.lint import VOCAB_HEAD_ROWS, vocab_tensors

    vocab_keys: set[str] = set()
    for side in (ck, target):
        embeds, heads = vocab_tensors(side)
        vocab_keys.update(embeds)
        vocab_keys.update(k for k in heads if set(_parts(k)) & set(VOCAB_HEAD_ROWS))
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
        _cause(
            "vocab",
            f"vocabulary rows: {detail}: {how}",
            keys,
            a,
            b,
            rows={k: list(v) for k, v in rows.items()},
        )
    ]


def _is_square(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r * r == n and r > 1 else None


def _grid(rows: int) -> tuple[int, int] | None:
    """``(grid, prefix tokens)``: 577 -> (24, 1), 729 -> (27, 0)."""
    for extra in (1, 0):
        g = _is_square(rows - extra)
        if g:
            return g, extra
    return None


def _patch(m: Manifest, branch: str) -> int | None:
    for k, t in m.tensors.items():
        if (
            len(t.shape) == 4
            and k.split(".")[0] == branch
            and t.shape[2] == t.shape[3]
            and t.shape[1] in (1, 3, 4)
        ):
            return t.shape[2]
    return None


def _position_dim(m: Mismatch) -> tuple[int, int] | None:
    a, b = m.checkpoint_shape, m.target_shape
    if len(a) != len(b) or not a:
        return None
    for i in range(len(a)):
        if a[i] != b[i] and (len(a) == 1 or i == len(a) - 2):
            return a[i], b[i]
    return None


def position_rows(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """Position embeddings: a text context length, or a ViT grid (197 = 14*14+1)."""
    out = []
    for m in report.mismatched:
        if not any(h in m.key for h in POSITION_HINTS):
            continue
        d = _position_dim(m)
        if d is None:
            continue
        a, b = d
        branch = m.key.split(".")[0]
        visionish = (
            any(h in m.key for h in ("visual", "vision", "image", "patch", "pos_embed"))
            or _patch(target, branch) is not None
        )
        ga, gb = _grid(a), _grid(b)
        if visionish and ga and gb:
            pa, pb = _patch(ck, branch), _patch(target, branch)
            sa = f"{a} = {ga[0]}*{ga[0]}" + ("+1" if ga[1] else "")
            sb = f"{b} = {gb[0]}*{gb[0]}" + ("+1" if gb[1] else "")
            img_a = ga[0] * pa if pa else None
            img_b = gb[0] * pb if pb else None
            where_a = f" (patch {pa}: image {img_a})" if img_a else ""
            where_b = f" (patch {pb}: image {img_b})" if img_b else ""
            if pb and pa == pb:
                fix = f"set the image size to {ga[0] * pb}, or interpolate the position embedding"
            elif img_a:
                fix = (
                    f"use patch {pa} and image size {img_a}, or interpolate the position embedding"
                )
            else:
                fix = "interpolate the position embedding, or match the grid"
            out.append(
                _cause(
                    "position_grid",
                    f"position grid of {m.key}: checkpoint {sa}"
                    f"{where_a}, target {sb}{where_b}: {fix}",
                    [m.key],
                    a,
                    b,
                    grid={"checkpoint": ga[0], "target": gb[0]},
                    prefix_tokens=ga[1],
                    patch={"checkpoint": pa, "target": pb},
                    image_size={"checkpoint": img_a, "target": img_b},
                )
            )
        else:
            out.append(
                _cause(
                    "positions",
                    f"position rows of {m.key}: {a} in the checkpoint vs "
                    f"{b} in the target (the context length): set it to {a}, or "
                    "truncate/extend the embedding",
                    [m.key],
                    a,
                    b,
                )
            )
    return out or None


def patch_size(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """A conv kernel (patch embedding) of another size: ``[1024, 3, 14, 14]`` vs ``[..16, 16]``."""
    by: dict[tuple[int, int], list[str]] = defaultdict(list)
    for m in report.mismatched:
        a, b = m.checkpoint_shape, m.target_shape
        if len(a) == 4 and len(b) == 4 and a[2:] != b[2:]:
            by[(a[2], b[2])].append(m.key)
    return [
        _cause(
            "patch_size",
            f"patch size (conv kernel) of {_examples(keys)}: {x} in the "
            f"checkpoint vs {y} in the target",
            keys,
            x,
            y,
        )
        for (x, y), keys in by.items()
    ] or None


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
        _cause(
            "heads",
            f"attention heads: the relative-position tables have {pair[0]} "
            f"columns in the checkpoint vs {pair[1]} in the target "
            f"({_examples(keys)})",
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
        how = (
            f" = {a // head_dim} key/value heads of {head_dim} (head_dim from {heads} heads)"
            if head_dim and a % head_dim == 0
            else ""
        )
    else:
        how = " (key/value heads = rows / head_dim; head_dim is not in the shapes)"
    return [
        _cause(
            "kv_heads",
            f"grouped-query attention: k/v projections have {a} rows in the "
            f"checkpoint vs {b} in the target{how} ({_examples(keys)})",
            keys,
            a,
            b,
        )
    ]


def class_count(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """A classification head with another number of classes: ``classifier.weight [3, 768]``."""
    keys = []
    pair = None
    for m in report.mismatched:
        parts = _parts(m.key)
        if (
            len(parts) < 2
            or not any(p in CLASS_HEADS for p in parts[:-1])
            or _has(m.key, EMBED_NAMES)
        ):
            continue
        a, b = m.checkpoint_shape, m.target_shape
        if a and b and len(a) == len(b) and a[0] != b[0] and a[1:] == b[1:]:
            keys.append(m.key)
            pair = pair or (a[0], b[0])
    if not keys or pair is None:
        return None
    return [
        _cause(
            "classes",
            f"class count of the head: {pair[0]} classes in the checkpoint vs "
            f"{pair[1]} in the target ({_examples(keys)}): set num_labels/num_classes to "
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
        >>> from ckptdiff.diff import compare
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
    return out


# --- everything, for diff_manifests ------------------------------------------------------------


@dataclass
class Explanation:
    """What :func:`explain` adds to a report."""

    findings: list[Finding] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    aligned: Report | None = None
    fixed_config: dict[str, Any] | None = None
    fixed_target: Manifest | None = None


def explain(
    report: Report, checkpoint: Manifest, target: Manifest, *, depth: int = 2, suggest: bool = True
) -> Explanation:
    """Align keys, name causes, verify config fixes and lint: the findings and suggestions a
    report gets on top of the prefix rules :func:`ckptdiff.diff.diff_manifests` finds.

    Config fixes are inferred only when the target was built by
    :func:`ckptdiff.targets.build_target` (it has a config and can be rebuilt); that step
    imports torch.
    """
    out = Explanation()
    if not report.ok:
        al = align(checkpoint, target, depth=depth)
        if al.foreign is not None:
            out.findings.append(al.foreign)
        f, s = _alignment_findings(al)
        out.findings += f
        out.suggestions += s
        aligned = al.after
        if al.key_map:
            out.aligned = replace(aligned, key_map=tuple(al.key_map.to_list()))
        if al.foreign is None:
            branches = foreign_branches(al.checkpoint, target, aligned)
            out.findings += branches
            dots = tuple(b.keys[0] + "." for b in branches)
            out.findings += [
                c
                for c in causes(aligned, al.checkpoint, target)
                if not (dots and c.keys and all(k.startswith(dots) for k in c.keys))
            ]
            heads = new_heads(aligned, al.checkpoint, target)
            out.findings += heads
            explained = {k for h in heads for k in h.keys}
            if dots:
                everywhere = (*al.checkpoint.tensors, *target.tensors)
                explained |= {k for k in everywhere if k.startswith(dots)}
            if suggest and _rebuildable(target) and not aligned.ok:
                from ckptdiff.diagnosis.fixes import config_fixes

                fixes = config_fixes(
                    aligned, al.checkpoint, target, ignore=explained, foreign=dots
                )
                out.findings += fixes.findings
                out.suggestions += fixes.suggestions
                out.fixed_config = fixes.config
                out.fixed_target = fixes.target
    from ckptdiff.lint import lint

    out.findings += lint(checkpoint, target=target)
    return out


def _all_explained(report: Report, explained: set[str]) -> bool:
    """True when every key that keeps the report from loading is already explained."""
    if report.mismatched or report.buffers_missing:
        return False
    return all(t.key in explained for t in report.missing + report.unexpected)


#: Module names of task heads a base checkpoint does not have (a fine-tune starts them fresh).
NEW_HEAD_NAMES = (*CLASS_HEADS, "qa_outputs", "pre_classifier")


def new_heads(report: Report, ck: Manifest, target: Manifest) -> list[Finding]:
    """A task head (``classifier.*``, ``score.*``) the target has and the checkpoint has not:
    the usual start of a fine-tune, not a checkpoint of another model.

    A head is a module named like one (:data:`NEW_HEAD_NAMES`) at the top or one level down,
    all of whose tensors are missing, with no checkpoint key under it.
    """
    missing = {t.key for t in report.missing}
    modules: dict[str, list[str]] = {}
    for key in sorted(missing):
        parts = _parts(key)
        for i, p in enumerate(parts[:2]):
            if _INT.match(p):
                break
            if p in NEW_HEAD_NAMES and i < len(parts) - 1:
                modules.setdefault(".".join(parts[: i + 1]), []).append(key)
                break
    heads: list[str] = []
    keys: list[str] = []
    for mod, under in modules.items():
        dot = mod + "."
        if any(k.startswith(dot) for k in ck.tensors):
            continue
        if any(k.startswith(dot) and k not in missing for k in target.tensors):
            continue
        heads.append(mod)
        keys += under
    if not heads:
        return []
    shown = ", ".join(f"{h}.*" for h in heads)
    return [
        Finding(
            "new_head",
            f"A new head the checkpoint does not have ({shown}): it starts from its initial "
            "values, as in any fine-tune from this checkpoint.",
            tuple(keys),
            "info",
            {"modules": heads},
        )
    ]


def _rebuildable(target: Manifest) -> bool:
    info = target.metadata.get("target")
    return target.config is not None and isinstance(info, Mapping) and info.get("kind") != "module"


def with_explanation(report: Report, ex: Explanation) -> Report:
    """The report with the explanation's findings and suggestions appended."""
    return replace(
        report,
        findings=report.findings + tuple(ex.findings),
        suggestions=report.suggestions + tuple(ex.suggestions),
    )


def fixed_config_of(report: Report) -> dict[str, Any] | None:
    """The target's config with every suggested config value, as the verifier rebuilt it
    (for ``--emit-config``), or None when there is no config suggestion."""
    return dict(report.fixed_config) if report.fixed_config is not None else None


def write_key_map(report: Report, path: str) -> bool:
    """Write the report's verified key map as ``{"schema": "ckptdiff.keymap/1", "rules"}``.

    Returns:
        False (and writes nothing) when the report has no verified key map.
    """
    import json

    from ckptdiff.keymap import KEYMAP_SCHEMA

    rules = key_map_to_emit(report)
    if not rules:
        return False
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"schema": KEYMAP_SCHEMA, "rules": rules}, f, indent=2)
        f.write("\n")
    return True


def write_fixed_config(report: Report, path: str) -> bool:
    """Write the fixed config (see :func:`fixed_config_of`) when every config suggestion in
    it is verified or undetermined; False (nothing written) otherwise."""
    import json

    config = fixed_config_of(report)
    statuses = {s.status for s in report.suggestions if s.kind == "config"}
    if config is None or not statuses or not statuses <= {"verified", "undetermined"}:
        return False
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, default=str)
        f.write("\n")
    return True
