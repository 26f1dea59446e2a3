"""Data mode's model: the same architecture on CPU, with widths, depth and vocabulary shrunk.

Structure-carrying values (context lengths, image and patch sizes, head counts, ratios) stay
as they are, so a shape error of the full model is a shape error of the shrunk one; widths
are divided by one common factor (so widths equal in the full model stay equal), depth is
cut to two layers, vocabularies are divided too (never below a special token id).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "FACTORS",
    "LAYER_NAMES",
    "VOCAB_NAMES",
    "WIDTH_NAMES",
    "consistent",
    "shrink_overrides",
]

#: Fields that are widths: divided by the factor.
WIDTH_NAMES = frozenset(
    "hidden_size intermediate_size d_model n_embd n_inner d_ff ffn_dim encoder_ffn_dim "
    "decoder_ffn_dim width embed_dim projection_dim hidden_dim dim head_dim d_kv mlp_dim "
    "proj_dim text_embed_dim vision_embed_dim moe_intermediate_size "
    "shared_expert_intermediate_size embedding_size output_dim".split()
)
#: Fields that count layers: cut to :data:`LAYERS`.
LAYER_NAMES = frozenset(
    "num_hidden_layers n_layer n_layers layers depth num_layers encoder_layers "
    "decoder_layers".split()
)
VOCAB_NAMES = frozenset({"vocab_size"})
LAYERS = 2
#: Factors tried in turn, largest first: the first that builds consistently is used (1: the
#: widths as they are, only depth cut).
FACTORS = (16, 8, 4, 2, 1)
_MIN_WIDTH = 4


def shrink_overrides(
    leaves: Iterable[tuple[str, Any]], factor: int, *, layers: bool = True, vocab: bool = True
) -> dict[str, int] | None:
    """The dotted overrides that shrink a config by ``factor``, or None when a width does not
    divide by it (or would fall below 4).

    Example:
        >>> shrink_overrides([("hidden_size", 768), ("num_hidden_layers", 12),
        ...                   ("max_position_embeddings", 512), ("vocab_size", 30522)], 16)
        {'hidden_size': 48, 'num_hidden_layers': 2, 'vocab_size': 1907}
    """
    items = [(k, v) for k, v in leaves if isinstance(v, int) and not isinstance(v, bool)]
    token_ids = [v for k, v in items if k.endswith("pad_token_id") and v >= 0]  # padding_idx
    floor = max(token_ids, default=0) + 1
    out: dict[str, int] = {}
    for key, value in items:
        leaf = key.rsplit(".", 1)[-1]
        if leaf in WIDTH_NAMES and value > 0 and factor > 1:
            if value % factor or value // factor < _MIN_WIDTH:
                return None
            out[key] = value // factor
        elif layers and leaf in LAYER_NAMES and value > LAYERS:
            out[key] = LAYERS
        elif vocab and leaf in VOCAB_NAMES and value > 0 and factor > 1:
            out[key] = max(value // factor, floor, 2)
    return out


def describe(
    overrides: Mapping[str, int], leaves: Mapping[str, Any]
) -> tuple[tuple[str, int, int], ...]:
    """``(field, full value, shrunk value)`` rows, for the report."""
    return tuple((k, int(leaves[k]), v) for k, v in overrides.items() if k in leaves)


def consistent(full: Mapping[str, tuple[int, ...]], small: Mapping[str, tuple[int, ...]]) -> bool:
    """True when every size of the full model became one size in the shrunk one.

    A width shrunk in one place and kept in another (a factory argument read by one tower
    while another tower has its own config) would make the shrunk model fail where the full
    one does not; such a shrink is refused and a milder one tried.

    Example:
        >>> consistent({"a": (768, 64)}, {"a": (48, 64)}), consistent(
        ...     {"a": (768,), "b": (768,)}, {"a": (48,), "b": (768,)})
        (True, False)
    """
    seen: dict[int, int] = {}
    for key, shape in full.items():
        other = small.get(key)
        if other is None or len(other) != len(shape):
            continue
        for d, e in zip(shape, other, strict=True):
            if seen.setdefault(d, e) != e:
                return False
    return True
