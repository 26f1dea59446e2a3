"""The oracle: transformers itself, on torch's meta device. Nothing here imports ckptdiff.

A model is built with its own class from a config on ``meta`` (no memory, no init), and its
``state_dict()`` gives the keys, shapes and dtypes a checkpoint of it holds.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

Shapes = dict[str, tuple[tuple[int, ...], str]]

__all__ = [
    "Shapes",
    "BuildError",
    "build_config",
    "build_factory_shapes",
    "build_model",
    "build_shapes",
    "deep_merge",
    "get_path",
    "model_class",
    "quiet",
    "set_path",
    "shapes_of",
    "time_limit",
]


class BuildError(Exception):
    """A config or model that transformers refuses to build; the message says why."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """transformers' own logging and Python warnings silenced for the duration."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(level)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`BuildError` when the block runs longer than ``seconds`` (main thread only)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise BuildError(f"took more than {seconds:g} s")

    try:
        previous = signal.signal(signal.SIGALRM, expired)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def get_path(obj: Any, path: str) -> Any:
    """``text_config.vocab_size`` read from a config object or a dict (KeyError if absent)."""
    for part in path.split("."):
        if isinstance(obj, Mapping):
            obj = obj[part]
        elif hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise KeyError(path)
    return obj


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``text_config.vocab_size`` in a nested dict, creating levels as needed."""
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = data.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            data[part] = nxt
        data = nxt
    data[parts[-1]] = value


def model_class(name: str) -> Any:
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None:
        raise BuildError(f"transformers has no class {name}")
    return cls


def build_config(data: Mapping[str, Any]) -> Any:
    """The config object of a ``config.json`` dict, as ``from_pretrained`` reads it."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = data.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise BuildError(f"unknown model_type {model_type!r}")
    try:
        with quiet():
            return CONFIG_MAPPING[model_type].from_dict(dict(data))
    except BuildError:
        raise
    except Exception as e:
        raise BuildError(f"config: {type(e).__name__}: {_first_line(e)}") from e


def build_model(class_name: str, data: Mapping[str, Any], timeout: float = 60.0) -> Any:
    """``class_name`` built from the config dict ``data`` on meta.

    Raises:
        BuildError: the config or the model does not build (the reason in the message).
    """
    import torch

    cls = model_class(class_name)
    config = build_config(data)
    try:
        with quiet(), time_limit(timeout), torch.device("meta"):
            return cls._from_config(config)
    except BuildError:
        raise
    except Exception as e:
        raise BuildError(f"model: {type(e).__name__}: {_first_line(e)}") from e


def shapes_of(model: Any) -> Shapes:
    """``{key: (shape, dtype)}`` of ``model.state_dict()``."""
    return {
        key: (tuple(int(n) for n in t.shape), str(t.dtype).removeprefix("torch."))
        for key, t in model.state_dict().items()
    }


def build_shapes(class_name: str, data: Mapping[str, Any], timeout: float = 60.0) -> Shapes:
    """``{key: (shape, dtype)}`` of the ``state_dict()`` of ``class_name`` built from ``data``.

    Raises:
        BuildError: the config or the model does not build (the reason in the message).
    """
    return shapes_of(build_model(class_name, data, timeout))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def build_factory_shapes(spec: str, kwargs: Mapping[str, Any], timeout: float = 60.0) -> Shapes:
    """``state_dict()`` shapes of ``pkg.module:callable(**kwargs)`` built on meta.

    The factory is called inside ``torch.device("meta")`` with ``device="meta"`` where it takes
    a device (as open_clip's ``create_model`` does), so its final ``.to(device)`` stays there.

    Raises:
        BuildError: the factory refuses the arguments (the reason in the message).
    """
    import importlib
    import inspect

    import torch

    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    kwargs = dict(kwargs)
    if "device" in inspect.signature(factory).parameters:
        kwargs["device"] = "meta"
    try:
        with quiet(), time_limit(timeout), torch.device("meta"):
            model = factory(**kwargs)
    except BuildError:
        raise
    except Exception as e:
        raise BuildError(f"model: {type(e).__name__}: {_first_line(e)}") from e
    return shapes_of(model)
