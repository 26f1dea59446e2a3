"""Run a model's forward pass once, in shape-only mode or data mode, and say what happened.

- shape-only: the model built on meta, its parameters turned into fake CPU tensors under
  torch's ``FakeTensorMode``; inputs are fake too. No memory for weights, no arithmetic.
- data: a real CPU model (the target itself when small, else shrunk: see
  :mod:`ckptdiff.forward_check.shrink`) with random weights, run on small real tensors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils import _pytree as pytree

from ckptdiff.errors import TargetError
from ckptdiff.forward_check.bounds import Bounds
from ckptdiff.forward_check.inputs import InputSpec, synthesize
from ckptdiff.forward_check.trace import DATA_DEPENDENT, IndexUse, OpFailure, Tracer, shape_of

__all__ = ["Outcome", "param_bytes", "run_data", "run_shape_only"]

MAX_ERROR = 400


@dataclass
class Outcome:
    """One forward pass.

    Attributes:
        ok: it returned.
        data_dependent: it stopped because shape-only mode cannot know a value.
        op_failure: the first torch call that raised (None: the model's own code raised).
        module: the innermost module running when it raised.
        module_type: its class name.
        error: ``Type: message``, first lines, bounded.
        uses: inputs that indexed an embedding or a loss.
        logits: ``(classes, producing module)`` of the output's class scores, when it has them.
        batch_size: dim 0 of the inputs.
    """

    ok: bool
    data_dependent: bool = False
    op_failure: OpFailure | None = None
    module: str = ""
    module_type: str = ""
    error: str = ""
    uses: list[IndexUse] = field(default_factory=list)
    logits: tuple[int, str] | None = None
    batch_size: int | None = None


def param_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers would take materialized."""
    seen: set[int] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _module_types(model: nn.Module) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in model.named_modules()}


