"""transformers configs as targets (extra ``hf``): ``hf-config:path``, a folder, ``hf://org/repo``.

The config is read as JSON, overrides are merged into it (dotted keys reach into sub-configs:
``text_config.vocab_size``), and the model class comes from ``--auto-class`` or the config's
``architectures[0]`` (``AutoModel`` when it names none). Only ``config.json`` is ever fetched
from the hub; no repository code is run (:mod:`ckptdiff.targets.hf_safety` refuses a config
that needs it, or sizes no real model has).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ckptdiff.errors import TargetError
from ckptdiff.hf_files import is_hf_config
from ckptdiff.targets.factory import deep_merge
from ckptdiff.targets.hf_safety import check_sizes, refuse_remote_code, remote_code_message
from ckptdiff.terminal import printable

__all__ = [
    "HF_PREFIX",
    "build_model",
    "config_typos",
    "import_transformers",
    "load_config",
    "looks_like_hf_config",
    "model_class_name",
    "quiet_transformers",
    "resolve_config_path",
    "unknown_fields",
]

HF_PREFIX = "hf-config:"
HUB_PREFIXES = ("hf://", "https://huggingface.co/")
INSTALL_HINT = "Install the extra: pip install 'ckptdiff[hf]'."


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own warnings (config validation...) while building a target."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def import_transformers(spec: str) -> Any:
    """Import transformers, or say how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise TargetError(
            f"Cannot build '{spec}': building a transformers config needs transformers, which "
            f"is not installed. {INSTALL_HINT}"
        ) from e
    return transformers


def looks_like_hf_config(spec: str) -> bool:
    """True for ``hf-config:...``, hub sources, a folder with ``config.json``, or a JSON file
    that names a ``model_type`` or ``architectures``."""
    if spec.startswith(HF_PREFIX) or spec.startswith(HUB_PREFIXES):
        return True
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "config.json"))
    if path.endswith(".json") and os.path.isfile(path):
        return is_hf_config(path)
    return False


def resolve_config_path(spec: str) -> str:
    """The local ``config.json`` a spec names (downloading only that file for hub specs).

    Raises:
        TargetError: no such file or folder, or the hub could not give the file.
    """
    body = spec.removeprefix(HF_PREFIX)
    if body.startswith(HUB_PREFIXES):
        return _hub_config(spec, body)
    path = os.path.expanduser(body)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise TargetError(
            f"Cannot build '{spec}': no such config file '{path}'. Name a config.json or a "
            "folder holding one."
        )
    return path


def _hub_config(spec: str, body: str) -> str:
    rest = body.removeprefix("hf://").removeprefix("https://huggingface.co/").strip("/")
    parts = rest.split("/")
    if len(parts) < 2:
        raise TargetError(f"Cannot build '{spec}': expected hf://org/repo[@revision][/subfolder].")
    repo = f"{parts[0]}/{parts[1]}"
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    subfolder = "/".join(parts[2:]) or None
    try:
        from huggingface_hub import hf_hub_download

        return str(hf_hub_download(repo, "config.json", revision=revision, subfolder=subfolder))
    except Exception as e:
        raise TargetError(
            f"Cannot build '{spec}' (fetching config.json from {repo}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Check the repo name, your token and "
            "HF_HUB_OFFLINE, or pass a local config: hf-config:path/config.json."
        ) from e


