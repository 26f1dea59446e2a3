"""transformers' own load step, run on shapes: the model's conversion mapping on meta tensors.

``from_pretrained`` (transformers 5) does not hand the checkpoint to ``load_state_dict``: it
collects the model's weight transforms (``get_model_conversion_mapping``: the mapping of every
``PreTrainedModel`` inside it, scoped to its sub-module, its fused modules, the legacy
``gamma``/``beta`` renames), renames each checkpoint key with them (``rename_source_key``: all
``WeightRenaming``s, then at most one ``WeightConverter``, then the base-model prefix), groups
the tensors each converter needs and runs its operations (``MergeModulelist``,
``Concatenate``, ``Chunk``, ``Transpose``, ``PermuteForRope``...).

This module does the same with transformers' own objects and functions, on ``meta`` tensors of
the checkpoint's shapes and dtypes: every operation computes its output shape exactly as it
would with data, and no table of names is copied here, so a mapping transformers adds is
followed as soon as it is installed. An operation that needs the values themselves (a
dequantization) cannot run on meta; the keys it would produce are then left out of the view and
one finding says so.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ckptdiff.sorting import natural_key
from ckptdiff.targets.conversions import PATTERNS_KEY, weight_conversions
from ckptdiff.types import Finding, Manifest, Report, TensorSpec
from ckptdiff.wording import sampled

__all__ = ["converted_mismatch_findings", "transformers_view"]


_MAX_LISTED = 4


def _untouched(keys: list[str], patterns: Any) -> bool:
    """True when no key is matched by any of a target's recorded source patterns."""
    if not isinstance(patterns, list):
        return False
    import re

    try:
        compiled = [re.compile(p) for p in patterns]
    except (re.error, TypeError):
        return False
    return not any(c.search(k) for k in keys for c in compiled)


def transformers_view(checkpoint: Manifest, target: Manifest, model: Any = None) -> Manifest:
    """The checkpoint's manifest after transformers' conversion step for the target's model.

    Args:
        checkpoint: the checkpoint's manifest.
        target: the target's manifest (a transformers model built by ``build_target``).
        model: the target's model on meta (looked up or rebuilt when not given).

    Returns:
        The converted manifest (see :func:`ckptdiff.loading.loader_view`), or ``checkpoint``
        unchanged when no transform touches any key.

    Raises:
        TargetError: the target's model cannot be rebuilt to read its conversion mapping.
    """
    tensors = _with_aliases(checkpoint)
    expected = target.tensors
    leftover = [k for k in tensors if k not in expected]
    if not leftover or _untouched(leftover, target.metadata.get(PATTERNS_KEY)):
        return checkpoint  # every key is loaded under its own name, or no transform applies
    if model is None:
        from ckptdiff.targets import model_of

        model = model_of(target)
    start = time.perf_counter()
    plan = _Plan(model, expected)
    for key in sorted(tensors, key=_dot_natural_key):
        plan.add(key, tensors[key])
    if not plan.changed:
        return checkpoint
    out, loaded_from, failures = plan.run()
    findings = list(checkpoint.findings)
    findings.append(_summary_finding(plan, time.perf_counter() - start))
    findings += failures
    loaded_as = {k: names for k, (_spec, names) in plan.unplaced.items() if names != [k]}
    metadata = {
        **checkpoint.metadata,
        "loaded_from": loaded_from,
        "loaded_as": loaded_as,
        "loader": plan.loader_name,
    }
    return replace(checkpoint, tensors=out, aliases={}, findings=tuple(findings), metadata=metadata)


def _dot_natural_key(key: str) -> Any:
    from transformers.core_model_loading import dot_natural_key

    return dot_natural_key(key)


def _with_aliases(checkpoint: Manifest) -> dict[str, TensorSpec]:
    """The checkpoint's tensors, tied tensors stored once counted under every name."""
    out = dict(checkpoint.tensors)
    for dropped, kept in checkpoint.aliases.items():
        if dropped not in out and kept in out:
            out[dropped] = replace(out[kept], key=dropped)
    return out


