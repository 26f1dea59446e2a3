"""Build any model on torch's ``meta`` device: no parameter memory, no weight-init time.

``with torch.device("meta")`` alone is not enough for real factories: they create tensors
with an explicit ``device="cpu"``, call ``.to(device)``, ``.cuda()`` or ``.cpu()`` (which fail
on meta tensors), and run ``torch.nn.init`` functions. :func:`on_meta` adds, for the duration
of the build only:

- a torch-function mode above the ``meta`` device context that
  - creates every sized tensor (``empty``, ``zeros``, ``randn``...) on meta, whatever device
    the call names;
  - keeps small value tensors (``arange``, ``linspace``, ``tensor``...) real on CPU, so that
    code reading values while building (``[x.item() for x in torch.linspace(0, p, depth)]``)
    still runs; they move to meta when registered on a module;
  - turns ``.to(device)``, ``.cuda()``, ``.cpu()`` of a meta tensor into a no-op (a dtype
    change is kept), and moves real tensors bound for an accelerator to meta;
  - moves CPU operands to meta when an operation mixes both;
- ``nn.Module.register_parameter`` / ``register_buffer`` that move real tensors to meta (one
  meta tensor per real one, so tied weights stay tied);
- the in-place ``torch.nn.init`` functions replaced by no-ops;
- ``torch.get_default_device()`` answering ``meta``;
- ``torch.load`` mapping every tensor to meta, for constructors that load their own weights.

Everything is restored on exit, also when the build raises.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = ["on_meta", "INIT_FUNCTIONS"]

META = torch.device("meta")

#: In-place initialisers of ``torch.nn.init`` made no-ops while building.
INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)

#: Constructors whose result is a value rather than storage: kept real (on CPU) unless the
#: call asks for meta. They are small (index ranges, schedules, literals).
_VALUE_CONSTRUCTORS = frozenset(
    {
        torch.arange,
        torch.range,
        torch.linspace,
        torch.logspace,
        torch.tensor,
        torch.as_tensor,
        torch.asarray,
        torch.scalar_tensor,
        torch.tril_indices,
        torch.triu_indices,
    }
)

_LIKE_CONSTRUCTORS = frozenset(
    {
        torch.empty_like,
        torch.zeros_like,
        torch.ones_like,
        torch.full_like,
        torch.rand_like,
        torch.randn_like,
        torch.randint_like,
    }
)

_MOVES = frozenset({torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu})
_ACCELERATOR_MOVES = tuple(
    getattr(torch.Tensor, name)
    for name in ("xpu", "mps", "ipu", "hpu")
    if hasattr(torch.Tensor, name)
)


@functools.lru_cache(1)
def _sized_constructors() -> frozenset[Callable[..., Any]]:
    """Every constructor that takes a ``device`` (torch's own list), minus the value ones."""
    try:
        from torch.utils._device import _device_constructors

        known = set(_device_constructors())
    except ImportError:  # pragma: no cover - torch moved its private list
        known = {
            torch.empty,
            torch.zeros,
            torch.ones,
            torch.full,
            torch.rand,
            torch.randn,
            torch.randint,
            torch.randperm,
            torch.eye,
            torch.empty_strided,
        }
    return frozenset(known - _VALUE_CONSTRUCTORS)


def _is_meta(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "meta"


def _is_real(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type != "meta"


class _MetaGuard(TorchFunctionMode):
    """The torch-function mode described in the module docstring."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in _sized_constructors() or func in _LIKE_CONSTRUCTORS:
            kwargs["device"] = META
            kwargs.pop("pin_memory", None)
            return func(*args, **kwargs)
        if func in _VALUE_CONSTRUCTORS:
            device = kwargs.get("device")
            if device is not None and torch.device(device).type not in ("cpu", "meta"):
                kwargs["device"] = META
            elif device is None:
                kwargs["device"] = "cpu"
            return func(*args, **kwargs)
        if func in _MOVES or func in _ACCELERATOR_MOVES:
            return self._move(func, args, kwargs)
        if func is torch.Tensor.pin_memory and args and _is_meta(args[0]):
            return args[0]
        flat, spec = pytree.tree_flatten((args, kwargs))
        if any(_is_meta(x) for x in flat) and any(_is_real(x) for x in flat):
            # "meta wins": a real operand meeting a meta one moves to meta, except a real
            # tensor written in place, which cannot move (that call then fails as it would).
            keep = flat[0] if _writes_first(func) else None
            flat = [x.to(META) if _is_real(x) and x is not keep else x for x in flat]
            args, kwargs = pytree.tree_unflatten(flat, spec)
        return func(*args, **kwargs)

    @staticmethod
    def _move(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``t.to(...)``, ``t.cuda()``, ``t.cpu()``: meta stays meta, accelerators become meta."""
        tensor = args[0]
        if func is torch.Tensor.to:
            device, dtype, _non_blocking, _memory_format = torch._C._nn._parse_to(
                *args[1:], **kwargs
            )
        elif func is torch.Tensor.cpu:
            device, dtype = torch.device("cpu"), None
        else:
            device, dtype = META, None
        if device is not None and device.type not in ("cpu", "meta"):
            device = META
        if tensor.device.type == "meta" or device == META:
            out = tensor if tensor.device.type == "meta" else tensor.to(META)
            return out.to(dtype) if dtype is not None else out
        return func(*args, **kwargs)


def _writes_first(func: Callable[..., Any]) -> bool:
    """True for in-place calls (``add_``, ``__setitem__``, ``__iadd__``...)."""
    name = getattr(func, "__name__", "")
    if name.startswith("__"):
        return name == "__setitem__" or name.startswith("__i")
    return name.endswith("_")


def _load_on_meta(load: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.load`` for constructors that load their own weights (LPIPS ``pretrained=True``,
    resemblyzer's ``VoiceEncoder()``): the tensors come back on meta (shapes only), so
    ``load_state_dict`` into the meta model works; a load that still fails says which call."""

    @functools.wraps(load)
    def load_on_meta(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["map_location"] = META
        try:
            return load(f, *args, **kwargs)
        except Exception as e:
            path_like = isinstance(f, (str, bytes)) or hasattr(f, "__fspath__")
            name = f if path_like else type(f).__name__
            raise RuntimeError(
                f"torch.load({str(name)!r}) inside the model's constructor failed on the meta "
                f"device: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e

    return load_on_meta


def _noop_init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = obj.__dict__[name] if name in obj.__dict__ else getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _registration_patches(stack: contextlib.ExitStack) -> None:
    """Make ``register_parameter`` / ``register_buffer`` move real tensors to meta."""
    moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def to_meta(tensor: torch.Tensor) -> torch.Tensor:
        hit = moved.get(id(tensor))
        if hit is not None and hit[0] is tensor:
            return hit[1]
        if isinstance(tensor, nn.Parameter):
            meta: torch.Tensor = type(tensor)(
                tensor.data.to(META), requires_grad=tensor.requires_grad
            )
            meta.__dict__.update(tensor.__dict__)
        else:
            meta = tensor.to(META)
        moved[id(tensor)] = (tensor, meta)  # keep `tensor` alive so its id is not reused
        return meta

    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def register_parameter_on_meta(module: nn.Module, name: str, param: Any) -> None:
        if _is_real(param):
            param = to_meta(param)
        register_parameter(module, name, param)

    def register_buffer_on_meta(
        module: nn.Module, name: str, tensor: Any, persistent: bool = True
    ) -> None:
        if _is_real(tensor):
            tensor = to_meta(tensor)
        register_buffer(module, name, tensor, persistent=persistent)

    stack.enter_context(_patched(nn.Module, "register_parameter", register_parameter_on_meta))
    stack.enter_context(_patched(nn.Module, "register_buffer", register_buffer_on_meta))


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build models inside this block on the meta device, whatever the factory does.

    Example:
        >>> with on_meta():  # doctest: +SKIP
        ...     model = build_clip(**VIT_L_14).to("cuda").half()
        >>> next(model.parameters()).device  # doctest: +SKIP
        device(type='meta')
    """
    with contextlib.ExitStack() as stack:
        for name in INIT_FUNCTIONS:
            if hasattr(nn.init, name):
                stack.enter_context(_patched(nn.init, name, _noop_init))
        _registration_patches(stack)
        stack.enter_context(_patched(torch, "load", _load_on_meta(torch.load)))
        # torch answers from `torch.tensor([]).device`, a value tensor kept on CPU here
        stack.enter_context(_patched(torch, "get_default_device", lambda: META))
        stack.enter_context(torch.device(META))
        stack.enter_context(_MetaGuard())
        yield