def load_config(spec: str, overrides: Mapping[str, Any] | None = None, base: Any = None) -> Any:
    """The transformers config of ``spec`` (or of the config object ``base``) with overrides.

    Raises:
        TargetError: not JSON, no known ``model_type``, or a config that needs repo code.
    """
    transformers = import_transformers(spec)
    if base is not None:
        data = base.to_dict() if hasattr(base, "to_dict") else dict(base)
    else:
        path = resolve_config_path(spec)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError, RecursionError) as e:
            raise TargetError(f"Cannot read '{path}' (target config): not valid JSON ({e}).") from e
        if not isinstance(data, dict):
            raise TargetError(f"Cannot read '{path}' (target config): not a JSON object.")
    original = data
    data = deep_merge(data, overrides or {})
    model_type = data.get("model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(model_type, str) or not model_type:
        raise TargetError(
            f"Cannot build '{spec}': the config names no model_type, so transformers cannot "
            'tell which config class it is. Add "model_type" (bert, llama, clip...).'
        )
    if model_type not in CONFIG_MAPPING:
        if data.get("auto_map"):
            raise TargetError(remote_code_message(spec, data.get("auto_map"), None))
        raise TargetError(
            f"Cannot build '{spec}': transformers {transformers.__version__} knows no "
            f"model_type {printable(repr(model_type))}. Upgrade transformers, or use a Python "
            "factory target (pkg.module:callable)."
        )
    check_sizes(spec, data)
    config_class = CONFIG_MAPPING[model_type]
    unknown = unknown_fields(config_class, original, overrides or {})
    if unknown:
        raise TargetError(
            f"Cannot build '{spec}': "
            + "; ".join(
                f"unknown config field '{path}' for {cls_name}"
                + (f" (did you mean {close}?)" if close else "")
                for path, cls_name, close in unknown
            )
            + ". --arg and --config keys must be fields of the config class (dotted paths reach "
            "into sub-configs: text_config.vocab_size)."
        )
    try:
        with quiet_transformers():
            return config_class.from_dict(data)
    except Exception as e:
        raise TargetError(
            f"Cannot build '{spec}' (config of model_type {model_type!r}): {type(e).__name__}: {e}."
        ) from e


def completed_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as its transformers config class completes it (``to_dict`` of the object:
    defaults and derived fields filled in).

    Raises:
        TargetError: no known ``model_type``; the class's own errors otherwise.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise TargetError(f"no config class for model_type {printable(repr(model_type))}")
    with quiet_transformers():
        done: dict[str, Any] = CONFIG_MAPPING[model_type].from_dict(dict(data)).to_dict()
    return done


def unknown_fields(
    config_class: Any, data: Mapping[str, Any], overrides: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, str, str | None]]:
    """The overrides that name no field of ``config_class`` (nor a key ``data`` already has).

    A field is a key of the class's default ``to_dict()``, a parameter of its ``__init__``, an
    ``attribute_map`` alias (GPT-2's ``hidden_size``), a public property (``num_labels``) or a
    legacy keyword its ``__init__`` still reads from ``kwargs`` (``rope_theta``).
    Nested overrides are checked against the sub-config's class (``text_config.vocab_size``);
    other dict-valued fields (``label2id``, ``rope_parameters``) take any key.

    Returns:
        ``(dotted path, config class name, closest known path or None)`` per unknown field.
    """
    known = set(_field_names(config_class)) | set(data)
    subs = _sub_config_classes(config_class, data)
    out: list[tuple[str, str, str | None]] = []
    for key, value in overrides.items():
        path = prefix + str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            out.append((path, config_class.__name__, prefix + close[0] if close else None))
            continue
        if isinstance(value, Mapping) and key in subs:
            sub_data = data.get(key)
            out += unknown_fields(
                subs[key], sub_data if isinstance(sub_data, Mapping) else {}, value, path + "."
            )
    return out


@functools.lru_cache(maxsize=64)
def _field_names(config_class: Any) -> frozenset[str]:
    names: set[str] = set()
    with contextlib.suppress(Exception), quiet_transformers():
        names.update(config_class().to_dict())
    with contextlib.suppress(TypeError, ValueError):
        names.update(
            n
            for n, p in inspect.signature(config_class.__init__).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )
    names.update(getattr(config_class, "attribute_map", None) or {})
    names.update(
        n
        for n, v in inspect.getmembers(config_class, lambda v: isinstance(v, property))
        if not n.startswith("_")
    )
    for cls in config_class.__mro__:  # legacy keys an __init__ still takes: rope_theta
        with contextlib.suppress(OSError, TypeError):
            names.update(
                n for n in _KWARGS_READ.findall(inspect.getsource(cls)) if not n.startswith("_")
            )
    return frozenset(names)


_KWARGS_READ = re.compile(r"kwargs\.(?:pop|get)\(\s*[\"'](\w+)[\"']")


