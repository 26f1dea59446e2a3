"""``check``: a checkpoint against the model it is meant for, before anything is loaded.

The checkpoint is read lazily (keys, shapes, dtypes; never tensor data) and the target is
built on torch's ``meta`` device; then the two manifests are diffed. On top of ``diff``, a
check applies what transformers itself applies at load time (the base-model prefix, tied
weights, ignore patterns: the last two through the target's manifest) and calls out every
module the checkpoint supplies nothing of.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ckptdiff.diagnosis.diagnose import diff_manifests
from ckptdiff.diagnosis.prefixes import base_model_prefix_keymap
from ckptdiff.errors import UsageError
from ckptdiff.keymap import KeyMap
from ckptdiff.readers import read
from ckptdiff.types import Coverage, Finding, Manifest, Report

__all__ = [
    "check",
    "base_model_prefix_keymap",
    "key_map_coverage_finding",
    "unloaded_module_findings",
]


def check(
    model_or_target: Any,
    source: str | os.PathLike[str] | Manifest,
    *,
    key_map: KeyMap | Sequence[Mapping[str, Any]] | None = None,
    select: str | None = None,
    depth: int = 2,
    args: Mapping[str, Any] | Sequence[str] | None = None,
    config: str | os.PathLike[str] | Mapping[str, Any] | Any = None,
    auto_class: str | None = None,
    raw: bool = False,
) -> Report:
    """Check a checkpoint against a model without loading the checkpoint's data.

    Args:
        model_or_target: an ``nn.Module`` (checked as it is), a target spec string
            (``pkg.module:callable``, ``path/file.py:callable``, ``hf-config:path``, a folder
            with a ``config.json``), or a manifest from :func:`ckptdiff.targets.build_target`.
        source: the checkpoint: a file, a folder, a ``*.index.json``, or a manifest.
        key_map: rules applied to the checkpoint's keys first (a KeyMap or rule dicts such
            as ``[{"op": "strip_prefix", "prefix": "module."}]``).
        select: the state dict inside a nested pickled container (``state_dict``...).
        depth: module depth of the coverage rows.
        args: factory keyword arguments or config overrides (dotted keys, or ``"k=v"`` items).
        config: a JSON file or dict of keyword arguments, or a config object.
        auto_class: the transformers class to build (``AutoModel``, ...).
        raw: compare the checkpoint as ``load_state_dict`` sees it, without the target
            loader's own renames and conversions (transformers' conversion mapping).

    Returns:
        The :class:`Report`: ``.ok``, ``.missing``, ``.unexpected``, ``.mismatched``,
        ``.coverage``, ``.raise_for_incompatible()``.

    Raises:
        SourceNotFoundError, ReadError, SelectError: the checkpoint cannot be read.
        TargetError: the target cannot be built.
        UsageError: bad key-map rules, or ``select`` given with a manifest.

    Example:
        >>> report = ckptdiff.check(model, "pytorch_model.bin")  # doctest: +SKIP
        >>> report.raise_for_incompatible(allow_missing=True)  # doctest: +SKIP
        >>> model.load_state_dict(torch.load("pytorch_model.bin"), strict=False)  # doctest: +SKIP
    """
    if isinstance(source, Manifest):
        if select:
            raise UsageError(
                f"Cannot use select={select!r} with an already-read manifest ('{source.source}'):"
                " pass the checkpoint's path instead."
            )
        checkpoint = source
    else:
        checkpoint = read(os.fspath(source), select=select)
    if isinstance(model_or_target, Manifest):
        target = model_or_target
    else:
        from ckptdiff.targets import build_target

        target = build_target(
            model_or_target, args=args, config=config, auto_class=auto_class, evidence=checkpoint
        )

    user_map = _as_keymap(key_map)
    from ckptdiff.layouts import layout_findings, prepare_checkpoint
    from ckptdiff.readers.peft import is_adapter

    if is_adapter(checkpoint):  # a PEFT adapter is checked against what its base expects
        from ckptdiff.adapter import check_adapter

        return check_adapter(target, checkpoint, key_map=user_map, depth=depth)
    checkpoint = prepare_checkpoint(checkpoint, target)  # quantized weights at logical shapes
    if not raw:  # as the target's own loader hands it over (transformers' conversion mapping)
        from ckptdiff.loading import loader_view

        checkpoint = loader_view(checkpoint, target)
    prefix_map, prefix_finding = base_model_prefix_keymap(checkpoint, target, user_map)
    combined = (user_map or KeyMap()) + (prefix_map or KeyMap())
    report = diff_manifests(checkpoint, target, key_map=combined or None, depth=depth)
    extra = ([prefix_finding] if prefix_finding else []) + _coverage_findings(report)
    extra = layout_findings(report, checkpoint, target) + extra
    if not raw:
        from ckptdiff.loading import loader_findings

        extra += loader_findings(report, checkpoint)
    return replace(report, findings=tuple(extra) + report.findings) if extra else report


def _as_keymap(key_map: KeyMap | Sequence[Mapping[str, Any]] | None) -> KeyMap | None:
    if key_map is None or isinstance(key_map, KeyMap):
        return key_map or None
    return KeyMap.from_rules(key_map) or None


def _coverage_findings(report: Report) -> list[Finding]:
    """The unloaded-module warnings, from the comparison the output shows.

    When the explain layer found a key map (``report.aligned``), the modules are judged with it
    applied, and one finding says how much of the model loads without it and with it.
    """
    # a new head (classifier.*) is named by the explain layer as the normal fine-tune start
    new_heads = {
        m for f in report.findings if f.kind == "new_head" for m in f.data.get("modules", ())
    }
    aligned = report.aligned
    if aligned is None:
        found = unloaded_module_findings(
            report.coverage, mismatched=[m.key for m in report.mismatched]
        )
    else:
        found = [key_map_coverage_finding(report, aligned)] + unloaded_module_findings(
            aligned.coverage, mismatched=[m.key for m in aligned.mismatched], with_key_map=True
        )
    return [
        f
        for f in found
        if not (f.kind == "module_not_loaded" and f.keys and set(f.keys) <= new_heads)
    ]


def key_map_coverage_finding(report: Report, aligned: Report) -> Finding:
    """How much of the model loads as the checkpoint is, and with the suggested key map."""
    before = _whole(report.coverage)
    after = _whole(aligned.coverage)
    options = [s.field for s in report.suggestions if s.kind == "key_map" and s.field]
    named = ", ".join(f"'{o}'" for o in options[:3]) + (", ..." if len(options) > 3 else "")
    how = f" ({named})" if named else ""
    share_before = before.share if before and before.expected else 0.0
    share_after = after.share if after and after.expected else 0.0
    if before is None or not before.supplied_tensors:
        lead = f"Without the key map{how}, nothing loads"
    else:
        lead = (
            f"Without the key map{how}, {before.supplied_tensors} of "
            f"{before.expected_tensors} tensors load"
        )
    tensors = (
        f" ({after.supplied_tensors} of {after.expected_tensors} tensors)"
        if after is not None
        else ""
    )
    return Finding(
        "key_map_coverage",
        f"{lead}: coverage (parameters) goes from {share_before:.1%} as-is to {share_after:.1%} "
        f"with the key map applied{tensors}.",
        (),
        "warning" if share_after > share_before else "info",
        {
            "before": round(share_before, 6),
            "after": round(share_after, 6),
            "supplied_tensors_before": before.supplied_tensors if before else 0,
            "supplied_tensors_after": after.supplied_tensors if after else 0,
            "expected_tensors": after.expected_tensors if after else 0,
            "options": options,
            "rules": list(aligned.key_map),
        },
    )


def _whole(coverage: Sequence[Coverage]) -> Coverage | None:
    return next((c for c in coverage if c.module == ""), None)


def unloaded_module_findings(
    coverage: Sequence[Coverage], mismatched: Sequence[str] = (), *, with_key_map: bool = False
) -> list[Finding]:
    """A warning for each outermost module the checkpoint supplies nothing of.

    A module whose parent already got a warning is not repeated; when nothing at all loads,
    one warning covers the whole model. ``mismatched`` (keys present with another shape) says
    whether the module is absent from the checkpoint or there with other shapes.
    ``with_key_map``: the coverage is the one with the suggested key map applied (worded so).
    """
    even = "Even with the key map, t" if with_key_map else "T"
    in_ = "Even with the key map, nothing in" if with_key_map else "Nothing in"
    findings: list[Finding] = []
    empty: list[str] = []
    shaped: list[tuple[Coverage, int]] = []
    for row in coverage:
        if not row.expected_tensors or row.supplied_tensors:
            continue
        if any(row.module == e or row.module.startswith(e + ".") or e == "" for e in empty):
            continue
        empty.append(row.module)
        prefix = row.module + "." if row.module else ""
        wrong = sum(1 for k in mismatched if k.startswith(prefix))
        if wrong:
            shaped.append((row, wrong))
            continue
        where = f"'{row.module}'" if row.module else "the whole model"
        findings.append(
            Finding(
                "module_not_loaded",
                f"{even}he checkpoint supplies none of {where} ({row.expected_tensors} "
                f"tensor{'' if row.expected_tensors == 1 else 's'}, "
                f"{row.expected:,} parameters): it would stay at its initial values.",
                (row.module,),
                "warning",
                {
                    "module": row.module,
                    "expected": row.expected,
                    "expected_tensors": row.expected_tensors,
                    "with_key_map": with_key_map,
                },
            )
        )
    if shaped:
        names = ", ".join(f"'{r.module}'" if r.module else "the whole model" for r, _ in shaped)
        n_wrong = sum(w for _, w in shaped)
        n_params = sum(r.expected for r, _ in shaped)
        findings.append(
            Finding(
                "module_not_loaded",
                f"{in_} {names} loads with the right shape ({n_wrong} "
                f"tensor{'' if n_wrong == 1 else 's'} there with "
                f"other shapes, {n_params:,} parameters): load_state_dict raises, and with "
                "strict=False or ignore_mismatched_sizes they keep their initial values.",
                tuple(r.module for r, _ in shaped),
                "warning",
                {
                    "modules": [r.module for r, _ in shaped],
                    "mismatched": n_wrong,
                    "expected": n_params,
                    "with_key_map": with_key_map,
                },
            )
        )
    return findings
