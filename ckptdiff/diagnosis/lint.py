"""Consistency lint: a model (a checkpoint, or a built target, and its config) that disagrees
with itself, even when every key loads. Pure and torch-free.

- the text tower's vocabulary (embedding rows) vs a decoder head's classes (OpenCLIP's CoCa
  with a RoBERTa tower: 50265 token rows beside a 49408-class decoder);
- one setting given twice with two values (``text_cfg.context_length`` 77 vs
  ``multimodal_cfg.context_length`` 76; ``vocab_size`` vs ``text_config.vocab_size``);
- the config's ``vocab_size`` vs the embedding and head rows, and the tokenizer's size.

Each disagreement is a ``kind="inconsistent"`` :class:`~ckptdiff.types.Finding` with both
numbers and the keys or config fields involved. Architectures that differ on purpose are
known: mllama's input embedding has ``vocab_size + 8`` rows while its head has ``vocab_size``
(and a built target shows such offsets by itself).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from ckptdiff.hf_files import read_json_object, tokenizer_size
from ckptdiff.naming import DECODER_PROJECTIONS, EMBED_NAMES, VOCAB_HEAD_ROWS, keys_holding
from ckptdiff.targets.factory import dotted_leaves
from ckptdiff.types import Finding, Manifest

__all__ = [
    "DESIGN_OFFSETS",
    "lint",
    "lint_config",
    "read_tokenizer_size",
    "vocab_tensors",
]

#: ``model_type -> embedding rows - head rows`` by design.
DESIGN_OFFSETS: Mapping[str, int] = {"mllama": 8}

#: Settings that must agree wherever a config repeats them.
SHARED_SETTINGS = ("context_length", "vocab_size", "context_len")

#: Token embeddings as the lint (and the vocabulary causes) read them: every name but
#: ``shared``, T5's embedding, which these rules have never counted.
_EMBED = tuple(n for n in EMBED_NAMES if n != "shared")


def vocab_tensors(m: Manifest) -> tuple[dict[str, int], dict[str, int]]:
    """``(embeddings, heads)``: ``key -> vocabulary size`` read from shapes.

    Embeddings: rows of ``embed_tokens``/``word_embeddings``/``token_embedding``/``wte``...
    Heads: rows of ``lm_head``/``embed_out``, or the wide dim of a decoder's output projection
    (``text_decoder.text_projection [768, 49408]``).
    """
    embeds: dict[str, int] = {}
    heads: dict[str, int] = {}
    tensors = m.tensors
    for key in keys_holding(tensors, _VOCAB_WORDS):  # a rule below can hold for these only
        t = tensors[key]
        parts = key.split(".")
        if len(t.shape) != 2 or key.endswith("bias"):
            continue
        if not _EMBED_SET.isdisjoint(parts):
            embeds[key] = t.shape[0]
        elif not _HEAD_SET.isdisjoint(parts) and parts[-1] == "weight":
            heads[key] = t.shape[0]
        elif "decoder" in key and parts[-1] in DECODER_PROJECTIONS and t.shape[1] >= 2 * t.shape[0]:
            heads[key] = t.shape[1]
    return embeds, heads


_EMBED_SET = frozenset(_EMBED)
_HEAD_SET = frozenset(VOCAB_HEAD_ROWS)
#: What a key the rules above take holds: an embedding's or a head's name, or a decoder
#: projection's as its last component.
_VOCAB_WORDS = (*_EMBED, *VOCAB_HEAD_ROWS, *(f".{p}\n" for p in DECODER_PROJECTIONS))


def _model_type(config: Mapping[str, Any] | None) -> str | None:
    v = (config or {}).get("model_type")
    return v if isinstance(v, str) else None


#: Key patterns that name an architecture with a by-design offset when no config says it,
#: and a word every key they match holds (looked for in all keys at once first).
_DESIGN_KEYS: Mapping[str, tuple[str, re.Pattern[str]]] = {
    "mllama": ("cross_attn_", re.compile(r"(^|\.)cross_attn_(attn|mlp)_gate$")),
}


def _design_offset(
    target: Manifest | None, config: Mapping[str, Any] | None, m: Manifest | None = None
) -> int | None:
    """The embedding-minus-head rows this architecture has by design: from the target's own
    tensors, the config's model type, or keys only that architecture has."""
    if m is not None and not _model_type(config):
        for model_type, (word, rx) in _DESIGN_KEYS.items():
            if any(map(rx.search, keys_holding(m.tensors, (word,)))):
                return DESIGN_OFFSETS[model_type]
    if target is not None and target.format == "meta-model":  # a built model is the design
        e, h = vocab_tensors(target)
        if len(set(e.values())) == 1 and len(set(h.values())) == 1:
            offset = next(iter(e.values())) - next(iter(h.values()))
            if abs(offset) <= 64:  # a by-design offset, not a target that disagrees itself
                return offset
    mt = _model_type(config)
    return DESIGN_OFFSETS.get(mt) if mt else None


def _tensor_lint(m: Manifest, side: str, offset: int | None) -> list[Finding]:
    embeds, heads = vocab_tensors(m)
    out = []
    for hk, hv in heads.items():
        for ek, ev in embeds.items():
            if ev == hv or (offset is not None and ev - hv == offset):
                continue
            why = f" (token ids from {hv} up would be out of range for the head)" if ev > hv else ""
            out.append(
                Finding(
                    "inconsistent",
                    f"The {side}'s vocabulary disagrees with itself: {ek} has {ev} token rows but "
                    f"{hk} has {hv} classes{why}.",
                    (ek, hk),
                    "warning",
                    {"what": "vocab", "side": side, "values": {ek: ev, hk: hv}},
                )
            )
            break
    return out


