"""Repo-level checks of an audit, each returning findings.

- the index against the weights files beside it (files it does not name);
- ``torch_dtype`` / ``dtype`` in the config against the dtypes the weights are stored in;
- the tokenizer's size (``tokenizer.json``, added tokens included) against ``vocab_size`` and
  the embedding's rows;
- ``.safetensors`` and ``.bin`` weights side by side that disagree.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ckptdiff._audit.repos import Repo
from ckptdiff.hf_files import tokenizer_size
from ckptdiff.naming import EMBED_NAMES
from ckptdiff.readers.sharded import parse_index
from ckptdiff.types import Finding, Manifest, TensorSpec

__all__ = [
    "dtype_findings",
    "format_findings",
    "no_config_finding",
    "other_format",
    "tokenizer_findings",
    "unreferenced_findings",
]

#: Weights of one format, and the files of the other format to compare them with.
_FORMAT_GROUPS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
_ADAPTER_GROUPS = (("adapter_model.safetensors",), ("adapter_model.bin",))
_FLOAT_DTYPES = frozenset(
    {
        "float64",
        "float32",
        "float16",
        "bfloat16",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
    }
)


def no_config_finding(names: Sequence[str]) -> Finding:
    """Why the weights were not checked: an adapter repo (info) or no config at all."""
    if "adapter_config.json" in names:
        return Finding(
            "no_config",
            "An adapter repo (adapter_config.json, no config.json): the weights were not checked "
            "against a model; audit the base model's repo for that.",
            ("config.json",),
            "info",
        )
    return Finding(
        "no_config",
        "The repo has no config.json, so the weights were not checked against a model; "
        "transformers' from_pretrained cannot load it as it is.",
        ("config.json",),
        "warning",
    )


def unreferenced_findings(
    repo: Repo, index: str, names: Sequence[str], source: str
) -> list[Finding]:
    """Weights files of the index's format in the folder that the index does not name."""
    with open(repo.fetch(index), "rb") as f:
        weight_map, _ = parse_index(f.read(), source)
    ext = index[: -len(".index.json")].rsplit(".", 1)[-1]
    named = set(weight_map.values())
    whole = index[: -len(".index.json")]
    stray = [n for n in names if n.endswith("." + ext) and n not in named and n != whole]
    if not stray:
        return []
    return [
        Finding(
            "unreferenced_weights",
            f"{len(stray)} .{ext} file(s) in the repo are not named by {index} and are never "
            f"loaded: {', '.join(stray[:5])}{', ...' if len(stray) > 5 else ''} (left over from an "
            "earlier save?). Delete them, or add their tensors to the index.",
            tuple(stray),
            "warning",
        )
    ]


def other_format(primary: str, names: Sequence[str]) -> str | None:
    """The other format's weights beside ``primary`` (``pytorch_model.bin`` beside
    ``model.safetensors``...), if the repo has them."""
    for groups in (_FORMAT_GROUPS, _ADAPTER_GROUPS):
        for mine, theirs in (groups, groups[::-1]):
            if primary in mine:
                return next((n for n in theirs if n in names), None)
    return None


