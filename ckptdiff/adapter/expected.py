"""What a base model expects of a PEFT adapter, from ``adapter_config.json``: ``lora_A [r, in]``
and ``lora_B [out, r]`` for each module ``target_modules`` names (``lora_embedding_A [r, num]``
/ ``lora_embedding_B [dim, r]`` for embeddings; ``[in, out]`` base weights when
``fan_in_fan_out``), the rank from ``r`` or ``rank_pattern``, and ``modules_to_save`` copies of
the base tensors. Torch-free.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ckptdiff.readers.peft import ADAPTER_PREFIX, ConfigRegex, parse_adapter_key
from ckptdiff.types import Manifest, TensorSpec

__all__ = ["LORA_PAIRS", "base_manifest", "expected_adapter", "matches_target"]

#: LoRA parameters and the side of the pair each is (A: ``[r, in]``, B: ``[out, r]``).
LORA_PAIRS = {"lora_A": "A", "lora_B": "B", "lora_embedding_A": "A", "lora_embedding_B": "B"}


def base_manifest(target: Manifest) -> Manifest:
    """The base model's keys, also when the target is itself a PEFT-wrapped model.

    A ``PeftModel``'s state dict holds ``base_model.model.<m>.base_layer.weight`` and the
    adapter's own tensors; the base keys are ``<m>.weight``.
    """
    keys = list(target.tensors)
    if not any(k.startswith(ADAPTER_PREFIX) for k in keys):
        return target
    out: dict[str, TensorSpec] = {}
    for key, spec in target.tensors.items():
        rest = key[len(ADAPTER_PREFIX) :] if key.startswith(ADAPTER_PREFIX) else key
        if parse_adapter_key(rest) is not None or ".modules_to_save." in rest:
            continue
        rest = rest.replace(".base_layer.", ".").replace(".original_module.", ".")
        out[rest] = replace(spec, key=rest)
    return replace(target, tensors=out)


def matches_target(module: str, pattern: str | Sequence[str] | None) -> bool:
    """PEFT's ``target_modules`` matching: a regex on the whole name, or a name suffix."""
    if pattern is None:
        return False
    if isinstance(pattern, str):
        return _config_regex(pattern, "target_modules").fullmatch(module)
    return any(module == t or module.endswith("." + t) for t in pattern)


@functools.lru_cache(maxsize=256)
def _config_regex(pattern: str, field: str) -> ConfigRegex:
    """A config regex, compiled once, its time budget shared by all its matches."""
    return ConfigRegex(pattern, field, "adapter")


def _layer_index(module: str) -> int | None:
    m = re.search(r"\.([0-9]{1,9})\.", "." + module + ".")
    return int(m.group(1)) if m else None


def _rank_for(module: str, cfg: Mapping[str, Any], default: int | None) -> int | None:
    pattern = cfg.get("rank_pattern")
    if isinstance(pattern, Mapping):
        for pat, r in pattern.items():
            if _config_regex(rf"(^|\.){pat}$", "rank_pattern").search(module) and type(r) is int:
                return r
    r = cfg.get("r")
    return r if type(r) is int else default


def _is_embedding(module: str, adapter_params: set[str]) -> bool:
    return bool(adapter_params & {"lora_embedding_A", "lora_embedding_B"}) or (
        not adapter_params and "embed" in module.rsplit(".", 1)[-1]
    )


def expected_adapter(
    base: Manifest,
    cfg: Mapping[str, Any],
    adapter_modules: Mapping[str, set[str]],
    default_rank: int | None,
) -> dict[str, TensorSpec]:
    """The adapter tensors the base expects, keyed like the adapter's (no prefix).

    Args:
        base: the base model's manifest.
        cfg: ``adapter_config.json`` fields.
        adapter_modules: module -> adapter parameter names the adapter holds (after alignment).
        default_rank: the rank to use when the config gives none (lora_A rows).
    """
    weights = {k[: -len(".weight")]: s for k, s in base.tensors.items() if k.endswith(".weight")}
    targets = cfg.get("target_modules")
    exclude = cfg.get("exclude_modules")
    layers = cfg.get("layers_to_transform")
    layers = [layers] if type(layers) is int else layers
    fan = bool(cfg.get("fan_in_fan_out"))
    out: dict[str, TensorSpec] = {}
    for module, w in weights.items():
        held = adapter_modules.get(module, set())
        wanted = matches_target(module, targets) and not matches_target(module, exclude)
        if wanted and isinstance(layers, list) and _layer_index(module) not in layers:
            wanted = False
        if not (wanted or held & set(LORA_PAIRS)) or len(w.shape) < 2:
            continue
        r = _rank_for(module, cfg, default_rank)
        if r is None:
            continue
        dtype = "float32"
        if _is_embedding(module, held):
            num, dim = w.shape[0], w.shape[1]
            for name, shape in (("lora_embedding_A", (r, num)), ("lora_embedding_B", (dim, r))):
                out[f"{module}.{name}"] = TensorSpec(f"{module}.{name}", shape, dtype)
            continue
        flip = fan and len(w.shape) == 2  # GPT-2's Conv1D stores [in, out]
        out_f, in_f = (w.shape[1], w.shape[0]) if flip else (w.shape[0], w.shape[1])
        kernel = tuple(w.shape[2:])
        a_shape = (r, in_f, *kernel)
        b_shape = (out_f, r, *(1 for _ in kernel))
        out[f"{module}.lora_A.weight"] = TensorSpec(f"{module}.lora_A.weight", a_shape, dtype)
        out[f"{module}.lora_B.weight"] = TensorSpec(f"{module}.lora_B.weight", b_shape, dtype)
        if "lora_magnitude_vector" in held:
            out[f"{module}.lora_magnitude_vector"] = TensorSpec(
                f"{module}.lora_magnitude_vector", (out_f,), dtype
            )
    saved = cfg.get("modules_to_save")
    if isinstance(saved, list):
        for key, spec in base.tensors.items():
            module = key.rsplit(".", 1)[0]
            if matches_target(module, [s for s in saved if isinstance(s, str)]):
                out[key] = spec
    return out
