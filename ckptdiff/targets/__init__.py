"""Targets: the model a checkpoint is meant for, built on torch's ``meta`` device.

A target is one of:

- a Python factory and its keyword arguments: ``fixtures.models:build_clip``,
  ``path/to/file.py:build``;
- a transformers config (extra ``hf``): ``hf-config:path/config.json``, a folder holding a
  ``config.json``, ``hf://org/repo``;
- an ``nn.Module`` instance (API): ``build_target(model)``.

:func:`build_target` returns its :class:`~ckptdiff.types.Manifest` (format ``meta-model``);
:func:`rebuild` builds it again with changed settings (to prove a suggested config fix).

Importing this package does not import torch; building does (``meta``, ``module`` and ``hf``
import it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ckptdiff.errors import TargetError
from ckptdiff.targets.factory import (
    as_module,
    deep_merge,
    load_callable,
    load_config_file,
    parse_arg_assignments,
)
from ckptdiff.types import Manifest

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "TargetSpec",
    "build_model",
    "build_target",
    "model_of",
    "parse_arg_assignments",
    "rebuild",
    "target_spec",
]

TargetKind = Literal["factory", "hf-config", "hf-class", "module"]


@dataclass(frozen=True)
class TargetSpec:
    """How to build a target.

    Attributes:
        kind: ``factory`` (a Python callable), ``hf-config`` (a transformers config file),
            ``hf-class`` (a transformers model class and its config dict, from an instance), or
            ``module`` (an ``nn.Module`` instance, used as it is).
        spec: the target as the user named it (``pkg.module:callable``, ``hf-config:...``), or
            the class path for ``hf-class`` and ``module``.
        args: keyword arguments of the factory, or overrides of the transformers config
            (``--config`` merged under ``--arg``); nested dicts, never dotted keys.
        auto_class: the transformers class to build (``AutoModel``...), else ``architectures[0]``.
        config_object: a config object passed through the API (a factory's first positional
            argument, or a transformers config), when it is not a dict.
        module: the instance, for ``module`` and ``hf-class`` targets.
    """

    kind: TargetKind
    spec: str
    args: Mapping[str, Any] = field(default_factory=dict)
    auto_class: str | None = None
    config_object: Any = None
    module: Any = None

    @property
    def rebuildable(self) -> bool:
        """True when :func:`rebuild` can build it again with other settings."""
        return self.kind != "module"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in the manifest's ``metadata["target"]``."""
        return {
            "kind": self.kind,
            "spec": self.spec,
            "args": dict(self.args),
            "auto_class": self.auto_class,
        }