def dtype_findings(config: Mapping[str, Any], weights: Manifest) -> list[Finding]:
    """``torch_dtype`` / ``dtype`` of the config against the dtypes the weights are stored in.

    Returns:
        A ``config_dtype`` warning when most floating-point parameters are stored in another
        dtype than the config declares; a ``mixed_dtypes`` info when only some are.

    Example:
        >>> from ckptdiff.types import TensorSpec
        >>> w = Manifest("x", "safetensors", {"w": TensorSpec("w", (4,), "float16")})
        >>> [f.kind for f in dtype_findings({"torch_dtype": "float32"}, w)]
        ['config_dtype']
    """
    fields = [(k, config.get(k)) for k in ("dtype", "torch_dtype")]
    field_name, declared = next(((k, v) for k, v in fields if isinstance(v, str)), (None, None))
    if field_name is None or not isinstance(declared, str) or declared == "auto":
        return []
    declared = declared.removeprefix("torch.")
    params: Counter[str] = Counter()
    tensors: Counter[str] = Counter()
    for spec in weights.tensors.values():
        if spec.dtype in _FLOAT_DTYPES:
            params[spec.dtype] += spec.numel
            tensors[spec.dtype] += 1
    if not params:
        return []
    stored, count = params.most_common(1)[0]
    total = sum(params.values())
    stored_data = {d: {"tensors": tensors[d], "parameters": params[d]} for d in sorted(params)}
    if stored != declared:
        return [
            Finding(
                "config_dtype",
                f"config.json declares {field_name} {declared!r} but {100 * count / total:.0f}% of "
                f"the floating-point parameters are stored as {stored}: from_pretrained("
                f"torch_dtype='auto') would build the model in {declared} and cast every weight. "
                f"Set {field_name} to {stored!r}, or re-save the weights in {declared}.",
                (field_name,),
                "warning",
                {"field": field_name, "declared": declared, "stored": stored_data},
            )
        ]
    others = {d: n for d, n in tensors.items() if d != declared}
    if others:
        example = next(s.key for s in weights.tensors.values() if s.dtype in others)
        return [
            Finding(
                "mixed_dtypes",
                f"{sum(others.values())} tensor(s) are stored as {', '.join(sorted(others))} while "
                f"config.json declares {declared} (e.g. '{example}'); loading casts them.",
                (field_name,),
                "info",
                {"field": field_name, "declared": declared, "stored": stored_data},
            )
        ]
    return []


def _embedding(weights: Manifest) -> TensorSpec | None:
    for name in EMBED_NAMES:
        suffix = name + ".weight"
        for spec in weights.tensors.values():
            if spec.key.endswith(suffix) and len(spec.shape) == 2:
                return spec
    return None


def _vocab_size(config: Mapping[str, Any] | None) -> int | None:
    if not config:
        return None
    for holder in (config, config.get("text_config")):
        if isinstance(holder, Mapping) and isinstance(holder.get("vocab_size"), int):
            return int(holder["vocab_size"])
    return None


def tokenizer_findings(
    tokenizer: Any,
    config: Mapping[str, Any] | None,
    weights: Manifest,
    *,
    checked: bool = False,
) -> list[Finding]:
    """The tokenizer's size against ``vocab_size`` and the embedding's rows.

    Args:
        tokenizer: the parsed ``tokenizer.json``.
        config: the parsed ``config.json`` (None without one).
        weights: the weights' manifest.
        checked: whether the weights were checked against the config (an embedding whose rows
            differ from ``vocab_size`` is then already reported as a mismatch).

    Returns:
        Errors when the tokenizer can emit ids past ``vocab_size`` or past the embedding's
        rows; a warning when rows and ``vocab_size`` differ (and nothing checked it); an info
        when ``vocab_size`` leaves rows no token uses.
    """
    size, base, added = tokenizer_size(tokenizer)
    if not size:
        return []
    vocab_size = _vocab_size(config)
    embedding = _embedding(weights)
    rows = embedding.shape[0] if embedding is not None else None
    counted = f"{size} token ids ({base} in the vocabulary + {added} added)"
    data: dict[str, Any] = {
        "tokenizer_size": size,
        "vocabulary": base,
        "added": added,
        "vocab_size": vocab_size,
        "embedding_rows": rows,
    }
    out: list[Finding] = []
    if vocab_size is not None and size > vocab_size:
        out.append(
            Finding(
                "tokenizer_vocab_size",
                f"tokenizer.json has {counted} but config.json's vocab_size is {vocab_size}: ids "
                f"{vocab_size}..{size - 1} would index past the embedding. Resize it "
                f"(model.resize_token_embeddings({size})) and save again, "
                "or drop the added tokens.",
                ("vocab_size",),
                "error",
                data,
            )
        )
    if rows is not None and size > rows and rows != vocab_size:
        out.append(
            Finding(
                "tokenizer_embedding_rows",
                f"tokenizer.json has {counted} but the checkpoint's '{embedding.key}' has "  # type: ignore[union-attr]
                f"{rows} rows: ids {rows}..{size - 1} would index past it.",
                (embedding.key,),  # type: ignore[union-attr]
                "error",
                data,
            )
        )
    if rows is not None and vocab_size is not None and rows != vocab_size and not checked:
        out.append(
            Finding(
                "embedding_rows",
                f"config.json's vocab_size is {vocab_size} but the checkpoint's '{embedding.key}' "  # type: ignore[union-attr]
                f"has {rows} rows.",
                (embedding.key,),  # type: ignore[union-attr]
                "warning",
                data,
            )
        )
    if not out and vocab_size is not None and size < vocab_size:
        out.append(
            Finding(
                "tokenizer_smaller",
                f"tokenizer.json has {counted}; vocab_size {vocab_size} leaves {vocab_size - size} "
                "embedding rows no token uses (padding to a round size is common).",
                ("vocab_size",),
                "info",
                data,
            )
        )
    return out


