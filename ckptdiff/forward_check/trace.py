"""Watch one forward pass: which module is running, which op failed on which shapes, and which
inputs reach an embedding's rows or a loss's classes.

:class:`Tracer` is a torch-function mode (it sees every ``torch.*``, ``Tensor.*`` and
``torch.nn.functional.*`` call at the level the model's code makes it) plus forward hooks
that keep the path of the module being run. Nothing here changes what the model computes.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils import _pytree as pytree

from ckptdiff.forward_check.bounds import Bounds

__all__ = ["DATA_DEPENDENT", "IndexUse", "OpFailure", "Tracer", "shape_of"]

try:  # torch's exceptions for "the answer depends on values" or "fake tensors cannot run it"
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException,
        DynamicOutputShapeException,
        UnsupportedFakeTensorException,
        UnsupportedOperatorException,
    )
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    DATA_DEPENDENT: tuple[type[BaseException], ...] = (
        DataDependentOutputException,
        DynamicOutputShapeException,
        GuardOnDataDependentSymNode,
        UnsupportedFakeTensorException,
        UnsupportedOperatorException,
    )
except ImportError:  # pragma: no cover - torch moved them
    DATA_DEPENDENT = ()

#: Ops whose integer result holds (a subset of) the values of their integer operand, so that
#: ids sliced, reshaped or masked on the way to an embedding still count as the input's.
_VALUE_PRESERVING = frozenset(
    "__getitem__ view reshape flatten unflatten contiguous clone to long int detach narrow "
    "select unsqueeze squeeze expand expand_as repeat cat concat concatenate stack roll "
    "transpose permute masked_fill where flip chunk split unbind movedim t type pad view_as "
    "float half bfloat16 log_softmax".split()
)
_BUILTIN_ARGS: dict[str, list[str]] = {
    **{op: ["tensors"] for op in ("cat", "concat", "concatenate", "stack", "hstack", "vstack")},
    **{op: ["input", "weight", "bias"] for op in ("linear", "conv1d", "conv2d", "conv3d")},
    **{op: ["input", "other"] for op in ("matmul", "mm", "bmm", "add", "sub", "mul", "div")},
    "baddbmm": ["input", "batch1", "batch2"],
    "__matmul__": ["self", "other"],
    "scaled_dot_product_attention": ["query", "key", "value", "attn_mask"],
}
_EMBEDDING = "torch.nn.functional.embedding"
_LOSSES = frozenset({"torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss"})


def shape_of(t: torch.Tensor) -> tuple[int, ...]:
    """The shape as plain ints."""
    return tuple(int(d) for d in t.shape)


@dataclass(frozen=True)
class OpFailure:
    """The first torch call that raised, and where.

    Attributes:
        op: the call as torch names it (``torch.nn.functional.multi_head_attention_forward``).
        module: the path of the innermost module running (``""``: the root).
        operands: ``(argument name, shape, dtype)`` of each tensor operand.
    """

    op: str
    module: str
    operands: tuple[tuple[str, tuple[int, ...], str], ...]


@dataclass(frozen=True)
class IndexUse:
    """An input whose values index a table: an embedding's rows or a loss's classes.

    Attributes:
        input: the input's name.
        kind: ``embedding`` or ``loss``.
        limit: rows of the embedding, or classes of the loss's input.
        module: the module that made the call.
        ignore_index: the loss's ignored label (``-100``), or None.
        producer: for a loss, the module whose output the class scores came from.
    """

    input: str
    kind: str
    limit: int
    module: str
    ignore_index: int | None = None
    producer: str | None = None


@dataclass(eq=False)
class Tracer(TorchFunctionMode):
    """Record the running module's path, the first failing op, and index uses of the inputs.

    Use as ``with Tracer(model, {id(t): name}) as tr: model(**inputs)``; hooks are installed on
    enter and removed on exit.
    """

    model: nn.Module
    origins: dict[int, str]
    stack: list[str] = field(default_factory=list)
    failure: OpFailure | None = None
    uses: list[IndexUse] = field(default_factory=list)
    producers: dict[int, str] = field(default_factory=dict)
    bounds: Bounds | None = None
    _keep: list[Any] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    # --- module paths --------------------------------------------------------------------------

    def __enter__(self) -> Tracer:
        names: dict[int, str] = {}
        for name, module in self.model.named_modules(remove_duplicate=False):
            names.setdefault(id(module), name)
        seen: set[int] = set()
        for module in self.model.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            path = names[id(module)]
            self._handles.append(module.register_forward_pre_hook(self._enter_module(path)))
            self._handles.append(module.register_forward_hook(self._leave_module(path)))
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _enter_module(self, path: str) -> Any:
        def hook(_module: nn.Module, _args: Any) -> None:
            self.stack.append(path)

        return hook

    def _leave_module(self, path: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if self.stack and self.stack[-1] == path:
                self.stack.pop()
            for leaf in pytree.tree_leaves(output):
                if isinstance(leaf, torch.Tensor) and id(leaf) not in self.producers:
                    self.producers[id(leaf)] = path
                    self._keep.append(leaf)

        return hook

    @property
    def module(self) -> str:
        """The innermost module running (after a failure: the one it failed in)."""
        return self.stack[-1] if self.stack else ""

    # --- ops ---------------------------------------------------------------------------------

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        name = _name(func)
        self._uses(name, args, kwargs)
        try:
            if self.bounds is not None and (name == _EMBEDDING or name in _LOSSES):
                self._judge_range(self.bounds, name, args, kwargs)
            out = func(*args, **kwargs)
        except Exception:
            if self.failure is None:
                self.failure = OpFailure(name, self.module, _operands(func, args, kwargs))
            raise
        if name.rsplit(".", 1)[-1] in _VALUE_PRESERVING:
            self._follow(args, kwargs, out)
        if self.bounds is not None:
            self.bounds.update(name, args, kwargs, out)
        return out

    def _judge_range(
        self, bounds: Bounds, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Shape-only mode: raise as torch would when known index values pass the table."""
        if name == _EMBEDDING:
            indices, table = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
            what = "index out of range in self"
        else:
            table, indices = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "target")
            what = "target out of bounds"
        r = bounds.get(indices) if isinstance(indices, torch.Tensor) else None
        if r is None or not isinstance(table, torch.Tensor) or table.dim() < 1:
            return
        if name == _EMBEDDING:
            rows, unit = int(table.shape[0]), "rows"
            bad = r[1] >= rows or r[0] < 0
        else:
            rows, unit = int(table.shape[1] if table.dim() >= 2 else table.shape[0]), "classes"
            bad = r[1] >= rows
        if bad:
            raise IndexError(
                f"{what}: the values reach {r[1]} (from {r[0]}) against {rows} {unit} (values "
                "known without data: arange, the attention mask, constants, or the batch given)"
            )

    def _uses(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """An input reaching an embedding or a loss (recorded before the call, which may fail)."""
        if name == _EMBEDDING:
            indices, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
            origin = self._origin(indices)
            if origin and isinstance(weight, torch.Tensor) and weight.dim() == 2:
                self.uses.append(IndexUse(origin, "embedding", int(weight.shape[0]), self.module))
        elif name in _LOSSES:
            scores, target = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "target")
            origin = self._origin(target)
            if origin and isinstance(scores, torch.Tensor) and scores.dim() >= 1:
                classes = int(scores.shape[1] if scores.dim() >= 2 else scores.shape[0])
                ignore = kwargs.get("ignore_index", -100)
                self.uses.append(
                    IndexUse(
                        origin, "loss", classes, self.module, int(ignore), self._producer(scores)
                    )
                )

    def _follow(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """A slice, reshape or mask carries its operand's name (ids) and producer (scores)."""
        self._follow_producer(args, out)
        origin = next(
            (o for t in _tensors(args, kwargs) if _is_int(t) and (o := self._origin(t))), None
        )
        if origin:
            for leaf in pytree.tree_leaves(out):
                if isinstance(leaf, torch.Tensor) and _is_int(leaf):
                    self.origins[id(leaf)] = origin
                    self._keep.append(leaf)

    def _follow_producer(self, args: tuple[Any, ...], out: Any) -> None:
        """A view or reshape of a module's output still comes from that module."""
        if isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
            producer = self.producers.get(id(args[0]))
            if producer is not None and id(out) not in self.producers:
                self.producers[id(out)] = producer
                self._keep.append(out)

    def _origin(self, t: Any) -> str | None:
        return self.origins.get(id(t)) if isinstance(t, torch.Tensor) else None

    def _producer(self, scores: torch.Tensor) -> str | None:
        return self.producers.get(id(scores))

    def mark_output(self, output: Any) -> None:
        """Remember the root module as the producer of outputs no submodule returned."""
        for leaf in pytree.tree_leaves(output):
            if isinstance(leaf, torch.Tensor):
                self.producers.setdefault(id(leaf), "")


def _name(func: Any) -> str:
    return resolve_name(func) or getattr(func, "__qualname__", None) or repr(func)


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def _tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Iterator[torch.Tensor]:
    for leaf in pytree.tree_leaves((args, kwargs)):
        if isinstance(leaf, torch.Tensor):
            yield leaf


def _operands(
    func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """Each tensor operand as ``(name, shape, dtype)``; names from the signature where known."""
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # builtins: the common ones' arguments by name
        name = _name(func)
        names = _BUILTIN_ARGS.get(name.rsplit(".", 1)[-1], [])
        if name.startswith("torch.Tensor.") and names[:1] != ["self"]:
            names = ["self", *names[1:]] if names else ["self"]
    labelled: list[tuple[str, Any]] = [
        (names[i] if i < len(names) and names[i] not in ("self", "args") else f"arg{i}", a)
        for i, a in enumerate(args)
    ]
    if names and names[0] == "self" and args:  # Tensor methods: the tensor itself
        labelled[0] = ("self", args[0])
    labelled += list(kwargs.items())
    out: list[tuple[str, tuple[int, ...], str]] = []
    for label, value in labelled:
        if isinstance(value, torch.Tensor):
            out.append((label, shape_of(value), str(value.dtype).removeprefix("torch.")))
        elif isinstance(value, (list, tuple)):
            for j, item in enumerate(value):
                if isinstance(item, torch.Tensor):
                    out.append(
                        (f"{label}[{j}]", shape_of(item), str(item.dtype).removeprefix("torch."))
                    )
    return tuple(out[:12])