def _fake_state(model: nn.Module, mode: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as a fake CPU tensor; tied tensors stay one object."""
    from torch._subclasses.fake_tensor import FakeTensor

    made: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, t in named:
        if t is None:
            continue
        if id(t) not in made:
            if isinstance(t, FakeTensor):
                made[id(t)] = t
            elif t.device.type == "meta":
                made[id(t)] = mode.fake_tensor_converter.from_meta_and_device(
                    mode, t, torch.device("cpu")
                )
            else:
                made[id(t)] = mode.from_tensor(t)
        state[name] = made[id(t)]
    return state


def run_shape_only(model: nn.Module, specs: Sequence[InputSpec], batch_size: int | None) -> Outcome:
    """One forward pass under ``FakeTensorMode``: shapes and dtypes only."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    known = {s.name: r for s in specs if (r := _known_range(s)) is not None}  # real values: here
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, _fake_logs_off():
        state = _fake_state(model, mode)
        inputs = synthesize(specs, batch_size, {}, real=False)

        def call() -> Any:
            return functional_call(model, state, (), inputs, tie_weights=True, strict=False)

        bounds = Bounds()
        for name, r in known.items():
            bounds.set(inputs[name], r)
        return _traced(model, call, inputs, batch_size, bounds)


def _known_range(spec: InputSpec) -> tuple[int, int] | None:
    """What shape-only mode knows of an input's values: a batch's own, or a mask of ones."""
    if spec.values is not None and spec.is_integer and spec.values.numel():
        return int(spec.values.min()), int(spec.values.max())
    if spec.values is None and "mask" in spec.name and (spec.is_integer or spec.dtype == "bool"):
        return (1, 1)  # an unpadded sample: the positions a mask counts reach their highest
    return None


@contextlib.contextmanager
def _fake_logs_off() -> Iterator[None]:
    """FakeTensorMode logs every failing op with its traceback; the report says it once."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def run_data(
    model: nn.Module,
    specs: Sequence[InputSpec],
    batch_size: int | None,
    limits: Mapping[str, int],
    pad_id: int,
) -> Outcome:
    """One forward pass on real CPU tensors (values synthesized where not known)."""
    inputs = synthesize(specs, batch_size, limits, real=True, pad_id=pad_id)
    return _traced(model, lambda: model(**inputs), inputs, batch_size)


def _traced(
    model: nn.Module,
    call: Any,
    inputs: Mapping[str, torch.Tensor],
    batch_size: int | None,
    bounds: Bounds | None = None,
) -> Outcome:
    origins = {id(t): name for name, t in inputs.items() if not t.is_floating_point()}
    was_training = model.training
    model.eval()
    tracer = Tracer(model, origins, bounds=bounds)
    try:
        with torch.no_grad(), _quiet(), tracer:
            output = call()
            tracer.mark_output(output)
    except Exception as e:  # noqa: BLE001 - any failure of the user's model is the finding
        types = _module_types(model)
        return Outcome(
            ok=False,
            data_dependent=isinstance(e, DATA_DEPENDENT) or _meta_value_error(e),
            op_failure=tracer.failure,
            module=tracer.module,
            module_type=types.get(tracer.module, type(model).__name__),
            error=_error_text(e),
            uses=list(tracer.uses),
            batch_size=batch_size,
        )
    finally:
        model.train(was_training)
    return Outcome(
        ok=True, uses=list(tracer.uses), logits=_logits(output, tracer), batch_size=batch_size
    )


def _quiet() -> Any:
    """transformers' run-time warnings off (they speak of the user's training, not of this)."""
    import contextlib
    import sys

    if "transformers" not in sys.modules:
        return contextlib.nullcontext()
    from ckptdiff.targets.hf import quiet_transformers

    return quiet_transformers()


def _meta_value_error(e: BaseException) -> bool:
    """Errors of code that needs values fake tensors do not have (``.numpy()``, data pointers)."""
    text = str(e)
    return ("meta tensors" in text and ("item()" in text or "data-dependent" in text)) or (
        "data pointer" in text
        or "FakeTensor" in text
        or "fake tensor" in text.lower()
        or "not supported for tensor subclasses" in text
    )


def _error_text(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    text = " ".join(lines[:3]) if lines else "(no message)"
    if len(text) > MAX_ERROR:
        text = text[: MAX_ERROR - 3] + "..."
    return f"{type(e).__name__}: {text}"


def _logits(output: Any, tracer: Tracer) -> tuple[int, str] | None:
    """The output's class scores: a ``logits`` entry, else its first floating tensor of rank
    3 or more (batch, positions, classes)."""
    candidate = None
    if isinstance(output, Mapping) and "logits" in output:
        candidate = output["logits"]
    elif isinstance(output, torch.Tensor):
        candidate = output
    else:
        leaves = [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
        candidate = next((t for t in leaves if t.is_floating_point() and t.dim() >= 3), None)
    if not isinstance(candidate, torch.Tensor) or candidate.dim() < 2:
        return None
    if not candidate.is_floating_point():
        return None
    return int(shape_of(candidate)[-1]), tracer.producers.get(id(candidate), "")


def embedding_limits(model: nn.Module, specs: Sequence[InputSpec]) -> dict[str, int]:
    """For data mode: the rows synthesized ids stay below (the largest embedding's)."""
    rows = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    vocab = max(rows, default=2)
    return {s.name: vocab for s in specs if s.is_integer}


def pad_token_id(model: nn.Module) -> int:
    """The config's ``pad_token_id``, else 0."""
    value = getattr(getattr(model, "config", None), "pad_token_id", None)
    return value if isinstance(value, int) and value >= 0 else 0


def build_on_cpu(target: Any, overrides: Mapping[str, Any]) -> nn.Module:
    """Build ``target`` (a :class:`~ckptdiff.targets.TargetSpec`) for real on CPU.

    Raises:
        TargetError: it cannot be built (the factory or transformers raised).
    """
    import dataclasses

    from ckptdiff.targets.factory import as_module, deep_merge, load_callable

    changed = dataclasses.replace(target, args=deep_merge(target.args, overrides))
    try:
        if changed.kind == "factory":
            fn = load_callable(changed.spec)
            extra = () if changed.config_object is None else (changed.config_object,)
            return as_module(fn(*extra, **changed.args), changed.spec)
        from ckptdiff.targets import hf

        base = changed.config_object
        config = hf.load_config(changed.spec, changed.args, base=base)
        if changed.kind == "hf-class":
            cls = load_callable(changed.spec)
            with hf.quiet_transformers():
                return cls._from_config(config)  # type: ignore[attr-defined, no-any-return]
        return hf.build_model(changed.spec, config, changed.auto_class)  # type: ignore[no-any-return]
    except TargetError:
        raise
    except Exception as e:
        raise TargetError(
            f"Cannot build '{changed.spec}' on CPU for data mode: {type(e).__name__}: {e}."
        ) from e
