"""The one verifier: every suggestion is proven the same way before it is shown.

A suggestion (config values, a key map, a call) becomes a :class:`Fix`: exactly what the
user gets (the config file ``--emit-config`` writes, the rules ``--emit-key-map`` writes or
the option string printed, ``model.resize_token_embeddings(N)``, ``--auto-class``).
:func:`apply_fix` applies it to the target and the checkpoint, rebuilds the target on meta
from that config (the only place rebuilds happen, with :class:`Builder` for the probes the
candidates come from), and compares the whole model again. :func:`judge` turns the outcome
into a status:

- ``verified``: every key the suggestion touches matches and nothing that matched stops;
- ``partial``: it helps, but keys it moves still differ (``still_differ`` names them);
- ``undetermined``: the shapes cannot tell the value (heads when the head dim is free);
- ``unverified``: it could not be checked (the target does not build with it).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.prefixes import base_model_prefix_keymap
from ckptdiff.errors import CkptDiffError
from ckptdiff.keymap import KeyMap
from ckptdiff.types import Manifest, Report, Status, Suggestion

__all__ = [
    "Builder",
    "Fix",
    "Outcome",
    "Verdict",
    "apply_fix",
    "bad_keys",
    "clear_cache",
    "judge",
    "verify_key_maps",
]

Rebuild = Callable[[Manifest, Mapping[str, Any]], Manifest]


@dataclass(frozen=True)
class Fix:
    """Exactly what the user applies.

    Attributes:
        overrides: dotted config changes; the config built is the target's config with them
            (what ``--emit-config`` writes).
        rules: key-map rules applied to the checkpoint (what ``--emit-key-map`` writes).
        resize_to: ``model.resize_token_embeddings(N)`` called on the built model.
        auto_class: the transformers class built instead (``--auto-class``).
    """

    overrides: Mapping[str, Any] = field(default_factory=dict)
    rules: tuple[Mapping[str, Any], ...] = ()
    resize_to: int | None = None
    auto_class: str | None = None

    @property
    def rebuilds(self) -> bool:
        """True when the target must be built again."""
        return bool(self.overrides) or self.resize_to is not None or self.auto_class is not None


@dataclass(frozen=True)
class Outcome:
    """The whole comparison after a fix.

    Attributes:
        fix: the fix applied.
        report: the comparison (None when it could not be made: ``error`` says why).
        target: the target as rebuilt (the original when nothing was rebuilt).
        config: the config the target was built from, with the fix (None without overrides).
        error: why the fix could not be applied.
    """

    fix: Fix
    report: Report | None
    target: Manifest | None = None
    config: Mapping[str, Any] | None = None
    error: str = ""


@dataclass(frozen=True)
class Verdict:
    """A status and the keys behind it."""

    status: Status
    still_differ: tuple[str, ...] = ()
    broken: tuple[str, ...] = ()
    helps: bool = False


def _ok_keys(report: Report) -> set[str]:
    return set(report.matched) | set(report.tied) | {t.key for t in report.ignored}


def bad_keys(report: Report) -> set[str]:
    """Keys that keep a comparison from loading: mismatched, missing, unexpected."""
    return (
        {m.key for m in report.mismatched}
        | {t.key for t in report.missing}
        | {t.key for t in report.unexpected}
        | {t.key for t in report.buffers_missing}
    )


def judge(
    outcome: Outcome,
    before: Report,
    touched: Collection[str],
    *,
    shape_invisible: bool = False,
) -> Verdict:
    """The status of a suggestion whose fix gave ``outcome``.

    Args:
        outcome: what :func:`apply_fix` gave for the whole set the user gets.
        before: the comparison the suggestion was made on.
        touched: the keys the suggestion moves (names on either side).
        shape_invisible: the value is one shapes cannot tell: ``undetermined`` at best.

    Example:
        >>> judge(Outcome(Fix(), None, error="no build"), before, ["w"]).status  # doctest: +SKIP
        'unverified'
    """
    if outcome.report is None:
        return Verdict("unverified")
    after = outcome.report
    ok_before, ok_after, bad_after = _ok_keys(before), _ok_keys(after), bad_keys(after)
    broken = tuple(sorted(k for k in ok_before if k not in ok_after and k in bad_after))
    still = tuple(sorted(k for k in touched if k in bad_after))
    helps = any(k in ok_after and k not in ok_before for k in touched) or (
        len(after.matched) > len(before.matched)
    )
    if shape_invisible:
        status: Status = "undetermined"
    elif not still and not broken and (helps or not touched):
        status = "verified"
    elif helps:
        status = "partial"
    else:
        status = "unverified"
    return Verdict(status, still, broken, helps)


# --- building ------------------------------------------------------------------------------------

_CACHE: OrderedDict[str, Manifest | str] = OrderedDict()
_CACHE_SIZE = 512


def clear_cache() -> None:
    """Forget every cached build."""
    _CACHE.clear()


def _default_rebuild(target: Manifest, overrides: Mapping[str, Any]) -> Manifest:
    from ckptdiff.targets import rebuild

    return rebuild(target, overrides)


class Builder:
    """Builds a target on meta with config overrides (cached process-wide): the probes that
    suggestions are inferred from, and the fixes that prove them.

    A build that fails is an answer (None, with the error in ``errors``), never an exception.
    """

    def __init__(self, target: Manifest, rebuild: Rebuild | None = None) -> None:
        self.target = target
        self._rebuild = rebuild or _default_rebuild
        self.ident = json.dumps(target.metadata.get("target"), sort_keys=True, default=str)
        self.builds = 0
        self.errors: dict[str, str] = {}

    def __call__(self, target: Manifest, overrides: Mapping[str, Any]) -> Manifest:
        """``rebuild(target, overrides)`` for the prober; raises the build's error."""
        built = self.build(overrides)
        if built is None:
            raise CkptDiffError(next(reversed(self.errors.values()), "the target did not build"))
        return built

    def build(self, overrides: Mapping[str, Any]) -> Manifest | None:
        """The target rebuilt with ``overrides`` (dotted keys), or None when it does not build."""
        if not overrides:
            return self.target
        key = self.ident + json.dumps(dict(overrides), sort_keys=True, default=str)
        hit = _CACHE.get(key)
        if hit is None:
            self.builds += 1
            try:
                full = with_per_layer_lists(
                    self.target.config or {}, overrides, derive=config_deriver(self.target)
                )
                hit = self._rebuild(self.target, full)
            except CkptDiffError as e:
                hit = str(e)
            except Exception as e:  # noqa: BLE001 - a build that fails is an answer
                hit = f"{type(e).__name__}: {e}"
            _CACHE[key] = hit
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(key)
        if isinstance(hit, str):
            self.errors[json.dumps(dict(overrides), sort_keys=True, default=str)] = hit
            return None
        return hit


