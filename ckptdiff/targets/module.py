"""The :class:`~ckptdiff.types.Manifest` of an ``nn.Module``: what loading into it expects.

Records, besides each state-dict key's shape and dtype:
- which keys are persistent buffers, and the names of non-persistent ones;
- tied groups (one tensor under several names) and, for each, the canonical name;
- for transformers models, what ``from_pretrained`` itself forgives: the
  ``_keys_to_ignore_on_load_unexpected/missing`` patterns (plus the ``position_ids`` and
  ``rotary_emb.inv_freq`` patterns it adds for models that have those buffers) and the
  ``base_model_prefix``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ckptdiff.types import Manifest, TensorSpec

__all__ = ["manifest_from_module", "dtype_name"]

# Patterns transformers (v5, ``_adjust_missing_and_unexpected_keys``) adds at load time for
# models that own such a buffer, because older checkpoints saved it as a persistent one.
_LEGACY_BUFFER_PATTERNS = (
    ("rotary_emb.inv_freq", r"rotary_emb\.inv_freq"),
    ("position_ids", r"(^|\.)position_ids$"),
)


def dtype_name(dtype: torch.dtype) -> str:
    """torch's name of a dtype without the ``torch.`` prefix (``bfloat16``)."""
    return str(dtype).removeprefix("torch.")


def manifest_from_module(
    model: nn.Module,
    *,
    source: str,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Manifest:
    """Describe what ``model.load_state_dict`` expects, without touching tensor data.

    Args:
        model: any module, on meta or with real weights.
        source: the name of the target in reports (the spec string, or the class name).
        config: the config the model was built from, if any.
        metadata: extra metadata (how to rebuild the target).

    Returns:
        A ``meta-model`` manifest with ``buffers``, ``non_persistent``, ``tied`` and
        ``aliases`` filled (for transformers models; a plain module is judged as
        ``load_state_dict(strict=True)`` judges it, its shared tensors and non-persistent
        buffers kept in ``metadata`` only), and ``metadata`` holding ``ignore_unexpected``,
        ``ignore_missing`` and ``base_model_prefix`` where the model declares them.
    """
    state = model.state_dict(keep_vars=True)
    tensors: dict[str, TensorSpec] = {}
    by_id: dict[int, list[str]] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):  # `_extra_state` entries
            continue
        tensors[key] = TensorSpec(
            key=key,
            shape=tuple(int(d) for d in value.shape),
            dtype=dtype_name(value.dtype),
            nbytes=value.numel() * value.element_size(),
        )
        by_id.setdefault(id(value), []).append(key)

    buffers, non_persistent = _buffer_keys(model)
    tied, aliases = _tied_groups(model, by_id)
    meta: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    meta.update(_transformers_rules(model, buffers | non_persistent))
    meta.update(metadata or {})
    if not is_transformers_model(model):
        # judged by load_state_dict(strict=True): a non-persistent buffer in the file is an
        # unexpected key, and every name of a shared tensor must be in the file. What the
        # model shares is kept as information only.
        meta["loader"] = "load_state_dict"
        meta["non_persistent_buffers"] = sorted(non_persistent)
        meta["shared_tensors"] = [list(g) for g in tied]
        non_persistent, tied, aliases = set(), (), {}
    return Manifest(
        source=source,
        format="meta-model",
        tensors=tensors,
        metadata=meta,
        buffers=frozenset(buffers & tensors.keys()),
        non_persistent=frozenset(non_persistent),
        aliases=aliases,
        tied=tied,
        config=dict(config) if config is not None else None,
    )


def is_transformers_model(model: nn.Module) -> bool:
    """True for a transformers ``PreTrainedModel`` (its loader forgives ties and buffers)."""
    return isinstance(getattr(model, "base_model_prefix", None), str) and hasattr(model, "config")


def _buffer_keys(model: nn.Module) -> tuple[set[str], set[str]]:
    """Persistent and non-persistent buffer keys, under every name a module is reachable by."""
    persistent: set[str] = set()
    transient: set[str] = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, buf in module._buffers.items():
            if buf is None:
                continue
            key = f"{prefix}.{name}" if prefix else name
            if name in module._non_persistent_buffers_set:
                transient.add(key)
            else:
                persistent.add(key)
    return persistent, transient


def _tied_groups(
    model: nn.Module, by_id: Mapping[int, list[str]]
) -> tuple[tuple[tuple[str, ...], ...], dict[str, str]]:
    """Groups of keys sharing one tensor, canonical name first, and ``alias -> canonical``.

    The canonical name is transformers' tie source where the model declares one
    (``all_tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}``), else the
    first name in state-dict order.
    """
    declared = getattr(model, "all_tied_weights_keys", None) or {}
    sources = set(declared.values()) if isinstance(declared, Mapping) else set()
    groups: list[tuple[str, ...]] = []
    aliases: dict[str, str] = {}
    for keys in by_id.values():
        if len(keys) < 2:
            continue
        canonical = next((k for k in keys if k in sources), keys[0])
        group = (canonical, *(k for k in keys if k != canonical))
        groups.append(group)
        aliases.update({k: canonical for k in group[1:]})
    groups.sort()
    return tuple(groups), aliases


def _transformers_rules(model: nn.Module, buffer_keys: set[str]) -> dict[str, Any]:
    """The ignore patterns and ``base_model_prefix`` a transformers model applies at load time."""
    out: dict[str, Any] = {}
    prefix = getattr(model, "base_model_prefix", None)
    is_transformers = isinstance(prefix, str) and hasattr(model, "config")
    if isinstance(prefix, str) and prefix:
        out["base_model_prefix"] = prefix
    unexpected = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    missing = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    if is_transformers:
        for suffix, pattern in _LEGACY_BUFFER_PATTERNS:
            if any(k.endswith(suffix) for k in buffer_keys):
                unexpected.add(pattern)
    if unexpected:
        out["ignore_unexpected"] = sorted(unexpected)
    if missing:
        out["ignore_missing"] = sorted(missing)
    return out
