"""The key-name vocabulary the cause rules and the solver share (embeddings, heads,
positions, layer containers) and the sampling of evidence lines. Pure.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from ckptdiff.types import Finding

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
