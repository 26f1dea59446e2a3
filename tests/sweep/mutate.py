"""Mutations of a small config: the fields that shape weights, and some that never do.

A :class:`Mutation` is a set of config changes (dotted paths into ``config.json``) of one kind:

- ``width``: a hidden width with the head count kept (a new head_dim); ``width_heads``: both
  doubled (the same head_dim), so the attention stays consistent;
- ``layers``, ``vocab``, ``intermediate``, ``positions``, ``kv_heads``, ``image``, ``patch``,
  ``classes``; ``heads`` (the head count alone: shapes tell it only where head_dim is fixed or
  the key/value heads are grouped);
- ``invisible``: rope theta, dropout; no shape moves, so the checkpoint fits as it is and
  nothing may be verified.

Whether shapes moved is the oracle's call, never the kind's: a case whose shapes did not move
must come out compatible with nothing verified.

:func:`candidates` lists them for one config, deterministically; :func:`mutations` is the
hypothesis strategy drawing one to three of them at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.sweep.archs import HEADS, INTERMEDIATE, KV_HEADS, LAYERS, WIDTHS
from tests.sweep.oracle import deep_merge, set_path

__all__ = ["Mutation", "apply", "candidates", "combine", "mutations"]

HEAD_DIM_FIELDS = ("head_dim", "d_kv", "attention_head_dim", "kv_channels")
# open_clip's names beside transformers' (``vision_cfg.layers``, ``text_cfg.heads``)
LAYER_FIELDS = (*LAYERS, "layers")
HEAD_FIELDS = (*HEADS, "heads")
POSITIONS = ("max_position_embeddings", "n_positions", "context_length", "max_source_positions")
DROPOUTS = ("attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout")
# derived lists a class rebuilds from the depth (dropped from a config whose depth changes)
DEPTH_LISTS = ("layer_types", "mlp_layer_types", "block_types", "layers_block_type")


@dataclass(frozen=True)
class Mutation:
    """Config changes of one kind: ``{dotted path: new value}``; ``visible`` is False for
    changes that move no shape by construction (heads with a free head_dim, rope, dropout)."""

    kind: str
    changes: tuple[tuple[str, Any], ...]
    visible: bool = True
    drops: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return f"{self.kind}(" + ", ".join(f"{k}={v!r}" for k, v in self.changes) + ")"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.changes)


def combine(parts: list[Mutation]) -> Mutation:
    """One mutation of several kinds (their paths must not overlap)."""
    changes: dict[str, Any] = {}
    drops: list[str] = []
    for m in parts:
        changes.update(m.changes)
        drops += m.drops
    return Mutation(
        "+".join(m.kind for m in parts),
        tuple(changes.items()),
        any(m.visible for m in parts),
        tuple(dict.fromkeys(drops)),
    )


def apply(config: Mapping[str, Any], mutation: Mutation) -> dict[str, Any]:
    """``config`` with the mutation's changes (and its derived lists dropped)."""
    out = deep_merge(config, {})
    for path in mutation.drops:
        parts = path.split(".")
        level: Any = out
        for part in parts[:-1]:
            level = level.get(part) if isinstance(level, dict) else None
        if isinstance(level, dict):
            level.pop(parts[-1], None)
    for path, value in mutation.changes:
        set_path(out, path, value)
    return out