def target_spec(
    spec: str | Any,
    *,
    args: Mapping[str, Any] | Sequence[str] | None = None,
    config: str | os.PathLike[str] | Mapping[str, Any] | Any = None,
    auto_class: str | None = None,
) -> TargetSpec:
    """Resolve what the user named into a :class:`TargetSpec` (nothing is built or imported).

    Args:
        spec: ``pkg.module:callable``, ``path/to/file.py:callable``, ``hf-config:path``, a
            folder with ``config.json``, ``hf://org/repo``, an ``nn.Module``, or a TargetSpec.
        args: keyword arguments (a dict, dotted keys allowed) or ``["key=value", ...]``.
        config: a JSON file of keyword arguments, a dict, or a config object.
        auto_class: the transformers class to build.

    Raises:
        TargetError: the spec names no kind of target, or args/config are malformed.

    Example:
        >>> target_spec("fixtures.models:build_clip", args=["vision_cfg.width=64"]).args
        {'vision_cfg': {'width': 64}}
    """
    from ckptdiff.targets.hf import HF_PREFIX, looks_like_hf_config

    if isinstance(spec, TargetSpec):
        if args or config is not None or auto_class:
            merged = deep_merge(spec.args, _kwargs(args, config)[0])
            return dataclasses.replace(spec, args=merged, auto_class=auto_class or spec.auto_class)
        return spec
    kwargs, config_object = _kwargs(args, config)
    if not isinstance(spec, str):
        if _is_module(spec):
            if getattr(spec, "config", None) is not None and hasattr(spec, "base_model_prefix"):
                cls = type(spec)
                return TargetSpec(
                    "hf-class",
                    f"{cls.__module__}:{cls.__qualname__}",
                    kwargs,
                    config_object=spec.config,
                    module=spec,
                )
            cls = type(spec)
            return TargetSpec("module", f"{cls.__module__}:{cls.__qualname__}", module=spec)
        raise TargetError(
            f"Cannot build target {spec!r}: expected a string (pkg.module:callable, "
            f"hf-config:path) or an nn.Module, got {type(spec).__name__}."
        )
    if looks_like_hf_config(spec):
        return TargetSpec("hf-config", spec, kwargs, auto_class, config_object)
    if ":" in spec and not spec.startswith(HF_PREFIX):
        return TargetSpec("factory", spec, kwargs, auto_class, config_object)
    hint = ""
    if "." in spec and ":" not in spec and all(p.isidentifier() for p in spec.split(".")):
        module, _, name = spec.rpartition(".")
        hint = f" Did you mean {module}:{name}? (a colon separates the module from the callable)"
    raise TargetError(
        f"Cannot build '{spec}': expected pkg.module:callable, path/to/file.py:callable, "
        f"hf-config:path/config.json, or a folder holding a config.json.{hint}"
    )


def build_model(target: TargetSpec) -> nn.Module:
    """Build the target's model on the meta device (``module`` targets are returned as given).

    Raises:
        TargetError: the factory or config cannot be loaded, or building raised.
    """
    from ckptdiff.targets.meta import on_meta

    if target.module is not None:  # an instance is checked as it is, never rebuilt here
        return target.module  # type: ignore[no-any-return]
    if target.kind == "factory":
        fn = load_callable(target.spec)
        call_args = () if target.config_object is None else (target.config_object,)
        with on_meta():
            try:
                built = fn(*call_args, **target.args)
            except TargetError:
                raise
            except Exception as e:
                raise TargetError(
                    f"Cannot build '{target.spec}' (calling it on the meta device with "
                    f"{_describe(target.args)}): {type(e).__name__}: {e}."
                ) from e
        return as_module(built, target.spec)
    from ckptdiff.targets import hf

    if target.kind == "hf-class":
        cls = load_callable(target.spec)
        config = hf.load_config(target.spec, target.args, base=target.config_object)
        with on_meta(), hf.quiet_transformers():
            try:
                return cls._from_config(config)  # type: ignore[attr-defined, no-any-return]
            except Exception as e:
                raise TargetError(
                    f"Cannot build '{target.spec}' (from its config): {type(e).__name__}: {e}."
                ) from e
    config = hf.load_config(target.spec, target.args, base=target.config_object)
    with on_meta():
        return hf.build_model(target.spec, config, target.auto_class)  # type: ignore[no-any-return]


def build_target(
    spec: str | Any,
    *,
    args: Mapping[str, Any] | Sequence[str] | None = None,
    config: str | os.PathLike[str] | Mapping[str, Any] | Any = None,
    auto_class: str | None = None,
    evidence: Manifest | None = None,
) -> Manifest:
    """Build a target on meta and describe what loading into it expects.

    Args:
        spec: see :func:`target_spec`.
        args: factory keyword arguments / config overrides (dotted keys reach into dicts).
        config: a JSON file or dict of keyword arguments (under ``args``), or a config object.
        auto_class: the transformers class (``AutoModel``, ``AutoModelForCausalLM``...).
        evidence: the checkpoint the target is for: when a transformers config names no
            ``architectures`` and no ``auto_class`` is given, the class is chosen from it (a
            PEFT adapter's base class or task, else the head class its keys fit best), and a
            ``target_class`` finding says which and why.

    Returns:
        A ``meta-model`` :class:`Manifest`: state-dict keys with shapes and dtypes, buffers,
        tied groups, transformers' ignore rules, ``config`` (the resolved keyword arguments,
        or ``config.to_dict()``), and ``metadata["target"]`` (what :func:`rebuild` needs).
        A transformers config built before comes from the target cache
        (:mod:`ckptdiff.targets.cache`), without importing torch; :func:`rebuild` always builds.

    Raises:
        TargetError: the target cannot be resolved or built.

    Example:
        >>> m = build_target("fixtures.models:build_llama", args={"num_layers": 2})
        >>> m.tied
        (('model.embed_tokens.weight', 'lm_head.weight'),)
    """
    target = target_spec(spec, args=args, config=config, auto_class=auto_class)
    if evidence is not None and target.kind == "hf-config" and not target.auto_class:
        return _build_from_evidence(target, evidence)
    return _cached_build(target)