def lint_config(config: Mapping[str, Any], *, side: str = "config") -> list[Finding]:
    """A setting the config gives twice with two values (``text_cfg.context_length`` 77 and
    ``multimodal_cfg.context_length`` 76).

    Example:
        >>> cfg = {"text_cfg": {"context_length": 77}, "multimodal_cfg": {"context_length": 76}}
        >>> lint_config(cfg)[0].keys
        ('text_cfg.context_length', 'multimodal_cfg.context_length')
    """
    seen: dict[str, dict[str, Any]] = defaultdict(dict)
    for dotted, v in dotted_leaves(config):
        name = dotted.rsplit(".", 1)[-1]
        if name in SHARED_SETTINGS and isinstance(v, int) and not isinstance(v, bool):
            seen[name][dotted] = v
    out = []
    for name, fields in seen.items():
        if len(set(fields.values())) < 2:
            continue
        shown = ", ".join(f"{f} = {v}" for f, v in fields.items())
        out.append(
            Finding(
                "inconsistent",
                f"The {side} gives {name} twice with different values: {shown}; they must agree "
                "(one module is built with one value and fed inputs sized by the other).",
                tuple(fields),
                "warning",
                {"what": name, "side": side, "values": dict(fields)},
            )
        )
    return out


def _config_vs_rows(
    config: Mapping[str, Any], m: Manifest, side: str, offset: int | None
) -> list[Finding]:
    embeds, heads = vocab_tensors(m)
    rows = {**embeds, **heads}
    if not rows:
        return []
    out = []
    for dotted, v in dotted_leaves(config):
        if dotted.rsplit(".", 1)[-1] != "vocab_size" or not isinstance(v, int):
            continue
        if any(r == v or (offset is not None and r - v == offset) for r in rows.values()):
            continue
        key, r = next(iter(rows.items()))
        out.append(
            Finding(
                "inconsistent",
                f"The {side}'s config says {dotted} = {v} but {key} has {r} rows: set {dotted} to "
                f"{r - (offset or 0) if key in embeds else r}.",
                (dotted, key),
                "warning",
                {"what": "vocab_size", "side": side, "values": {dotted: v, key: r}},
            )
        )
    return out


def read_tokenizer_size(folder: str) -> int | None:
    """The number of token ids of a ``tokenizer.json`` in ``folder`` (added tokens included).

    Returns None when there is no readable ``tokenizer.json``.
    """
    data = read_json_object(os.path.join(folder, "tokenizer.json"))
    size = tokenizer_size(data)[0] if data is not None else 0
    return size or None


def _tokenizer_lint(size: int, m: Manifest, side: str) -> list[Finding]:
    embeds, _ = vocab_tensors(m)
    out = []
    for key, rows in embeds.items():
        if rows == size:
            continue
        if size > rows:
            msg = (
                f"The tokenizer has {size} token ids but {key} has {rows} rows: ids from "
                f"{rows} up are out of range; call model.resize_token_embeddings({size})."
            )
            severity = "error"
        else:
            msg = (
                f"{key} has {rows} rows for a tokenizer of {size} ids "
                f"({rows - size} unused rows: padding, or a tokenizer that lost tokens)."
            )
            severity = "info"
        out.append(
            Finding(
                "inconsistent",
                msg,
                (key, "tokenizer.json"),
                severity,  # type: ignore[arg-type]
                {"what": "tokenizer", "side": side, "values": {key: rows, "tokenizer.json": size}},
            )
        )
    return out


def lint(
    checkpoint: Manifest | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    target: Manifest | None = None,
    tokenizer_size: int | None = None,
) -> list[Finding]:
    """Every disagreement of a model with itself: its tensors, its config, its tokenizer.

    Args:
        checkpoint: the checkpoint's manifest (its ``config`` is used when ``config`` is None).
        config: the checkpoint's own config (a ``config.json`` as a dict, factory arguments).
        target: a target built on meta; it is linted too, and it shows by-design offsets
            (mllama's embedding has 8 rows more than its head).
        tokenizer_size: the tokenizer's number of ids (:func:`read_tokenizer_size`).

    Returns:
        ``kind="inconsistent"`` findings, checkpoint first.
    """
    out: list[Finding] = []
    target_config = target.config if target is not None else None
    if checkpoint is not None:
        config = config if config is not None else checkpoint.config
        offset = _design_offset(target, config or target_config, checkpoint)
        out += _tensor_lint(checkpoint, "checkpoint", offset)
        if config:
            out += lint_config(config, side="checkpoint config")
            out += _config_vs_rows(config, checkpoint, "checkpoint", offset)
        if tokenizer_size:
            out += _tokenizer_lint(tokenizer_size, checkpoint, "checkpoint")
    if target is not None:
        offset = _design_offset(None, target_config, target)
        out += _once(out, _tensor_lint(target, "target", offset))
        if target_config:
            out += _once(out, lint_config(target_config, side="target config"))
    return out


def _once(seen: list[Finding], found: list[Finding]) -> list[Finding]:
    """The target's findings that the checkpoint's did not already say (same values): a
    disagreement both sides share is told once, the checkpoint's finding saying so."""
    said = [(f.data.get("what"), f.data.get("values")) for f in seen]
    out = []
    for f in found:
        what = (f.data.get("what"), f.data.get("values"))
        if what not in said:
            out.append(f)
            continue
        i = said.index(what)
        first = seen[i]
        if not first.data.get("target_too"):
            seen[i] = dataclasses.replace(
                first,
                message=first.message + " The target has the same disagreement.",
                data={**first.data, "target_too": True},
            )
    return out