def _levels(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(dotted prefix, dict)`` of the config and of each sub-config dict in it."""
    yield prefix, data
    for key, value in data.items():
        if isinstance(value, Mapping) and (
            "model_type" in value or key.endswith(("config", "_cfg"))
        ):
            yield from _levels(value, f"{prefix}{key}.")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def candidates(config: Mapping[str, Any], class_name: str = "") -> list[Mutation]:
    """Every single mutation this sweep makes of ``config``, in a fixed order (the number of
    classes only for a class with a classification head)."""
    out: list[Mutation] = []
    for prefix, level in _levels(config):
        out += _level_candidates(prefix, level)
    labels = config.get("id2label")
    if "Classification" in class_name and isinstance(labels, Mapping):
        out.append(
            Mutation("classes", (("num_labels", len(labels) + 3),), drops=("id2label", "label2id"))
        )
    return out


def _level_candidates(prefix: str, level: Mapping[str, Any]) -> list[Mutation]:
    out: list[Mutation] = []
    heads_key = next((k for k in HEAD_FIELDS if _int(level.get(k)) and level[k] > 0), None)
    heads = level[heads_key] if heads_key else None
    kv_key = next((k for k in KV_HEADS if _int(level.get(k)) and level[k] > 0), None)
    head_dim_set = any(_int(level.get(k)) and level[k] > 0 for k in HEAD_DIM_FIELDS)
    depth_drops = tuple(prefix + k for k in DEPTH_LISTS if isinstance(level.get(k), list))
    for key in WIDTHS:
        width = level.get(key)
        if not _int(width) or width <= 0:
            continue
        if heads and width % heads == 0 and not head_dim_set:
            step = 2 * heads  # head_dim + 2 keeps it even (rotary)
            out.append(Mutation("width", ((prefix + key, width + step),)))
            out.append(
                Mutation(
                    "width_heads", ((prefix + key, width * 2), (prefix + heads_key, heads * 2))
                )
            )
        else:
            out.append(Mutation("width", ((prefix + key, width + 16),)))
        break  # one width per level: the model's main one
    for key in LAYER_FIELDS:
        depth = level.get(key)
        if _int(depth) and depth > 0:
            out.append(Mutation("layers", ((prefix + key, depth + 1),), drops=depth_drops))
            if depth > 1:
                out.append(Mutation("layers", ((prefix + key, depth - 1),), drops=depth_drops))
    vocab = level.get("vocab_size")
    if _int(vocab) and vocab > 16:
        out.append(Mutation("vocab", ((prefix + "vocab_size", vocab + 8),)))
        out.append(Mutation("vocab", ((prefix + "vocab_size", vocab + 5),)))
    for key in INTERMEDIATE:
        inter = level.get(key)
        if _int(inter) and inter > 0:
            out.append(Mutation("intermediate", ((prefix + key, inter + 32),)))
    for key in POSITIONS:
        positions = level.get(key)
        if _int(positions) and positions > 0:
            out.append(Mutation("positions", ((prefix + key, positions + 8),)))
            break
    if kv_key and heads:
        kv = level[kv_key]
        for other in (1, 2, heads):
            if other != kv and heads % other == 0:
                out.append(Mutation("kv_heads", ((prefix + kv_key, other),)))
                break
    image, patch = level.get("image_size"), level.get("patch_size")
    if _int(image) and _int(patch) and patch > 0:
        out.append(Mutation("image", ((prefix + "image_size", image + 2 * patch),)))
        if image % (patch * 2) == 0:
            out.append(Mutation("patch", ((prefix + "patch_size", patch * 2),)))
    if heads and heads_key and not head_dim_set:
        width = next((level[k] for k in WIDTHS if _int(level.get(k)) and level[k] > 0), None)
        other = heads // 2 if heads % 2 == 0 else None
        if width and other and width % other == 0 and (not kv_key or other % level[kv_key] == 0):
            out.append(Mutation("heads", ((prefix + heads_key, other),), visible=False))
    for key in DROPOUTS:
        if isinstance(level.get(key), float):
            out.append(Mutation("invisible", ((prefix + key, 0.25),), visible=False))
            break
    if isinstance(level.get("rope_theta"), (int, float)) and not isinstance(
        level.get("rope_theta"), bool
    ):
        out.append(Mutation("invisible", ((prefix + "rope_theta", 12345.0),), visible=False))
    return out


def mutations(config: Mapping[str, Any], class_name: str = "", max_parts: int = 3) -> Any:
    """The hypothesis strategy: one to ``max_parts`` candidates of ``config`` on distinct paths."""
    from hypothesis import strategies as st

    pool = candidates(config, class_name)
    if not pool:
        return st.nothing()

    def distinct(parts: list[Mutation]) -> bool:
        paths = [p for m in parts for p, _ in m.changes]
        return len(paths) == len(set(paths))

    return (
        st.lists(st.sampled_from(pool), min_size=1, max_size=max_parts, unique=True)
        .filter(distinct)
        .map(combine)
    )
