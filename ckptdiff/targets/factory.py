"""Python factories as targets: ``pkg.module:callable`` or ``path/to/file.py:callable``.

Pure Python (no torch import until a model is checked): loading the callable, the
``--arg key=value`` / ``--config cfg.json`` plumbing that builds its keyword arguments, and
the model taken from what it returned.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ckptdiff.errors import TargetError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "as_module",
    "deep_merge",
    "load_callable",
    "load_config_file",
    "parse_arg_assignments",
    "parse_value",
    "set_dotted",
]

_PY_LITERALS = {"None": None, "True": True, "False": False}


def parse_value(text: str) -> Any:
    """The value of ``--arg key=VALUE``: JSON where it parses, else the string itself.

    Example:
        >>> parse_value("1024"), parse_value("[1, 2]"), parse_value("ViT-B-16"), parse_value("None")
        (1024, [1, 2], 'ViT-B-16', None)
    """
    if text in _PY_LITERALS:
        return _PY_LITERALS[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``target["a"]["b"] = value`` for ``dotted="a.b"``, creating dicts on the way.

    Raises:
        TargetError: a part of the path is a value, not a dict (``width.x`` with ``width=768``).
    """
    parts = dotted.split(".")
    if not all(parts):
        raise TargetError(f"Cannot use --arg '{dotted}': empty name in the dotted key.")
    node = target
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, Mapping) and not isinstance(child, dict):
            child = node[part] = dict(child)
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise TargetError(
                f"Cannot use --arg '{dotted}': '{where}' is {child!r}, not a dict of settings."
            )
        node = child
    node[parts[-1]] = value


def dotted_leaves(config: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` of every non-mapping value in a nested config.

    Example:
        >>> list(dotted_leaves({"vision_cfg": {"width": 768}, "embed_dim": 512}))
        [('vision_cfg.width', 768), ('embed_dim', 512)]
    """
    for k, v in config.items():
        dotted = f"{path}.{k}" if path else str(k)
        if isinstance(v, Mapping):
            yield from dotted_leaves(v, dotted)
        else:
            yield dotted, v


def parse_arg_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """Turn ``["vision_cfg.width=1024", "embed_dim=768"]`` into nested keyword arguments.

    Raises:
        TargetError: an item has no ``=``.

    Example:
        >>> parse_arg_assignments(["vision_cfg.width=1024", "embed_dim=768"])
        {'vision_cfg': {'width': 1024}, 'embed_dim': 768}
    """
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TargetError(
                f"Cannot use --arg '{item}': expected KEY=VALUE, e.g. vision_cfg.width=1024."
            )
        set_dotted(out, key.strip(), parse_value(raw))
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``over``, recursing into dicts present on both sides.

    Keys of ``over`` may be dotted (``"vision_cfg.width"``); they reach into nested dicts.
    Neither argument is modified.
    """
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if "." in key:
            nested: dict[str, Any] = {}
            set_dotted(nested, key, copy.deepcopy(value))
            out = deep_merge(out, nested)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``--config cfg.json``: a JSON object of keyword arguments.

    Raises:
        TargetError: no such file, not JSON, or not a JSON object.
    """
    name = os.fspath(path)
    try:
        with open(os.path.expanduser(name), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise TargetError(f"Cannot read '{name}' (--config): no such file.") from e
    except (OSError, ValueError) as e:
        raise TargetError(f"Cannot read '{name}' (--config): not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise TargetError(
            f"Cannot read '{name}' (--config): expected a JSON object of keyword arguments, "
            f"found {type(data).__name__}."
        )
    return data


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``pkg.module:callable`` or ``path/to/file.py:callable`` (``Class.method`` works).

    A file's folder is put on ``sys.path`` while it is imported, so it can import its siblings.

    Raises:
        TargetError: no ``:``, the module does not import, or the name is not in it.
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise TargetError(
            f"Cannot build '{spec}': expected pkg.module:callable or path/to/file.py:callable."
        )
    module = _import_file(where, spec) if where.endswith(".py") else _import_module(where, spec)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise TargetError(f"Cannot build '{spec}': '{where}' has no attribute '{name}'.{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TargetError(f"Cannot build '{spec}': '{name}' is {type(obj).__name__}, not callable.")
    return obj  # type: ignore[no-any-return]


def as_module(built: Any, spec: str) -> nn.Module:
    """The model a factory returned: the ``nn.Module`` itself, or the first item of a tuple
    (``(model, preprocess, ...)`` as open_clip's ``create_model_and_transforms`` returns).

    Raises:
        TargetError: ``built`` holds no ``nn.Module``.
    """
    from torch import nn

    if isinstance(built, (tuple, list)) and built and isinstance(built[0], nn.Module):
        built = built[0]  # (model, preprocess, ...) as open_clip's create_model_and_transforms
    if not isinstance(built, nn.Module):
        raise TargetError(
            f"Cannot build '{spec}': it returned {type(built).__name__}, not an nn.Module."
        )
    return built


def _import_module(name: str, spec: str) -> Any:
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:  # `python -m` puts the working folder first; a console script does not
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise TargetError(
            f"Cannot build '{spec}' (import {name}): {e}. Check the module path and that its "
            "package is installed, or name a file: path/to/file.py:callable."
        ) from e
    except Exception as e:
        raise TargetError(
            f"Cannot build '{spec}' (import {name}): importing it raised {type(e).__name__}: {e}."
        ) from e
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _import_file(path: str, spec: str) -> Any:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise TargetError(f"Cannot build '{spec}': no such file '{path}'.")
    stem = os.path.splitext(os.path.basename(full))[0]
    digest = hashlib.sha1(full.encode()).hexdigest()[:8]
    name = f"_ckptdiff_target_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, full)
    if module_spec is None or module_spec.loader is None:  # pragma: no cover - .py always loads
        raise TargetError(f"Cannot build '{spec}': '{path}' cannot be imported.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look themselves up here
    folder = os.path.dirname(full)
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise TargetError(
            f"Cannot build '{spec}' (import {path}): importing it raised {type(e).__name__}: {e}."
        ) from e
    finally:
        sys.path.remove(folder)
    return module
