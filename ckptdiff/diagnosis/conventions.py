"""Key conventions: which family a key set belongs to, and when two sides name their keys so
differently that no key map is safe. Pure and torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import chain, repeat

from ckptdiff.diagnosis.prefixes import find_prefix_matches
from ckptdiff.types import Finding, Manifest, Report

__all__ = [
    "FAMILIES",
    "foreign_branches",
    "key_family",
    "naming_convention",
    "other_architecture",
]


#: Key families recognisable by one pattern: (name, what shows it, regex).
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("BERT-like", "encoder.layer.*, LayerNorm", r"(^|\.)encoder\.layer\.\d+\.(attention|output)\."),
    ("Llama-like", "layers.*.self_attn.q_proj", r"(^|\.)layers\.\d+\.self_attn\.q_proj\."),
    ("GPT-2-like", "h.*.attn.c_attn", r"(^|\.)h\.\d+\.attn\.c_attn\."),
    ("open_clip", "visual.transformer.resblocks", r"(^|\.)visual\.transformer\.resblocks\.\d+\."),
    ("T5-like", "block.*.layer.*.SelfAttention", r"(^|\.)block\.\d+\.layer\.\d+\.SelfAttention\."),
    ("timm ViT-like", "blocks.*.attn.qkv", r"(^|\.)blocks\.\d+\.attn\.qkv\."),
    (
        "transformers ViT-like",
        "vit.encoder.layer.* / vit.layers.*",
        r"(^|\.)vit\.(encoder\.layer|layers)\.\d+\.",
    ),
    (
        "transformers CLIP-like",
        "vision_model.encoder.layers",
        r"(^|\.)(vision|text)_model\.encoder\.layers\.\d+\.",
    ),
    (
        "Meta's original Llama layout",
        "layers.*.attention.wq",
        r"(^|\.)layers\.\d+\.attention\.wq\.",
    ),
    (
        "GPT-NeoX-like",
        "layers.*.attention.query_key_value",
        r"(^|\.)layers\.\d+\.attention\.query_key_value\.",
    ),
)
_GENERIC_PARTS = frozenset({"weight", "bias"})


def key_family(keys: Iterable[str]) -> tuple[str, str] | None:
    """``(family, what shows it)`` of the key family most keys belong to, or None.

    Example:
        >>> key_family(["encoder.layer.0.attention.self.query.weight"])
        ('BERT-like', 'encoder.layer.*, LayerNorm')
    """
    keys = list(keys)
    best: tuple[int, tuple[str, str]] | None = None
    for name, shown, rx in FAMILIES:
        compiled = re.compile(rx)
        n = sum(1 for k in keys if compiled.search(k))
        if n and (best is None or n > best[0]):
            best = (n, (name, shown))
    return best[1] if best else None


def _parts_of(keys: Iterable[str]) -> set[str]:
    parts = set(chain.from_iterable(map(str.split, keys, repeat("."))))
    return {p for p in parts if not p.isdigit() and p not in _GENERIC_PARTS}


def other_architecture(checkpoint: Manifest, target: Manifest) -> Finding | None:
    """One finding when the two sides share almost no key structure: under 10% of the
    smaller side's keys by name, and under a quarter of its key components.

    The families are named where recognisable (BERT-like, Llama-like, GPT-2-like, open_clip).
    """
    ck_keys, tg_keys = list(checkpoint.tensors), list(target.tensors)
    if len(ck_keys) < 4 or len(tg_keys) < 4:
        return None
    by_name = len(checkpoint.tensors.keys() & target.tensors.keys())
    if by_name >= 0.1 * min(len(ck_keys), len(tg_keys)):  # a part of the model is not foreign
        return None
    a, b = _parts_of(ck_keys), _parts_of(tg_keys)
    if not a or not b or len(a & b) >= 0.25 * min(len(a), len(b)):
        return None
    fa, fb = key_family(ck_keys), key_family(tg_keys)
    if fa and fb and fa[0] != fb[0]:
        what = f"its keys are {fa[0]} ({fa[1]}), the target's {fb[0]} ({fb[1]})"
    elif fa and not fb:
        what = f"its keys are {fa[0]} ({fa[1]}), unlike the target's (e.g. {tg_keys[0]})"
    elif fb and not fa:
        what = f"its keys (e.g. {ck_keys[0]}) are unlike the target's, which are {fb[0]} ({fb[1]})"
    else:
        what = f"its keys (e.g. {ck_keys[0]}) are unlike the target's (e.g. {tg_keys[0]})"
    return Finding(
        "other_architecture",
        f"The checkpoint looks like another architecture: {what}; they share almost no key "
        f"structure ({by_name} of the target's {len(tg_keys)} keys by name), so no key map "
        "or config change is proposed. Check that this is the model the checkpoint is for, "
        "or convert its keys first.",
        (),
        "warning",
        {
            "checkpoint_family": fa[0] if fa else None,
            "target_family": fb[0] if fb else None,
            "keys_by_name": by_name,
            "target_keys": len(tg_keys),
            "shared_components": sorted(a & b),
        },
    )


#: Fewer target-only keys than this are never "another convention" (a few renames).
_CONVENTION_MIN_KEYS = 8
#: Share of the unpaired keys that sound prefix rules must explain for a key map to be safe.
_CONVENTION_SHARE = 0.5


def naming_convention(checkpoint: Manifest, target: Manifest, report: Report) -> Finding | None:
    """One finding when the two sides are the same kind of model under different naming
    conventions (an HF ViT and a timm ViT): almost nothing pairs by name, and the prefix rules
    that keep layer indices and leaf roles explain under half of what is left.

    Args:
        checkpoint: the checkpoint's manifest.
        target: the target's manifest.
        report: their comparison, before any key map.
    """
    unexpected = [t.key for t in report.unexpected]
    missing = [t.key for t in report.missing]
    left = min(len(unexpected), len(missing))
    if left < _CONVENTION_MIN_KEYS:
        return None
    by_name = len(report.matched) + len(report.mismatched)
    if by_name >= 0.1 * min(len(checkpoint.tensors), len(target.tensors)):
        return None
    # a rule per layer index (vit.layers.0.mlp. -> blocks.0.mlp.) is no convention map: only
    # rules that hold for the whole model count
    paired = sum(
        len(m.pairs)
        for m in find_prefix_matches(unexpected, missing)
        if not any(p.isdigit() for p in (m.strip + m.add).split("."))
    )
    if paired >= _CONVENTION_SHARE * left:
        return None
    fa, fb = key_family(checkpoint.tensors), key_family(target.tensors)
    a = f"{fa[0]} ({fa[1]})" if fa else f"like {next(iter(checkpoint.tensors))}"
    b = f"{fb[0]} ({fb[1]})" if fb else f"like {next(iter(target.tensors))}"
    return Finding(
        "naming_convention",
        f"Different naming conventions: the checkpoint's keys are {a}, the target's {b}; "
        f"{by_name} of the target's {len(target.tensors)} keys match by name and key rules "
        f"that keep layer indices pair only {paired} of the other {left}, so no safe key map "
        "exists. Convert the checkpoint with the library that wrote it, or build the model "
        "class it was saved from.",
        (),
        "warning",
        {
            "checkpoint_family": fa[0] if fa else None,
            "target_family": fb[0] if fb else None,
            "keys_by_name": by_name,
            "paired_by_rules": paired,
        },
    )


def foreign_branches(checkpoint: Manifest, target: Manifest, report: Report) -> list[Finding]:
    """A top-level branch that is another architecture on each side (an open_clip ResNet
    ``visual`` tower against a ViT one) while the rest of the model pairs by name: one
    finding per branch; no key map or config value turns one into the other.

    Args:
        checkpoint: the checkpoint's manifest (after the key map).
        target: the target's manifest.
        report: their comparison (after the key map).
    """
    ck_only = {t.key for t in report.unexpected}
    tg_only = {t.key for t in report.missing}
    pairs = set(report.matched) | {m.key for m in report.mismatched}
    out: list[Finding] = []
    for branch in sorted({k.split(".", 1)[0] for k in target.tensors if "." in k}):
        dot = branch + "."
        ck = [k for k in checkpoint.tensors if k.startswith(dot)]
        tg = [k for k in target.tensors if k.startswith(dot)]
        if len(ck) < 4 or len(tg) < 4 or len(tg) == len(target.tensors):
            continue
        by_name = sum(1 for k in tg if k in pairs)
        if by_name > 0.1 * min(len(ck), len(tg)):
            continue
        if sum(1 for k in ck if k in ck_only) < 0.8 * len(ck):
            continue
        if sum(1 for k in tg if k in tg_only) < 0.8 * len(tg):
            continue
        a = {p for k in ck for p in k.split(".")[1:] if not p.isdigit()}
        b = {p for k in tg for p in k.split(".")[1:] if not p.isdigit()}
        shared = a & b - {"weight", "bias"}
        if len(shared) >= 0.5 * min(len(a), len(b)):
            continue
        ca = _shown_parts(ck, branch)
        cb = _shown_parts(tg, branch)
        out.append(
            Finding(
                "foreign_branch",
                f"'{branch}' is another architecture in the checkpoint ({ca}) than in the "
                f"target ({cb}): {by_name} of its {len(tg)} target keys match by name, so no "
                f"key map or config value fits it; build the {branch} tower the checkpoint "
                "has (its model config), or leave the branch out on purpose.",
                (branch,),
                "warning",
                {"branch": branch, "checkpoint_keys": len(ck), "target_keys": len(tg)},
            )
        )
    return out


def _shown_parts(keys: Iterable[str], branch: str, n: int = 3) -> str:
    """The branch's most common second-level modules: ``layer1.*, layer2.*, attnpool.*``."""
    seen: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        if len(parts) > 2:
            seen[parts[1]] = seen.get(parts[1], 0) + 1
    top = sorted(seen, key=lambda p: -seen[p])[:n]
    return ", ".join(f"{branch}.{p}.*" for p in top) or branch