def _expanded(m: Manifest) -> dict[str, TensorSpec]:
    out = dict(m.tensors)
    for dropped, kept in m.aliases.items():
        if dropped not in out and kept in out:
            out[dropped] = dataclasses.replace(out[kept], key=dropped)
    return out


def format_findings(
    primary: str,
    weights: Manifest,
    other: str,
    other_weights: Manifest,
    tied: Iterable[Sequence[str]] = (),
) -> list[Finding]:
    """Compare the weights transformers loads with the other format's copy in the same repo.

    Args:
        primary: the file transformers loads (``model.safetensors`` or its index).
        weights: its manifest.
        other: the other format's file (``pytorch_model.bin`` or its index).
        other_weights: its manifest.
        tied: the target's tied groups: a key one side omits while it holds a tied partner is
            not a difference.

    Returns:
        A ``formats_disagree`` warning listing keys only on one side and shapes that differ;
        a ``formats_dtype`` info when only dtypes differ.
    """
    a, b = _expanded(weights), _expanded(other_weights)
    partners: dict[str, set[str]] = {}
    for group in tied:
        for k in group:
            partners.setdefault(k, set()).update(g for g in group if g != k)

    def covered(key: str, side: Mapping[str, TensorSpec]) -> bool:
        return key in side or any(p in side for p in partners.get(key, ()))

    only_a = [k for k in a if not covered(k, b)]
    only_b = [k for k in b if not covered(k, a)]
    shapes = [k for k in a if k in b and a[k].shape != b[k].shape]
    dtypes = [k for k in a if k in b and a[k].shape == b[k].shape and a[k].dtype != b[k].dtype]
    data = {
        "files": [primary, other],
        "only_in_" + primary: only_a,
        "only_in_" + other: only_b,
        "shape_differs": shapes,
        "dtype_differs": dtypes,
    }
    if only_a or only_b or shapes:
        bits = []
        if only_a:
            bits.append(f"{len(only_a)} key(s) only in {primary} (e.g. '{only_a[0]}')")
        if only_b:
            bits.append(f"{len(only_b)} key(s) only in {other} (e.g. '{only_b[0]}')")
        if shapes:
            k = shapes[0]
            bits.append(
                f"{len(shapes)} shape(s) differ (e.g. '{k}': {list(a[k].shape)} vs "
                f"{list(b[k].shape)})"
            )
        return [
            Finding(
                "formats_disagree",
                f"{primary} and {other} hold different weights: {'; '.join(bits)}. transformers "
                f"loads {primary}; tools that load {other} get other weights. Re-export one from "
                "the other, or delete the stale one.",
                tuple(only_a + only_b + shapes),
                "warning",
                data,
            )
        ]
    if dtypes:
        return [
            Finding(
                "formats_dtype",
                f"{primary} and {other} hold the same tensors in other dtypes ({len(dtypes)} "
                f"tensor(s), e.g. '{dtypes[0]}': {a[dtypes[0]].dtype} vs {b[dtypes[0]].dtype}).",
                tuple(dtypes),
                "info",
                data,
            )
        ]
    return []
