"""``ckptdiff.forward(model, inputs)``: run the target's forward pass without its weights."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ckptdiff.errors import UsageError
from ckptdiff.forward_check import attribute, shrink
from ckptdiff.forward_check.inputs import (
    InputSpec,
    check_names,
    default_inputs,
    forward_parameters,
    parse_input,
)
from ckptdiff.forward_check.ranges import confirm_fields, range_findings
from ckptdiff.forward_check.report import Failure, ForwardReport, Run
from ckptdiff.forward_check.run import (
    Outcome,
    build_on_cpu,
    embedding_limits,
    pad_token_id,
    param_bytes,
    run_data,
    run_shape_only,
)

__all__ = ["FULL_SIZE_BUDGET", "forward"]

#: Data mode runs the target at full size up to this many bytes of weights; above, shrunk.
FULL_SIZE_BUDGET = 256 << 20
DEFAULT_BATCH_SIZES = (1, 2, 8)
ForwardMode = Literal["auto", "shape-only", "data"]


def forward(
    model: Any,
    inputs: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    batch: str | os.PathLike[str] | None = None,
    batch_sizes: Sequence[int] | None = None,
    mode: ForwardMode = "auto",
    args: Mapping[str, Any] | Sequence[str] | None = None,
    config: Any = None,
    auto_class: str | None = None,
) -> ForwardReport:
    """Run the target's forward pass without its weights, at several batch sizes.

    Shape-only mode first: the model on meta, its tensors fake, only shapes propagate. When the
    forward reads values (``nonzero``, ``.item()``, masks built from ids), data mode takes over:
    the same architecture on CPU, shrunk when large, with random weights and small real inputs.

    Args:
        model: a target as ``check`` takes it (``pkg.module:callable``, ``hf-config:path``, a
            folder with a config.json) or an ``nn.Module``.
        inputs: ``{"input_ids": (2, 77), "pixel_values": "2x3x224x224:float32", "labels":
            tensor}`` or ``["input_ids=2x77:int64", ...]``; a tensor's values are used as they
            are. Dim 0 is the batch. Default: the main input of a transformers model.
        batch: a saved collated batch (``torch.save(dict(batch), path)`` or safetensors); its
            small integer tensors' values are checked against the rows they index.
        batch_sizes: dim 0 of every input, one run each (default 1, 2, 8; a saved batch runs
            at its own size unless given).
        mode: ``auto``, ``shape-only`` or ``data``.
        args, config, auto_class: as for :func:`ckptdiff.check`.

    Returns:
        A :class:`~ckptdiff.forward_check.report.ForwardReport`: ``.ok``, ``.to_json()``, ``str()``.

    Raises:
        TargetError: the target cannot be built.
        UsageError: malformed inputs, or names the forward does not take.
        ReadError: the batch file cannot be read.

    Example:
        >>> r = forward("hf-config:tiny-bert/config.json", {"input_ids": (2, 16)})  # doctest: +SKIP
        >>> r.ok, str(r).splitlines()[-1]  # doctest: +SKIP
        (True, 'Summary: forward ok at batch sizes 1, 2, 8 (shape-only mode).')
    """
    from ckptdiff.targets import build_model, target_spec

    if mode not in ("auto", "shape-only", "data"):
        raise UsageError(f"Cannot run forward in mode {mode!r}: use auto, shape-only or data.")
    target = target_spec(model, args=args, config=config, auto_class=auto_class)
    meta_model = build_model(target)
    specs = _specs(inputs, batch, meta_model, target.spec)
    check_names(meta_model, specs, target.spec)
    sizes: tuple[int | None, ...]
    if batch_sizes:
        sizes = tuple(dict.fromkeys(int(b) for b in batch_sizes))
    else:
        known = batch is not None or any(s.values is not None for s in specs)
        sizes = (None,) if known else DEFAULT_BATCH_SIZES
    leaves = _leaves(target, meta_model)
    session = _Session(target, meta_model, specs, leaves)
    runs = tuple(session.run(bs, mode) for bs in sizes)
    ranges, checked = range_findings(session.outcomes, specs, leaves)
    if target.rebuildable:
        ranges = tuple(confirm_fields(r, session.probe_ok) for r in ranges)
    names, _ = forward_parameters(meta_model)
    unnamed = [s.name for s in specs if s.name not in names]
    notes = _notes(specs, checked, runs)
    if unnamed:
        notes = (
            f"{', '.join(unnamed)} {'is' if len(unnamed) == 1 else 'are'} not a named "
            f"parameter of forward (passed to its **kwargs); it takes {', '.join(names)}",
            *notes,
        )
    return ForwardReport(
        target=target.spec,
        inputs=tuple(s.describe() for s in specs),
        runs=runs,
        ranges=ranges,
        ranges_checked=checked,
        shrunk=session.shrunk,
        notes=notes,
    )


def _specs(inputs: Any, batch: Any, model: Any, target: str) -> list[InputSpec]:
    specs: list[InputSpec] = []
    if batch is not None:
        from ckptdiff.forward_check.batch import read_batch

        specs += read_batch(os.fspath(batch))
    if isinstance(inputs, Mapping):
        specs += [_from_value(str(k), v) for k, v in inputs.items()]
    elif inputs:
        specs += [parse_input(s) for s in ([inputs] if isinstance(inputs, str) else inputs)]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"Cannot run '{target}': input {', '.join(dupes)} given twice.")
    return specs or default_inputs(model, target)


def _from_value(name: str, value: Any) -> InputSpec:
    import torch

    if isinstance(value, torch.Tensor):
        values = value.detach().cpu() if value.device.type != "meta" else None
        shape = tuple(int(d) for d in value.shape)
        return InputSpec(name, shape, str(value.dtype).removeprefix("torch."), values, "tensor")
    if isinstance(value, str):
        return parse_input(f"{name}={value}")
    if isinstance(value, (tuple, list)) and all(isinstance(d, int) for d in value):
        return parse_input(f"{name}={'x'.join(map(str, value))}")
    raise UsageError(
        f"Cannot use input '{name}': expected a shape (2, 77), '2x77:int64' or a tensor, "
        f"got {type(value).__name__}."
    )


def _leaves(target: Any, model: Any) -> dict[str, int]:
    from ckptdiff.targets.factory import load_callable

    leaves: dict[str, int] = {}
    if target.kind == "factory":
        leaves.update(attribute.factory_defaults(load_callable(target.spec)))
        leaves.update(attribute.config_leaves(model, target.args))
    else:
        leaves.update(attribute.config_leaves(model, None))
    return leaves


@dataclass
class _DataModel:
    model: Any
    limits: dict[str, int]
    pad_id: int


class _Session:
    """The runs of one :func:`forward` call, sharing the data-mode model once built."""

    def __init__(
        self, target: Any, meta_model: Any, specs: list[InputSpec], leaves: dict[str, int]
    ) -> None:
        self.target, self.meta_model, self.specs, self.leaves = target, meta_model, specs, leaves
        self.outcomes: list[Outcome] = []
        self.shrunk: tuple[tuple[str, int, int], ...] = ()
        self._data: _DataModel | str | None = None
        self._dims: dict[tuple[Any, ...], Any] = {}  # one attribution per distinct failure

    def run(self, bs: int | None, mode: ForwardMode) -> Run:
        note = None
        if mode != "data":
            o = run_shape_only(self.meta_model, self.specs, bs)
            if not o.data_dependent:
                self.outcomes.append(o)
                return self._result(o, bs, "shape-only", None)
            where = (
                f"{o.op_failure.op if o.op_failure else 'a value read'} in "
                f"{o.module or type(self.meta_model).__name__}"
            )
            if mode == "shape-only":
                return Run(
                    bs,
                    "shape-only",
                    "not run",
                    note=f"the forward reads values at {where}; run with --mode data",
                )
            note = f"shape-only mode stopped at {where} (the forward reads values there)"
        data = self._data_model()
        if isinstance(data, str):
            return Run(bs, "data", "not run", note=f"{note + '; ' if note else ''}{data}")
        o = run_data(data.model, self.specs, bs, data.limits, data.pad_id)
        self.outcomes.append(o)
        return self._result(o, bs, "data", note)

    def _result(
        self, o: Outcome, bs: int | None, mode: Literal["shape-only", "data"], note: str | None
    ) -> Run:
        if o.ok:
            return Run(bs, mode, "ok", note=note)
        model = self.meta_model if mode == "shape-only" else self._model_of_data()
        probe = self._probe if mode == "shape-only" and self.target.rebuildable else None
        leaves = self.leaves if mode == "shape-only" else _shrunk_leaves(self.leaves, self.shrunk)
        op = o.op_failure
        key = (mode, o.module, op.op if op else None, o.error)
        if key not in self._dims:
            self._dims[key] = attribute.attribute_dims(o, self.specs, leaves, model, probe)
        dims = self._dims[key]
        failure = Failure(
            o.module, o.module_type, op.op if op else None, op.operands if op else (), o.error, dims
        )
        return Run(bs, mode, "failed", failure, note)

    def _model_of_data(self) -> Any:
        return self._data.model if isinstance(self._data, _DataModel) else self.meta_model

    def probe_ok(self, name: str, value: int) -> Outcome:
        """The target rebuilt with ``name=value``, run in shape-only mode (ok or not)."""
        return self._rebuilt_run(name, value)

    def _probe(self, name: str, value: int) -> Outcome | None:
        o = self._rebuilt_run(name, value)
        return None if o.ok else o

    def _rebuilt_run(self, name: str, value: int) -> Outcome:
        from ckptdiff.targets import build_model
        from ckptdiff.targets.factory import deep_merge

        if ".config." in name:  # a submodule's own transformers config: not a target setting
            raise UsageError(f"{name} is not a setting of the target")
        changed = dataclasses.replace(
            self.target, args=deep_merge(self.target.args, {name: value}), module=None
        )
        bs = self.outcomes[-1].batch_size if self.outcomes else None
        return run_shape_only(build_model(changed), self.specs, bs)

    def _data_model(self) -> _DataModel | str:
        if self._data is None:
            try:
                import torch

                with torch.random.fork_rng():  # the caller's random state is left alone
                    torch.manual_seed(0)  # and the random weights are the same every run
                    self._data = self._build_data_model()
            except Exception as e:  # noqa: BLE001 - reported as the reason data mode did not run
                self._data = f"data mode could not build the model on CPU: {e}"
        return self._data

    def _build_data_model(self) -> _DataModel | str:

        target, size = self.target, param_bytes(self.meta_model)
        on_meta = any(t.device.type == "meta" for t in self.meta_model.parameters())
        if target.module is not None and not on_meta:  # an instance with values: run it as it is
            return self._ready(self.meta_model)
        if target.kind == "module":
            return (
                "data mode needs values: this nn.Module is on meta; pass it built on CPU, "
                "or name its factory or config so it can be built small"
            )
        if size <= FULL_SIZE_BUDGET:
            return self._ready(build_on_cpu(target, {}))
        keep_vocab = any(s.values is not None and s.is_integer for s in self.specs)
        own = {k: v for k, v in self.leaves.items() if ".config." not in k}
        last: Exception | None = None
        for layers in (True, False):
            for factor in shrink.FACTORS:
                over = shrink.shrink_overrides(
                    own.items(), factor, layers=layers, vocab=not keep_vocab
                )
                if over is None or (not over and size > 4 * FULL_SIZE_BUDGET):
                    continue
                try:
                    model = build_on_cpu(target, over)
                except Exception as e:  # noqa: BLE001 - try the next, milder shrink
                    last = e
                    continue
                if param_bytes(model) > 4 * FULL_SIZE_BUDGET or not shrink.consistent(
                    _shapes(self.meta_model), _shapes(model)
                ):
                    continue
                self.shrunk = shrink.describe(over, own)
                return self._ready(model)
        why = f" (last attempt: {last})" if last else ""
        return (
            f"data mode needs the model on CPU: it is {size / 2**30:.1f} GiB at full size and "
            f"its config has no widths ckptdiff can shrink{why}; pass them with --arg or "
            "--config"
        )

    def _ready(self, model: Any) -> _DataModel:
        return _DataModel(model, embedding_limits(model, self.specs), pad_token_id(model))


def _shapes(model: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in model.state_dict(keep_vars=True).items()}


def _shrunk_leaves(
    leaves: dict[str, int], shrunk: tuple[tuple[str, int, int], ...]
) -> dict[str, int]:
    out = dict(leaves)
    out.update({k: small for k, _full, small in shrunk})
    return out


def _notes(
    specs: Sequence[InputSpec], checked: Sequence[Any], runs: Sequence[Run]
) -> tuple[str, ...]:
    notes = []
    known = [s.name for s in specs if s.values is not None and s.is_integer]
    if not known and checked:
        notes.append(
            "index ranges not checked: no values known (give --batch FILE to check ids "
            "and labels against the rows they index)"
        )
    if any(r.mode == "data" and r.status != "not run" for r in runs):
        notes.append(
            "data mode ran with random weights; it shows where the forward fails, not "
            "what it computes"
        )
        if any("mask" in s.name and s.values is None for s in specs):
            notes.append(
                "data mode pads each batch on the right as a collator does: sample i is "
                "i tokens shorter (down to half the length), so masks differ per sample"
            )
    return tuple(notes)