def _cached_build(target: TargetSpec) -> Manifest:
    from ckptdiff.targets import cache

    cached = cache.load(target)  # a transformers config built before: no torch import
    if cached is not None:
        return cached
    manifest = _manifest(target, build_model(target))
    cache.store(target, manifest)
    return manifest


def _names_architectures(target: TargetSpec) -> bool:
    """True when the config (with its overrides) names ``architectures``; read as JSON."""
    from ckptdiff.targets import hf

    if target.config_object is not None:
        return bool(getattr(target.config_object, "architectures", None))
    if target.args.get("architectures"):
        return True
    try:
        with open(hf.resolve_config_path(target.spec), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, TargetError):
        return False
    return isinstance(data, dict) and bool(data.get("architectures"))


def _build_from_evidence(target: TargetSpec, evidence: Manifest) -> Manifest:
    """A transformers target whose class, when its config names none, comes from evidence."""
    from ckptdiff.targets import hf
    from ckptdiff.targets.choose import choose_class, fit

    default = _cached_build(target)
    if _names_architectures(target):
        return default
    config = hf.load_config(target.spec, target.args, base=target.config_object)
    placed, unplaced, _missing = fit(evidence.tensors, default)
    if evidence.metadata.get("peft") is None and unplaced == 0:
        return default  # the default class places every tensor
    built: dict[str, tuple[TargetSpec, nn.Module]] = {}

    def build(name: str) -> Manifest:
        spec = dataclasses.replace(target, auto_class=name)
        model = build_model(spec)
        built[name] = (spec, model)
        return _manifest(spec, model)

    choice = choose_class(str(getattr(config, "model_type", "")), evidence, build, placed)
    if choice is None or choice.name == "AutoModel":
        return default
    spec, model = built.get(choice.name) or (
        dataclasses.replace(target, auto_class=choice.name),
        None,
    )
    if model is None:
        model = build_model(spec)
    manifest = _manifest(spec, model)
    chosen = dataclasses.replace(manifest, findings=(*manifest.findings, choice.finding()))
    _remember(chosen, model)
    return chosen


def rebuild(target: TargetSpec | Manifest, overrides: Mapping[str, Any]) -> Manifest:
    """Build a target again with changed settings, on meta.

    Args:
        target: the TargetSpec, or a manifest made by :func:`build_target`.
        overrides: settings to change; dotted keys reach into nested dicts
            (``{"vision_cfg.width": 1024}`` or ``{"text_config": {"vocab_size": 32001}}``).

    Raises:
        TargetError: the target cannot be rebuilt (an ``nn.Module`` instance has no config),
            or building with the overrides failed.
    """
    if isinstance(target, Manifest):
        target = _spec_from_manifest(target)
    if not target.rebuildable:
        raise TargetError(
            f"Cannot rebuild '{target.spec}': an nn.Module instance carries no config to "
            "change. Name the target by its factory or transformers config to verify fixes."
        )
    if target.kind == "hf-class":  # the instance's config is the base; drop the instance
        target = dataclasses.replace(target, module=None)
    changed = dataclasses.replace(target, args=deep_merge(target.args, overrides))
    return _manifest(changed, build_model(changed))