class _Plan:
    """``convert_and_load_state_dict_in_model``'s first pass: where each checkpoint key goes."""

    def __init__(self, model: Any, expected: Mapping[str, TensorSpec]) -> None:
        self.expected: dict[str, TensorSpec]
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        self.model = model
        self.expected = dict(expected)  # transformers looks keys up with .get
        self.prefix = getattr(model, "base_model_prefix", None) or None
        mapping = weight_conversions(model)
        self.renamings = [t for t in mapping if isinstance(t, WeightRenaming)]
        self.converters = [t for t in mapping if isinstance(t, WeightConverter)]
        self.by_pattern = {p: c for c in self.converters for p in c.source_patterns}
        self.loader_name = f"{type(model).__name__} (transformers {_version()})"
        self.renamed: dict[str, str] = {}  # checkpoint key -> loaded key, where they differ
        self.kept: dict[str, TensorSpec] = {}  # loaded under the checkpoint's own name
        self.groups: dict[str, Any] = {}  # first loaded key -> converter with its tensors
        self.group_sources: dict[str, list[str]] = defaultdict(list)
        self.unplaced: dict[str, tuple[TensorSpec, list[str]]] = {}
        self.dtypes: dict[str, str] = {}
        self.converts = False

    @property
    def changed(self) -> bool:
        """True when the loader does more than add or strip the base-model prefix."""
        return self.converts

    def add(self, key: str, spec: TensorSpec) -> None:
        from transformers.core_model_loading import rename_source_key

        expected = self.expected
        renamed, pattern = rename_source_key(
            key, self.renamings, self.converters, self.prefix, expected
        )
        if renamed not in expected and key in expected:  # kept as it is (or only prefixed)
            renamed, pattern = rename_source_key(key, [], [], self.prefix, expected)
        if pattern is not None or renamed != _with_prefix_of(key, renamed, self.prefix):
            self.converts = True  # more than the base-model prefix, which check handles itself
        if renamed in expected and pattern is not None:
            converter = self.groups.get(renamed)
            if converter is None:
                converter = self.groups[renamed] = copy.deepcopy(self.by_pattern[pattern])
            converter.add_tensor(renamed, key, pattern, _meta_tensor(spec))
            self.group_sources[renamed].append(key)
            self.dtypes[key] = spec.dtype
        elif renamed in expected:
            if renamed != key:
                self.renamed[key] = renamed
            self.kept[renamed] = replace(spec, key=renamed)
        else:  # the model has no place for it: reported under the checkpoint's own name
            names = [renamed]
            if pattern is not None:
                targets = self.by_pattern[pattern].target_patterns
                names = [renamed.replace(targets[0], t) for t in targets]
            if names != [key]:
                self.renamed[key] = names[0]
            self.unplaced[key] = (spec, names)

    def run(self) -> tuple[dict[str, TensorSpec], dict[str, list[str]], list[Finding]]:
        """Run each converter on meta: ``(tensors, loaded_from, findings for failures)``."""
        out: dict[str, TensorSpec] = dict(self.kept)
        loaded_from: dict[str, list[str]] = {
            new: [old] for old, new in self.renamed.items() if new in self.kept
        }
        failed: list[tuple[str, list[str], str]] = []
        broken: list[tuple[str, list[str], str, str]] = []
        for first, converter in self.groups.items():
            sources = self.group_sources[first]
            try:
                realized = converter.convert(
                    first, model=self.model, config=self.model.config, loading_info=None
                )
            except Exception as e:
                if _needs_data(e):  # an operation that reads values (dequantizing...)
                    failed.append((first, sources, _op_names(converter)))
                else:  # shapes the operation cannot combine: transformers fails the same way
                    broken.append((first, sources, _op_names(converter), _one_line(e)))
                continue
            dtype = self._dtype(sources)
            for name, value in realized.items():
                value = value[0] if isinstance(value, list) else value
                shape = tuple(int(d) for d in value.shape)
                out[name] = TensorSpec(name, shape, dtype, None)
                loaded_from[name] = list(sources)
        for key, (spec, _names) in self.unplaced.items():
            out.setdefault(key, spec)
        ordered = {k: out[k] for k in sorted(out, key=natural_key)}
        return ordered, loaded_from, _failure_findings(failed) + _broken_findings(broken)

    def _dtype(self, sources: list[str]) -> str:
        return self.dtypes.get(sources[0], "float32") if sources else "float32"


def _with_prefix_of(key: str, renamed: str, prefix: str | None) -> str:
    """``key`` with the base-model prefix added or stripped as ``renamed`` has it."""
    if not prefix:
        return key
    dot = prefix + "."
    if renamed.startswith(dot) and not key.startswith(dot):
        return dot + key
    if key.startswith(dot) and not renamed.startswith(dot):
        return key[len(dot) :]
    return key


def _version() -> str:
    import transformers

    return str(transformers.__version__)


def _meta_tensor(spec: TensorSpec) -> Any:
    import torch

    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype):
        dtype = torch.float32
    return torch.empty(spec.shape, dtype=dtype, device="meta")


def _op_names(converter: Any) -> str:
    ops = getattr(converter, "operations", None) or []
    return ", ".join(type(op).__name__ for op in ops) or type(converter).__name__


