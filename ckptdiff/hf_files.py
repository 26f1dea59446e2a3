"""What the small files of a Hugging Face model folder say: whether a JSON file is a
transformers config, and how many token ids a ``tokenizer.json`` can emit. Pure; no torch."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["is_hf_config", "read_json_object", "tokenizer_size"]


def read_json_object(path: str) -> dict[str, Any] | None:
    """The JSON object in the file at ``path``; None when it cannot be read, is not JSON, or
    holds something other than an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def is_hf_config(path: str, *, by_architectures: bool = True) -> bool:
    """Whether the JSON file at ``path`` is a transformers config: it names a ``model_type``
    (or, with ``by_architectures``, ``architectures``)."""
    data = read_json_object(path)
    if data is None:
        return False
    return "model_type" in data or (by_architectures and "architectures" in data)


def tokenizer_size(data: Any) -> tuple[int, int, int]:
    """``(size, vocabulary, added)`` of a ``tokenizer.json``: ids the tokenizer can emit.

    ``size`` is the largest id plus one; ``added`` counts added tokens outside the vocabulary.

    Example:
        >>> tokenizer_size({"model": {"vocab": {"a": 0, "b": 1}},
        ...                 "added_tokens": [{"id": 2, "content": "<x>"}]})
        (3, 2, 1)
    """
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    ids: set[int] = set()
    if isinstance(vocab, dict):
        ids = {v for v in vocab.values() if isinstance(v, int) and not isinstance(v, bool)}
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        ids = set(range(len(vocab)))
    added_ids = {
        t["id"]
        for t in (data.get("added_tokens") or [] if isinstance(data, dict) else [])
        if isinstance(t, dict) and isinstance(t.get("id"), int)
    }
    every = ids | added_ids
    return (max(every) + 1 if every else 0), len(ids), len(added_ids - ids)
