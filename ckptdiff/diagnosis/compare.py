"""The pure comparison: two manifests in, every key classified, no alignment, no torch.

"missing" means the target has it and the checkpoint lacks it; "unexpected" the reverse.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from itertools import compress
from math import prod
from operator import attrgetter

from ckptdiff.naming import containers, deepest_modules
from ckptdiff.sorting import natural_key, natural_order, naturally_by_key
from ckptdiff.types import (
    Coverage,
    DtypeChange,
    Finding,
    Manifest,
    Mismatch,
    Report,
    TensorSpec,
)
from ckptdiff.wording import listed

__all__ = ["compare", "module_coverage"]


def _patterns(target: Manifest, name: str) -> list[re.Pattern[str]]:
    raw = target.metadata.get(name) or ()
    return [re.compile(p) for p in raw]


def _tied_supplier(key: str, target: Manifest, present: Mapping[str, TensorSpec]) -> str | None:
    """The checkpoint key that supplies ``key`` through tying or aliasing, if any."""
    alias = target.aliases.get(key)
    if alias is not None and alias in present:
        return alias
    for group in target.tied:
        if key in group:
            for other in group:
                if other != key and other in present:
                    return other
    return None


def compare(checkpoint: Manifest, target: Manifest, *, depth: int = 2) -> Report:
    """Classify every key of both sides; no alignment, no suggestions.

    Args:
        checkpoint: the side that is loaded (A).
        target: the side it is loaded into (B, or a model built on meta).
        depth: coverage rows go down to this many key components.
    """
    ck = dict(checkpoint.tensors)
    # tied tensors the checkpoint stored once count as present under every name
    for dropped, kept in checkpoint.aliases.items():
        if dropped not in ck and kept in ck:
            ck[dropped] = replace(ck[kept], key=dropped)
    ignore_missing = _patterns(target, "ignore_missing")
    ignore_unexpected = _patterns(target, "ignore_unexpected")

    missing: list[TensorSpec] = []
    mismatched: list[Mismatch] = []
    dtype_changes: list[DtypeChange] = []
    matched: list[str] = []
    tied: list[str] = []
    buffers_missing: list[TensorSpec] = []
    ignored: list[TensorSpec] = []
    missing_by_rule: list[TensorSpec] = []
    supplied: set[str] = set()
    for key, want in target.tensors.items():
        have = ck.get(key)
        if have is not None:
            if have.shape != want.shape:
                mismatched.append(Mismatch(key, have.shape, want.shape, have.dtype, want.dtype))
                continue
            matched.append(key)
            supplied.add(key)
            if have.dtype != want.dtype:
                dtype_changes.append(DtypeChange(key, want.shape, have.dtype, want.dtype))
        elif _tied_supplier(key, target, ck) is not None:
            tied.append(key)
            supplied.add(key)
        elif any(p.search(key) for p in ignore_missing):
            missing_by_rule.append(want)
        elif key in target.buffers:
            buffers_missing.append(want)
        else:
            missing.append(want)

    unexpected: list[TensorSpec] = []
    by_rule: list[TensorSpec] = []
    for key, have in checkpoint.tensors.items():
        if key in target.tensors:
            continue
        if key in target.non_persistent:
            ignored.append(have)
        elif any(p.search(key) for p in ignore_unexpected):
            by_rule.append(have)
        elif _tied_supplier(key, target, target.tensors) is not None:
            tied.append(key)
        else:
            unexpected.append(have)
    # an ignore list hides what it was written for, not layers one side lacks
    deeper = _layers_beyond([t.key for t in by_rule], target.tensors)
    shallower = _layers_beyond([t.key for t in missing_by_rule], ck)
    ignored += [t for t in by_rule if t.key not in deeper]
    ignored += [t for t in missing_by_rule if t.key not in shallower]
    unexpected += [t for t in by_rule if t.key in deeper]
    missing += [t for t in missing_by_rule if t.key in shallower]
    findings = checkpoint.findings + target.findings
    if deeper:
        findings += (_hidden_layers(sorted(deeper, key=natural_key), ignore_unexpected, True),)
    if shallower:
        findings += (_hidden_layers(sorted(shallower, key=natural_key), ignore_missing, False),)

    by_key = attrgetter("key")
    return Report(
        checkpoint=checkpoint.source,
        target=target.source,
        checkpoint_format=checkpoint.format,
        target_format=target.format,
        missing=tuple(naturally_by_key(missing, by_key)),
        unexpected=tuple(naturally_by_key(unexpected, by_key)),
        mismatched=tuple(naturally_by_key(mismatched, by_key)),
        dtype_changes=tuple(naturally_by_key(dtype_changes, by_key)),
        matched=tuple(natural_order(matched)),
        ignored=tuple(naturally_by_key(ignored, by_key)),
        tied=tuple(natural_order(dict.fromkeys(tied))),
        buffers_missing=tuple(naturally_by_key(buffers_missing, by_key)),
        coverage=module_coverage(target.tensors.values(), supplied, depth),
        findings=findings,
    )


def _layers_beyond(keys: list[str], other: Iterable[str]) -> set[str]:
    """The keys among ``keys`` that are layers of a container the other side has, at an index
    it does not have (``encoder.layers.2.*`` where the other side has layers 0 and 1)."""
    if not keys:
        return set()
    have = containers(other)
    return {
        key
        for key in keys
        if any(have.get(t) and not i <= have[t] for t, i in containers((key,)).items())
    }


def _hidden_layers(keys: list[str], rules: list[re.Pattern[str]], unexpected: bool) -> Finding:
    patterns = sorted({p.pattern for p in rules if any(p.search(k) for k in keys)})
    shown = ", ".join(patterns)
    if unexpected:
        what = f"{len(keys)} checkpoint key(s) are layers the target does not have"
        rule, then = "unexpected", "drop them without a word, so a deeper checkpoint loads"
    else:
        what = f"{len(keys)} target key(s) are layers the checkpoint does not have"
        rule, then = "missing", "leave them at their initial values without a word, so a "
        then += "shallower checkpoint loads"
    return Finding(
        "ignore_rule_hides_layers",
        f"{what} ({listed(keys)}): the model class's ignore list (_keys_to_ignore_on_load_"
        f"{rule}: {shown}) has from_pretrained {then} as if it fit; they are listed as {rule}.",
        tuple(keys[:50]),
        "warning",
        {
            "patterns": patterns,
            "count": len(keys),
            "side": "checkpoint" if unexpected else "target",
        },
    )


def module_coverage(
    expected: Iterable[TensorSpec], supplied: set[str], depth: int
) -> tuple[Coverage, ...]:
    """Per-module coverage: the whole model, then every module down to ``depth`` components.

    A module is the first n dotted components of a key (n = 1..depth), and only keys with
    more components than n belong to it (``logit_scale`` is not a module). Keys are tallied
    in whole-list passes by their deepest module; Python runs once per distinct one.
    """
    specs = list(expected) if depth >= 0 else []
    keys = list(map(attrgetter("key"), specs))
    numels = list(map(prod, map(attrgetter("shape"), specs)))
    hits = list(map(supplied.__contains__, keys))
    deepest = deepest_modules(keys, depth)
    tally: dict[tuple[str, int], list[int]] = {}
    # keys counted by (deepest module, size), of which there are few
    every = Counter(zip(deepest, numels, strict=True))
    supplied_ones = Counter(compress(zip(deepest, numels, strict=True), hits))
    for hit, counts in ((0, every), (1, supplied_ones)):
        for (group, numel), n in counts.items():
            row = tally.setdefault(group, [0, 0, 0, 0])
            row[hit] += numel * n
            row[2 + hit] += n
    rows: dict[str, list[int]] = {}
    for (module, levels), (params, hit_params, n_keys, hit_keys) in tally.items():
        components = module.split(".")
        for n in range(levels + 1):  # the whole model, then each module down to it
            row = rows.setdefault(".".join(components[:n]), [0, 0, 0, 0])
            row[0] += params
            row[1] += hit_params
            row[2] += n_keys
            row[3] += hit_keys
    rows.setdefault("", [0, 0, 0, 0])
    ordered = sorted(rows, key=lambda m: (m != "", natural_key(m)))
    return tuple(Coverage(m, *rows[m]) for m in ordered)