def _spec_from_manifest(manifest: Manifest) -> TargetSpec:
    info = manifest.metadata.get("target")
    if not isinstance(info, Mapping):
        raise TargetError(
            f"Cannot rebuild '{manifest.source}': the manifest was not made by build_target."
        )
    kind = info["kind"]
    config_object = dict(manifest.config or {}) if kind == "hf-class" else None
    return TargetSpec(
        kind, info["spec"], dict(info.get("args") or {}), info.get("auto_class"), config_object
    )


#: The meta model behind each transformers target manifest still alive (``id`` -> model):
#: its loader (the conversion mapping) is read from the model, without building it again.
_MODELS: dict[int, Any] = {}
_MODELS_LOCK = threading.Lock()


def _remember(manifest: Manifest, model: nn.Module) -> None:
    with _MODELS_LOCK:
        _MODELS[id(manifest)] = model
    weakref.finalize(manifest, _forget, id(manifest))


def _forget(key: int) -> None:
    with _MODELS_LOCK:
        _MODELS.pop(key, None)


def model_of(manifest: Manifest) -> nn.Module:
    """The model a target manifest describes, on meta: the one built for it, else rebuilt.

    Raises:
        TargetError: the manifest was not made by :func:`build_target`, or rebuilding failed.
    """
    with _MODELS_LOCK:
        model = _MODELS.get(id(manifest))
    if model is not None:
        return model  # type: ignore[no-any-return]
    model = build_model(_spec_from_manifest(manifest))
    _remember(manifest, model)
    return model


def _manifest(target: TargetSpec, model: nn.Module) -> Manifest:
    from ckptdiff.targets.module import manifest_from_module

    config: Mapping[str, Any] | None
    if target.kind == "factory":
        config = dict(target.args)
    elif target.kind in ("hf-config", "hf-class"):
        hf_config: Any = getattr(model, "config", None)
        config = hf_config.to_dict() if hasattr(hf_config, "to_dict") else None
    else:
        config = None
    metadata: dict[str, Any] = {"target": target.to_dict()}
    if target.kind in ("hf-config", "hf-class"):
        from ckptdiff.targets.conversions import PATTERNS_KEY, source_patterns

        try:
            metadata[PATTERNS_KEY] = source_patterns(model)
        except Exception:  # noqa: BLE001 - no patterns recorded: the view asks the model
            pass
    manifest = manifest_from_module(model, source=target.spec, config=config, metadata=metadata)
    if target.kind in ("hf-config", "hf-class"):
        _remember(manifest, model)
    if target.kind == "hf-config" and target.config_object is None:
        from ckptdiff.targets.hf import config_typos

        typos = config_typos(target.spec)
        if typos:
            manifest = dataclasses.replace(manifest, findings=(*manifest.findings, *typos))
            _remember(manifest, model)
    return manifest


def _kwargs(
    args: Mapping[str, Any] | Sequence[str] | None, config: Any
) -> tuple[dict[str, Any], Any]:
    """Merge ``config`` (file, dict) under ``args``; a non-dict config is passed through."""
    base: dict[str, Any] = {}
    config_object = None
    if isinstance(config, (str, os.PathLike)):
        base = load_config_file(config)
    elif isinstance(config, Mapping):
        base = dict(config)
    elif config is not None:
        config_object = config
    over: Mapping[str, Any]
    if args is None:
        over = {}
    elif isinstance(args, Mapping):
        over = args
    else:
        over = parse_arg_assignments([args] if isinstance(args, str) else args)
    return deep_merge(base, over), config_object


def _is_module(obj: Any) -> bool:
    try:
        from torch import nn
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(obj, nn.Module)


def _describe(args: Mapping[str, Any]) -> str:
    return f"arguments {', '.join(sorted(args))}" if args else "no arguments"
