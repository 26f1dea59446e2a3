"""The check of a PEFT adapter against its base model: the adapter's keys, normalised,
compared with what the base expects of them (:mod:`ckptdiff.adapter.expected`), and the
findings that name each cause (rank, widths, ``target_modules`` naming nothing, a moved
structural level with the key map that fixes it, an adapter that matches nothing).

Torch-free: the base is a manifest (a built target).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ckptdiff.adapter.expected import LORA_PAIRS, base_manifest, expected_adapter, matches_target
from ckptdiff.diagnosis.compare import compare, module_coverage
from ckptdiff.diagnosis.prefixes import find_prefix_matches
from ckptdiff.keymap import KeyMap
from ckptdiff.readers.peft import ADAPTER_PREFIX, CHECK_ADVICE, parse_adapter_key
from ckptdiff.types import Finding, Manifest, Report, Suggestion, TensorSpec

__all__ = ["check_adapter", "level_change"]


def level_change(strip: str, add: str) -> str:
    """Say how a module path moved: ``the base has an extra 'language_model.' level``."""
    if add.startswith(strip) and add != strip:
        return f"the base has an extra '{add[len(strip) :]}' level after '{strip or '<root>'}'"
    if strip.startswith(add) and add != strip:
        return (
            f"the base lacks the '{strip[len(add) :]}' level the adapter has after "
            f"'{add or '<root>'}'"
        )
    return f"the adapter's '{strip}' is the base's '{add}'"


def _normalise(adapter: Manifest) -> tuple[dict[str, TensorSpec], list[str], set[str]]:
    """Adapter keys without ``base_model.model.`` and adapter-name segments."""
    out: dict[str, TensorSpec] = {}
    unprefixed: list[str] = []
    names: set[str] = set()
    for key, spec in adapter.tensors.items():
        if key.startswith(ADAPTER_PREFIX):
            rest = key[len(ADAPTER_PREFIX) :]
        else:
            rest = key
            unprefixed.append(key)
        parsed = parse_adapter_key(rest)
        if parsed is not None:
            if parsed.adapter_name:
                names.add(parsed.adapter_name)
            rest = parsed.key()
            if parsed.param in ("lora_embedding_A", "lora_embedding_B") and parsed.leaf:
                rest = f"{parsed.module}.{parsed.param}"
        out[rest] = replace(spec, key=rest)
    return out, unprefixed, names


def _modules(keys: Sequence[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for k in keys:
        parsed = parse_adapter_key(k)
        if parsed is not None:
            out.setdefault(parsed.module, set()).add(parsed.param)
    return out


def _find_level(adapter_keys: Sequence[str], base: Manifest) -> tuple[str, str, int] | None:
    """The prefix change that puts most adapter modules (and copies) onto base modules."""
    base_weights = [k for k in base.tensors if k.endswith(".weight")]
    mods = _modules(adapter_keys)
    probe = [m + ".weight" for m in mods if m + ".weight" not in base.tensors]
    probe += [k for k in adapter_keys if parse_adapter_key(k) is None and k not in base.tensors]
    if not probe:
        return None
    matches = find_prefix_matches(probe, [k for k in base_weights], min_share=0.0)
    if not matches:
        return None
    best = matches[0]
    return best.strip, best.add, len(best.pairs)


def _rename_rules(strip: str, add: str) -> list[dict[str, str]]:
    return [
        {
            "op": "rename",
            "pattern": "^" + re.escape(ADAPTER_PREFIX + strip),
            "replacement": ADAPTER_PREFIX + add,
        }
    ]


def check_adapter(
    target: Manifest,
    adapter: Manifest,
    *,
    key_map: KeyMap | None = None,
    depth: int = 2,
) -> Report:
    """Check a PEFT adapter against its base model.

    Coverage counts the adapter's own tensors together with those the base expects of it
    (``lora_A``/``lora_B`` of targeted modules, ``modules_to_save`` copies): a tensor counts as
    supplied when it lands on its base module with the expected shape.

    Args:
        target: the base model's manifest (a built target; a PEFT-wrapped model works too).
        adapter: the adapter's manifest (``read("adapter_dir")``).
        key_map: rules applied to the adapter's saved keys first (``base_model.model.``...).
        depth: coverage depth.

    Returns:
        A report of the adapter's tensors against what the base expects of them: missing
        (targeted modules without adapter tensors), unexpected (adapter tensors for modules
        the base lacks), mismatched (rank or width), with findings for each cause, the moved
        structural level and its key map, and an ``adapter_matches_nothing`` error.

    Example:
        >>> report = check_adapter(build_target(base), read("lora/"))  # doctest: +SKIP
        >>> report.ok  # doctest: +SKIP
        True
    """
    if key_map:
        adapter = key_map.apply_to_manifest(adapter)
    base = base_manifest(target)
    cfg: Mapping[str, Any] = adapter.metadata.get("peft") or {}
    tensors, unprefixed, names = _normalise(adapter)
    ranks = Counter(
        t.shape[0]
        for k, t in tensors.items()
        if k.endswith((".lora_A.weight", ".lora_embedding_A"))
    )
    default_rank = ranks.most_common(1)[0][0] if ranks else None
    keys = list(tensors)

    findings: list[Finding] = []
    suggestions: list[Suggestion] = []
    report = _compare(tensors, base, cfg, default_rank, adapter, target, depth)

    # target_modules entries that name nothing in the base
    targets = cfg.get("target_modules")
    base_modules = {k.rsplit(".", 1)[0] for k in base.tensors}
    if isinstance(targets, list):
        absent = [
            t
            for t in targets
            if isinstance(t, str) and not any(matches_target(m, [t]) for m in base_modules)
        ]
        if absent:
            findings.append(
                Finding(
                    "target_modules_absent",
                    f"target_modules {', '.join(repr(t) for t in absent)} "
                    f"name{'s' if len(absent) == 1 else ''} "
                    "no module of the base model: the adapter was made for another architecture, "
                    "or "
                    "the base names its modules differently",
                    tuple(absent),
                    "error",
                    {"target_modules": list(targets)},
                )
            )
    elif isinstance(targets, str) and not any(matches_target(m, targets) for m in base_modules):
        findings.append(
            Finding(
                "target_modules_absent",
                f"target_modules regex {targets!r} matches no module of the base model",
                (targets,),
                "error",
                {"target_modules": targets},
            )
        )

    findings += _shape_causes(report, cfg)
    if names:
        listed = ", ".join(sorted(names))
        bad = (
            " ('lora' collides with PEFT's 'lora_' parameter prefix: rename the adapter)"
            if "lora" in names
            else ""
        )
        findings.append(
            Finding(
                "adapter_name_in_keys",
                f"the adapter's keys keep the adapter-name segment {listed}{bad}; PEFT saves keys "
                "without it, so load_adapter will not match them as they are",
                tuple(sorted(names)),
                "warning",
            )
        )
    if unprefixed and len(unprefixed) == len(adapter.tensors):
        findings.append(
            Finding(
                "adapter_prefix",
                f"the adapter's keys lack PEFT's '{ADAPTER_PREFIX}' prefix (saved from the bare "
                "model's state dict?); compared as paths of the base model",
                tuple(unprefixed[:5]),
                "info",
            )
        )

    lora_keys = [k for k in keys if parse_adapter_key(k) is not None]
    present = set(report.matched) | {m.key for m in report.mismatched}
    loaded = [k for k in lora_keys if k in present]
    moved = _find_level(keys, base)
    after: Report | None = None
    if moved is not None and len(moved[2:]) and moved[2] >= max(1, len(report.unexpected) // 2):
        strip, add, n = moved
        rules = _rename_rules(strip, add)
        moved_tensors = {
            (add + k[len(strip) :] if k.startswith(strip) else k): replace(
                s, key=add + k[len(strip) :] if k.startswith(strip) else k
            )
            for k, s in tensors.items()
        }
        after = _compare(moved_tensors, base, cfg, default_rank, adapter, target, depth)
        what = level_change(strip, add)
        findings.append(
            Finding(
                "adapter_level",
                f"{n} adapter modules sit under '{strip}' where the base has '{add}': {what} "
                "(the base's library version moved it since the adapter was trained). Rename "
                f"'{ADAPTER_PREFIX}{strip}' to '{ADAPTER_PREFIX}{add}' in the adapter's keys"
                + (
                    "; then it matches"
                    if after.ok
                    else f"; then {len(after.matched)} tensors match"
                ),
                tuple(sorted({k for k in keys if k.startswith(strip)})[:5]),
                "error",
                {
                    "strip": strip,
                    "add": add,
                    "rules": rules,
                    "ok_after": after.ok,
                    "matched_after": len(after.matched),
                },
            )
        )
        suggestions.append(
            Suggestion(
                "key_map",
                f"rename {ADAPTER_PREFIX}{strip} -> {ADAPTER_PREFIX}{add}",
                None,
                rules,
                after.ok,
                f"insert/remove the moved level: {what}",
                tuple(
                    f"{ADAPTER_PREFIX}{k} -> {ADAPTER_PREFIX}{add}{k[len(strip) :]}"
                    for k in lora_keys[:3]
                    if k.startswith(strip)
                ),
                {"ok_after": after.ok},
            )
        )
    if lora_keys and not loaded:
        findings.append(
            Finding(
                "adapter_matches_nothing",
                f"none of the adapter's {len(lora_keys)} LoRA tensors belongs to a module of "
                "the base "
                "model: PEFT would load none of them and the model would run with its untouched "
                "base weights (no error, only a warning about missing adapter keys)"
                + (
                    "; see the moved level above"
                    if after is not None
                    else "; is this the adapter's base model?"
                ),
                tuple(lora_keys[:5]),
                "error",
                {"adapter_tensors": len(lora_keys), "base": target.source},
            )
        )
    layout = next((f for f in adapter.findings if f.kind == "layout"), None)
    # checked against its base now: the advice to do so is dropped
    extra = [replace(layout, message=layout.message.removesuffix(CHECK_ADVICE))] if layout else []
    return replace(
        report,
        findings=tuple(extra + findings) + tuple(f for f in report.findings if f is not layout),
        suggestions=tuple(suggestions),
        key_map=tuple(key_map.to_list()) if key_map else (),
    )


def _compare(
    tensors: Mapping[str, TensorSpec],
    base: Manifest,
    cfg: Mapping[str, Any],
    default_rank: int | None,
    adapter: Manifest,
    target: Manifest,
    depth: int,
) -> Report:
    modules = _modules(list(tensors))
    expected = expected_adapter(base, cfg, modules, default_rank)
    exp_manifest = Manifest(
        f"{target.source} (adapter expected by the base)",
        "adapter-expected",
        expected,
        findings=target.findings,
    )
    ck = replace(adapter, tensors=dict(tensors), aliases={})
    report = compare(ck, exp_manifest, depth=depth)
    # coverage of the adapter as a whole: every tensor it holds or the base expects of it, and
    # the ones that land; an adapter none of whose modules is in the base reads 0%, not 0/0
    every = {**tensors, **expected}
    coverage = module_coverage(every.values(), set(report.matched), depth)
    # adapter tensors and their expected ones are float32 by default: dtype is not a finding here
    return replace(
        report,
        dtype_changes=(),
        coverage=coverage,
        target=target.source,
        target_format=target.format,
    )


def _shape_causes(report: Report, cfg: Mapping[str, Any]) -> list[Finding]:
    """Name the cause of each mismatched adapter tensor: rank, in-features, out-features."""
    causes: dict[str, list[str]] = {}
    detail: dict[str, tuple[int, int]] = {}
    r = cfg.get("r")
    for m in report.mismatched:
        parsed = parse_adapter_key(m.key)
        if parsed is None:
            causes.setdefault("modules_to_save", []).append(m.key)
            detail.setdefault("modules_to_save:" + m.key, (0, 0))
            continue
        side = LORA_PAIRS.get(parsed.param)
        a, b = m.checkpoint_shape, m.target_shape
        if side == "A":
            if a[0] != b[0]:
                causes.setdefault("rank", []).append(m.key)
                detail.setdefault("rank", (a[0], b[0]))
            if a[1:2] != b[1:2]:
                causes.setdefault("in_features", []).append(m.key)
                detail.setdefault("in_features", (a[1], b[1]))
        elif side == "B":
            if a[1:2] != b[1:2]:
                causes.setdefault("rank", []).append(m.key)
                detail.setdefault("rank", (a[1], b[1]))
            if a[0] != b[0]:
                causes.setdefault("out_features", []).append(m.key)
                detail.setdefault("out_features", (a[0], b[0]))
    out = []
    if "rank" in causes:
        have, want = detail["rank"]
        src = f"adapter_config.json r={r}" if r is not None else "the most common lora_A rows"
        out.append(
            Finding(
                "lora_rank",
                f"LoRA rank: {len(causes['rank'])} tensors have rank {have} "
                f"where {src} says {want}; "
                "build the PEFT model from the adapter's own adapter_config.json (or set "
                f"r={have}/rank_pattern)",
                tuple(causes["rank"][:5]),
                "error",
                {"checkpoint_rank": have, "config_rank": want},
            )
        )
    for side, name, dim in (
        ("in_features", "lora_A", "in-features"),
        ("out_features", "lora_B", "out-features"),
    ):
        if side in causes:
            have, want = detail[side]
            out.append(
                Finding(
                    f"lora_{side}",
                    f"{len(causes[side])} {name} tensors are for {dim} {have} "
                    "but the base module has "
                    f"{want} (e.g. {causes[side][0]}): the adapter was trained on a base model of "
                    "another size"
                    + (
                        f" (adapter_config.json names {cfg['base_model_name_or_path']})"
                        if cfg.get("base_model_name_or_path")
                        else ""
                    ),
                    tuple(causes[side][:5]),
                    "error",
                    {"checkpoint": have, "base": want},
                )
            )
    if "modules_to_save" in causes:
        mism = {m.key: m for m in report.mismatched}
        ex = mism[causes["modules_to_save"][0]]
        out.append(
            Finding(
                "modules_to_save_shape",
                f"{len(causes['modules_to_save'])} modules_to_save copies differ from the base: "
                f"{ex.key} is {list(ex.checkpoint_shape)} in the adapter and "
                f"{list(ex.target_shape)} in the base (resize the base's embeddings first when the "
                "vocabulary grew during fine-tuning)",
                tuple(causes["modules_to_save"][:5]),
                "error",
                {
                    "checkpoint_shape": list(ex.checkpoint_shape),
                    "target_shape": list(ex.target_shape),
                },
            )
        )
    return out