Derive = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def config_deriver(target: Manifest) -> Derive | None:
    """For a transformers target: the config as its class completes it (lists it derives
    from other fields filled in), to tell a derived per-layer list from one written out."""
    info = target.metadata.get("target")
    if not isinstance(info, Mapping) or info.get("kind") not in ("hf-config", "hf-class"):
        return None
    from ckptdiff.targets.hf import completed_config

    return completed_config


def with_per_layer_lists(
    config: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    derive: Derive | None = None,
) -> dict[str, Any]:
    """``overrides`` plus the per-layer lists a changed layer count carries along: a config
    whose ``layer_types`` lists 2 entries beside ``num_hidden_layers = 3`` does not build,
    so the list is cycled to the new count (``[a, b]`` -> ``[a, b, a]``). A list the config
    class derives from other fields (``mlp_layer_types`` from ``first_k_dense_replace``:
    ``derive`` of the config without it gives it back) is left to the class to derive again
    for the new count (written as null): ``[dense, sparse]`` becomes
    ``[dense, sparse, sparse]``, as the model was built, not ``[dense, sparse, dense]``.

    Example:
        >>> with_per_layer_lists({"n_layers": 2, "layer_types": ["a", "b"]}, {"n_layers": 3})
        {'n_layers': 3, 'layer_types': ['a', 'b', 'a']}
    """
    out = dict(overrides)
    for dotted, new in overrides.items():
        parent, _, leaf = dotted.rpartition(".")
        node: Any = config
        for part in parent.split(".") if parent else ():
            node = node.get(part) if isinstance(node, Mapping) else None
        if leaf == "num_labels" and isinstance(new, int) and isinstance(node, Mapping):
            out.update(_label_maps(node, parent, new))
            continue
        if not isinstance(node, Mapping) or "layer" not in leaf or not isinstance(new, int):
            continue
        old = node.get(leaf)
        if not isinstance(old, int) or old == new or new <= 0:
            continue
        for name, value in node.items():
            key = f"{parent}.{name}" if parent else name
            if (
                "layer" in name
                and isinstance(value, list)
                and value
                and all(isinstance(x, str) for x in value)  # layer types, not indices
                and len(value) == old
                and key not in overrides
            ):
                derived = derive is not None and _derived(config, key, value, derive)
                out[key] = None if derived else [value[i % len(value)] for i in range(new)]
    return out