def _failure_findings(failed: list[tuple[str, list[str], str]]) -> list[Finding]:
    if not failed:
        return []
    keys = tuple(k for _, sources, _ in failed for k in sources)
    what = sorted({why for _, _, why in failed})
    targets = [first for first, _, _ in failed]
    return [
        Finding(
            "loader_conversion_undetermined",
            f"transformers' load-time conversion ({'; '.join(what)}) needs the tensors' values "
            f"to compute {len(targets)} parameter{'' if len(targets) == 1 else 's'} "
            f"({_listing(targets)}), so their shapes were not compared; the "
            f"{len(keys)} checkpoint tensor{'' if len(keys) == 1 else 's'} behind them "
            "are left out of this check.",
            keys[: _MAX_LISTED * 4],
            "warning",
            {"parameters": targets, "checkpoint_tensors": len(keys)},
        )
    ]


def _needs_data(e: Exception) -> bool:
    """True when an operation failed because meta tensors hold no values (not on shapes)."""
    return isinstance(e, NotImplementedError) or "meta" in str(e).lower()


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _broken_findings(broken: list[tuple[str, list[str], str, str]]) -> list[Finding]:
    """One error per parameter whose conversion fails on the checkpoint's shapes."""
    out = []
    for first, sources, ops, error in broken:
        out.append(
            Finding(
                "loader_conversion_failed",
                f"transformers cannot build '{first}' from the checkpoint: its load-time "
                f"conversion ({ops}) fails on the {len(sources)} tensor"
                f"{'' if len(sources) == 1 else 's'} it takes ({_listing(sources)}): {error}. "
                "from_pretrained reports it missing and leaves it at its initial values.",
                tuple(sources[: _MAX_LISTED * 4]),
                "error",
                {
                    "parameter": first,
                    "operations": ops,
                    "error": error,
                    "checkpoint_tensors": list(sources),
                },
            )
        )
    return out


def _listing(keys: list[str]) -> str:
    return ", ".join(sampled(keys, _MAX_LISTED))


def _summary_finding(plan: _Plan, seconds: float) -> Finding:
    """One info finding: which loader's rules were applied, and what they did."""
    renamed = [(old, new) for old, new in plan.renamed.items() if new in plan.kept]
    parts = []
    if renamed:
        old, new = renamed[0]
        parts.append(
            f"renames {len(renamed)} key{'' if len(renamed) == 1 else 's'} ({old} -> {new}"
            + (", ..." if len(renamed) > 1 else "")
            + ")"
        )
    if plan.groups:
        n_sources = sum(len(v) for v in plan.group_sources.values())
        first = next(iter(plan.groups))
        ops = _op_names(plan.groups[first])
        parts.append(
            f"converts {n_sources} tensor{'' if n_sources == 1 else 's'} into "
            f"{len(plan.groups)} parameter{'' if len(plan.groups) == 1 else 's'} "
            f"({ops}: {plan.group_sources[first][0]}"
            + (", ..." if n_sources > 1 else "")
            + f" -> {first})"
        )
    unplaced = [k for k in plan.unplaced if k in plan.renamed]
    if unplaced:
        parts.append(
            f"maps {len(unplaced)} key{'' if len(unplaced) == 1 else 's'} to names the "
            f"model does not have ({unplaced[0]} -> {plan.renamed[unplaced[0]]}"
            + (", ..." if len(unplaced) > 1 else "")
            + ")"
        )
    return Finding(
        "loader_conversion",
        f"Compared as transformers loads it: the conversion mapping of {plan.loader_name} "
        + "; ".join(parts)
        + ". Keys below are the names the model receives; checkpoint keys "
        "the model has no place for keep their own names.",
        (),
        "info",
        {
            "loader": "transformers",
            "model_class": type(plan.model).__name__,
            "renamed": len(renamed),
            "converted_tensors": sum(len(v) for v in plan.group_sources.values()),
            "converted_parameters": len(plan.groups),
            "unplaced_renamed": {k: plan.renamed[k] for k in unplaced[:50]},
            "seconds": round(seconds, 4),
        },
    )


def converted_mismatch_findings(
    report: Report, loaded_from: Mapping[str, list[str]]
) -> list[Finding]:
    """For each mismatched key that the loader converted, the checkpoint keys behind it."""
    rows = [(m, loaded_from[m.key]) for m in report.mismatched if m.key in loaded_from]
    if not rows:
        return []
    lines = []
    for m, sources in rows[:_MAX_LISTED]:
        src = sources[0] + (f" (+{len(sources) - 1} more)" if len(sources) > 1 else "")
        lines.append(f"{m.key} <- {src}")
    more = f"; ... {len(rows) - _MAX_LISTED} more" if len(rows) > _MAX_LISTED else ""
    return [
        Finding(
            "loaded_from",
            f"{len(rows)} mismatched parameter{'' if len(rows) == 1 else 's'} come from "
            f"checkpoint keys under other names (loaded name <- checkpoint key): "
            + "; ".join(lines)
            + more
            + ".",
            tuple(m.key for m, _ in rows),
            "info",
            {"loaded_from": {m.key: list(s) for m, s in rows}},
        )
    ]
