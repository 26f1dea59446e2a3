"""Check a PEFT adapter against the base model it is meant for.

PEFT loads an adapter by key: a LoRA tensor whose module path is not in the base is dropped
with at most a warning, and the model runs with its untouched base weights. This check builds
what the base expects of the adapter (from ``adapter_config.json``: ``target_modules``, ``r``,
``rank_pattern``, ``modules_to_save``, ``fan_in_fan_out``) and compares the adapter with it:

- ``lora_A [r, in]`` must have the base module's in-features and ``lora_B [out, r]`` its
  out-features (``lora_embedding_A [r, num]`` / ``lora_embedding_B [dim, r]`` for embeddings;
  ``[in, out]`` base weights when ``fan_in_fan_out``), and both the config's rank;
- every ``target_modules`` entry must name modules of the base;
- ``modules_to_save`` copies must have the base tensors' shapes;
- adapter modules whose path is not in the base are unexpected, targeted base modules with no
  adapter tensors are missing. When a structural level moved (a base that gained
  ``language_model.`` since the adapter was trained), the level and the key map that fixes it
  are reported; an adapter that matches nothing is an error.

Torch-free: the base is a manifest (a built target). :mod:`~ckptdiff.adapter.expected` builds
what the base expects of the adapter, :mod:`~ckptdiff.adapter.check` compares and explains.
"""

from __future__ import annotations

from ckptdiff.adapter.check import check_adapter, level_change
from ckptdiff.adapter.expected import base_manifest, expected_adapter

__all__ = ["base_manifest", "check_adapter", "expected_adapter", "level_change"]