def _derived(config: Mapping[str, Any], dotted: str, value: list[Any], derive: Derive) -> bool:
    """True when the config class gives ``value`` back for ``dotted`` left unset."""
    from ckptdiff.targets.factory import deep_merge

    try:
        node: Any = derive(deep_merge(dict(config), {dotted: None}))
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
    except Exception:  # noqa: BLE001 - a config that does not complete: keep the list as written
        return False
    return node == value


def _label_maps(node: Mapping[str, Any], parent: str, n: int) -> dict[str, Any]:
    """transformers' ``num_labels`` is the size of ``id2label``: a new count is written as
    ``id2label`` / ``label2id`` of that size (names kept where they exist)."""
    old = node.get("id2label")
    names = dict(old) if isinstance(old, Mapping) else {}
    id2label = {str(i): str(names.get(str(i), f"LABEL_{i}")) for i in range(n)}
    at = f"{parent}." if parent else ""
    return {
        f"{at}id2label": id2label,
        f"{at}label2id": {v: int(k) for k, v in id2label.items()},
    }


def emitted_config(target: Manifest, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The target's config with ``overrides`` (dotted keys) and the per-layer lists they
    carry along: what ``--emit-config`` writes."""
    from ckptdiff.targets.factory import deep_merge, set_dotted

    config = dict(target.config or {})
    full = with_per_layer_lists(config, overrides, derive=config_deriver(target))
    out = deep_merge(config, {k: v for k, v in full.items() if not _is_label_map(k)})
    for k, v in full.items():  # label maps replace the old ones (a merge would keep extras)
        if _is_label_map(k):
            set_dotted(out, k, v)
    return out


def _is_label_map(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1] in ("id2label", "label2id")


def _build_fixed(target: Manifest, fix: Fix) -> tuple[Manifest, Any]:
    """The target built as the user would build it with the fix: from the emitted config
    file (transformers) or keyword arguments (a factory), with the call applied."""
    from ckptdiff.targets import TargetSpec, build_model
    from ckptdiff.targets.meta import on_meta
    from ckptdiff.targets.module import manifest_from_module

    info = target.metadata.get("target")
    if not isinstance(info, Mapping):
        raise CkptDiffError(f"'{target.source}' was not built from a factory or a config")
    config = emitted_config(target, fix.overrides) if fix.overrides else None
    auto = fix.auto_class or info.get("auto_class")
    with tempfile.TemporaryDirectory(prefix="ckptdiff-verify-") as tmp:
        if info.get("kind") == "hf-config" and config is not None:
            path = os.path.join(tmp, "config.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(config, f, default=str)
            spec = TargetSpec("hf-config", f"hf-config:{path}", {}, auto)
        elif info.get("kind") == "factory" and config is not None:
            spec = TargetSpec("factory", str(info["spec"]), config, auto)
        else:
            from ckptdiff.targets.factory import deep_merge

            args = deep_merge(dict(info.get("args") or {}), dict(fix.overrides))
            config_object = dict(target.config or {}) if info.get("kind") == "hf-class" else None
            spec = TargetSpec(info["kind"], str(info["spec"]), args, auto, config_object)
        model = build_model(spec)
        if fix.resize_to is not None:
            with on_meta():
                resize: Any = model.resize_token_embeddings
                resize(fix.resize_to, mean_resizing=False)
        hf_config: Any = getattr(model, "config", None)
        built_config = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(spec.args)
        manifest = manifest_from_module(
            model,
            source=target.source,
            config=built_config,
            metadata={"target": {**dict(info), "auto_class": auto}},
        )
    return manifest, config


def apply_fix(
    checkpoint: Manifest,
    target: Manifest,
    fix: Fix,
    *,
    depth: int = 2,
) -> Outcome:
    """Apply ``fix`` to both sides and compare the whole model again.

    The checkpoint gets the fix's key rules, then the base-model prefix rule transformers
    applies for the (rebuilt) target; the target is rebuilt on meta from the emitted config,
    with the call made on it.

    Returns:
        The :class:`Outcome`; its ``report`` is None when the fix could not be applied.
    """
    config: Mapping[str, Any] | None = None
    built = target
    if fix.rebuilds:
        try:
            built, config = _build_fixed(target, fix)
        except CkptDiffError as e:
            return Outcome(fix, None, error=str(e))
        except Exception as e:  # noqa: BLE001 - a fix that does not build is an answer
            return Outcome(fix, None, error=f"{type(e).__name__}: {e}")
    ck = checkpoint
    if fix.rules:
        try:
            ck = KeyMap.from_rules(fix.rules).apply_to_manifest(ck)
        except CkptDiffError as e:
            return Outcome(fix, None, error=str(e))
    if built is not target:
        prefix, _ = base_model_prefix_keymap(ck, built)
        if prefix:
            ck = prefix.apply_to_manifest(ck)
    return Outcome(fix, compare(ck, built, depth=depth), built, config)


# --- key maps ---------------------------------------------------------------------------------


def renamed_keys(checkpoint: Manifest, rules: Sequence[Mapping[str, Any]]) -> set[str]:
    """The keys a rule list moves: new names of renamed keys, and keys whose shape changes."""
    mapped = KeyMap.from_rules(rules).apply_to_manifest(checkpoint)
    before = {k: t.shape for k, t in checkpoint.tensors.items()}
    return {k for k, t in mapped.tensors.items() if before.get(k) != t.shape}


def verify_key_maps(
    checkpoint: Manifest, target: Manifest, before: Report, suggestions: Sequence[Suggestion]
) -> list[Suggestion]:
    """Each key-map suggestion judged on what the user pastes: the option string when it is
    one (``--strip-prefix module.``), else the rules; every key it renames must then match
    in shape, and nothing that matched may stop matching."""
    from ckptdiff.keymap import KeyMap as _KeyMap

    out = []
    for s in suggestions:
        if s.kind != "key_map":
            out.append(s)
            continue
        rules: list[Mapping[str, Any]] = list(s.suggested or ())
        if s.field.startswith("--") and s.field != "--key-map":
            rules = list(_KeyMap.from_option_string(s.field).to_list())
        outcome = apply_fix(checkpoint, target, Fix(rules=tuple(rules)))
        touched = renamed_keys(checkpoint, rules)
        verdict = judge(outcome, before, touched)
        if verdict.status == "verified" and s.data.get("names_unrelated"):
            # equal shapes between names with little in common prove nothing
            verdict = replace(verdict, status="undetermined")
        data = dict(s.data)
        if verdict.still_differ:
            data["still_differ_count"] = len(verdict.still_differ)
        out.append(
            replace(
                s,
                status=verdict.status,
                still_differ=verdict.still_differ[:20],
                data=data,
            )
        )
    return out