def _sub_config_classes(config_class: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """``{field: config class}`` of the sub-configs (``text_config``...) of ``config_class``."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    declared = dict(getattr(config_class, "sub_configs", None) or {})
    out: dict[str, Any] = {}
    for name in set(declared) | {k for k, v in data.items() if isinstance(v, Mapping)}:
        value = data.get(name)
        model_type = value.get("model_type") if isinstance(value, Mapping) else None
        if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
            out[name] = CONFIG_MAPPING[model_type]
            continue
        cls = declared.get(name)
        if isinstance(cls, type) and issubclass(cls, PretrainedConfig) and cls.model_type:
            out[name] = cls
            continue
        default = _default_sub_config(config_class, name)
        if default is not None:
            out[name] = default
    return out


def _default_sub_config(config_class: Any, name: str) -> Any:
    from transformers import PretrainedConfig

    try:
        with quiet_transformers():
            value = getattr(config_class(), name, None)
    except Exception:
        return None
    return type(value) if isinstance(value, PretrainedConfig) else None


def config_typos(spec: str) -> list[Any]:
    """Findings for ``config.json`` keys that look like a misspelt field (``hiden_size``).

    transformers accepts unknown keys silently (they become attributes nobody reads), so a
    typo leaves the field at its default. A key is reported when it names no field of the
    config class (or of the sub-config it sits in) while a field of that spelling, give or take
    a few letters, is absent from the file.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from ckptdiff.types import Finding

    if spec.startswith(HUB_PREFIXES) or spec.removeprefix(HF_PREFIX).startswith(HUB_PREFIXES):
        path = resolve_config_path(spec)  # already fetched: served from the cache
    else:
        try:
            path = resolve_config_path(spec)
        except TargetError:
            return []
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return []
    out = []
    for path_, cls_name, close in _typos(CONFIG_MAPPING[model_type], data):
        out.append(
            Finding(
                "config_unknown_field",
                f"config.json sets '{path_}', which {cls_name} has no field for (did you mean "
                f"'{close}'?): transformers keeps it as an unused attribute, so '{close}' "
                "stays at its default.",
                (path_,),
                "warning",
                {"field": path_, "did_you_mean": close, "config_class": cls_name},
            )
        )
    return out


def _typos(
    config_class: Any, data: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, str, str]]:
    known = _field_names(config_class)
    subs = _sub_config_classes(config_class, data)
    out: list[tuple[str, str, str]] = []
    for key, value in data.items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if key in known:
            if isinstance(value, Mapping) and key in subs:
                out += _typos(subs[key], value, f"{prefix}{key}.")
            continue
        absent = sorted(n for n in known if n not in data)
        close = difflib.get_close_matches(key, absent, n=1, cutoff=0.85)
        if close:
            out.append((prefix + key, config_class.__name__, prefix + close[0]))
    return out


def model_class_name(config: Any, auto_class: str | None) -> str:
    """The class to build: ``auto_class``, else ``architectures[0]``, else ``AutoModel``."""
    if auto_class:
        return auto_class
    architectures = getattr(config, "architectures", None) or []
    return str(architectures[0]) if architectures else "AutoModel"


def build_model(spec: str, config: Any, auto_class: str | None = None) -> Any:
    """Instantiate the model of ``config`` (call inside :func:`~ckptdiff.targets.meta.on_meta`).

    ``auto_class`` is an auto class (``AutoModel``, ``AutoModelForCausalLM``) or a model class
    name (``BertForSequenceClassification``).

    Raises:
        TargetError: transformers has no such class, or building failed.
    """
    transformers = import_transformers(spec)
    name = model_class_name(config, auto_class)
    cls = getattr(transformers, name, None) if name.isidentifier() else None
    if cls is None:
        origin = "--auto-class" if auto_class else "the config's architectures[0]"
        close = _close_class_names(transformers, name)
        hint = (
            f"Did you mean {' or '.join(close)}?"
            if close
            else "Pass --auto-class AutoModel (or AutoModelForCausalLM, ...)."
        )
        raise TargetError(
            f"Cannot build '{spec}': transformers {transformers.__version__} has no class "
            f"{name!r} ({origin}). {hint}"
        )
    config = _sub_config_for(cls, config)
    refuse_remote_code(spec, cls, name, config)
    try:
        with quiet_transformers():
            if name.startswith("Auto") and hasattr(cls, "from_config"):
                return cls.from_config(config, trust_remote_code=False)
            return cls._from_config(config)
    except Exception as e:
        raise TargetError(
            f"Cannot build '{spec}' ({name} from its config): {type(e).__name__}: {e}."
        ) from e


def _close_class_names(transformers: Any, name: str) -> list[str]:
    """transformers' class names that ``name`` is likely a misspelling of: the same name in
    other case first (``ChineseClipModel`` -> ``ChineseCLIPModel``), else close matches."""
    import difflib

    names = [n for n in dir(transformers) if n[:1].isupper()]
    same_case = [n for n in names if n.lower() == name.lower()]
    if same_case:
        return same_case[:1]
    return difflib.get_close_matches(name, names, n=2, cutoff=0.85)


def _sub_config_for(cls: Any, config: Any) -> Any:
    """The part of a composite config a tower class takes, as ``from_pretrained`` does.

    ``CLIPVisionModel`` given a ``CLIPConfig`` builds from its ``vision_config``.
    """
    config_class = getattr(cls, "config_class", None)
    if not isinstance(config_class, type) or isinstance(config, config_class):
        return config
    key = getattr(config_class, "base_config_key", None)
    sub = getattr(config, key, None) if isinstance(key, str) and key else None
    return sub if isinstance(sub, config_class) else config
