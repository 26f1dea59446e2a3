"""Which settings produced a failing dimension.

The dimensions a failure is about are the numbers its error message names that are also
operand dimensions (or, when it names none, the operands' dimensions). For each, the config
fields, module attributes and input dimensions of equal value are listed; config fields are
then probed: the target is rebuilt with the field doubled and run again, and the field is
*confirmed* when the doubled value shows up in the new failure (or the failure goes away).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from ckptdiff.forward_check.inputs import InputSpec
from ckptdiff.forward_check.report import DimSource, FieldMatch
from ckptdiff.forward_check.run import Outcome
from ckptdiff.targets.factory import dotted_leaves

__all__ = ["MAX_PROBES", "attribute_dims", "config_leaves", "failure_dims", "matches"]

#: Rebuilds spent per failure to confirm which config field produced a dimension.
MAX_PROBES = 8
_PER_DIM = 4
_INDEX = re.compile(r"\.\d+\.")
_NUMBER = re.compile(r"(?<![\w.])\d+(?![\w.])")

#: ``(field, new value) -> the failure's dims after rebuilding`` (None: it ran), or raises.
Prober = Callable[[str, int], "Outcome | None"]


def config_leaves(model: nn.Module, args: Mapping[str, Any] | None) -> dict[str, int]:
    """Integer settings of the target: its arguments or config, and the transformers configs
    of its submodules (``text.transformer.config.vocab_size``)."""
    out: dict[str, int] = {}
    if args:
        out.update(_ints(dotted_leaves(args)))
    seen: set[int] = set()
    for path, module in model.named_modules():
        config = getattr(module, "config", None)
        if id(config) in seen:
            continue
        seen.add(id(config))
        if hasattr(config, "to_dict") and hasattr(config, "model_type"):
            prefix = f"{path}.config." if path else ""
            for key, value in _ints(dotted_leaves(config.to_dict())).items():  # type: ignore[union-attr]
                out.setdefault(prefix + key, value)
    return out


def factory_defaults(fn: Any) -> dict[str, int]:
    """Integer defaults a factory does not show in its arguments: its own (``embed_dim=512``)
    and the fields of dataclass-typed parameters (``text_cfg.context_length=77`` from
    ``text_cfg: CLIPTextCfg``), as open_clip's model classes declare them."""
    import dataclasses
    import inspect
    import typing

    try:
        params = inspect.signature(fn).parameters
        hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no defaults known
        return {}
    out: dict[str, int] = {}
    for name, param in params.items():
        default = param.default
        if isinstance(default, int) and not isinstance(default, bool):
            out[name] = default
        for cls in (hints.get(name), *typing.get_args(hints.get(name))):
            if isinstance(cls, type) and dataclasses.is_dataclass(cls):
                for f in dataclasses.fields(cls):
                    if isinstance(f.default, int) and not isinstance(f.default, bool):
                        out[f"{name}.{f.name}"] = f.default
                break
    return out


def module_attributes(model: nn.Module) -> Iterator[tuple[str, int]]:
    """Integer attributes modules keep (``text_decoder.context_length``)."""
    seen: set[tuple[str, int]] = set()
    for path, module in model.named_modules():
        for name, value in vars(module).items():
            if name.startswith("_") or name == "training":
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
                full = f"{path}.{name}" if path else name
                pattern = (_INDEX.sub(".*.", f".{full}."), value)  # one layer speaks for all
                if pattern not in seen:
                    seen.add(pattern)
                    yield full, value


def _ints(items: Iterable[tuple[str, Any]]) -> dict[str, int]:
    return {k: v for k, v in items if isinstance(v, int) and not isinstance(v, bool)}


def failure_dims(outcome: Outcome) -> list[int]:
    """The sizes a failure is about: the numbers its message names that are operand sizes (or,
    when the model's own code raised, every number of two or more it names); at most six."""
    operand_dims: list[int] = []
    if outcome.op_failure:
        for _name, shape, _dtype in outcome.op_failure.operands:
            operand_dims.extend(d for d in shape if d >= 2)
    named = [int(n) for n in dict.fromkeys(_NUMBER.findall(outcome.error))]
    if operand_dims:  # numbers of the message that are not sizes are values (an index...)
        return [d for d in named if d in operand_dims][:6]
    return [d for d in named if d >= 2][:6]


def matches(
    dim: int,
    specs: Sequence[InputSpec],
    batch_size: int | None,
    leaves: Mapping[str, int],
    attributes: Sequence[tuple[str, int]],
) -> list[FieldMatch]:
    """Inputs, config fields and module attributes whose value is ``dim``."""
    found: list[FieldMatch] = []
    for spec in specs:
        shape = spec.shape if spec.values is not None else spec.at_batch(batch_size)
        found += [
            FieldMatch(f"{spec.name}[{i}]", d, "input")
            for i, d in enumerate(shape)
            if i > 0 and d == dim
        ]
    found += [FieldMatch(k, v, "config") for k, v in leaves.items() if v == dim][: _PER_DIM * 2]
    found += [FieldMatch(k, v, "attribute") for k, v in attributes if v == dim][:_PER_DIM]
    return found


def attribute_dims(
    outcome: Outcome,
    specs: Sequence[InputSpec],
    leaves: Mapping[str, int],
    model: nn.Module,
    probe: Prober | None,
) -> tuple[DimSource, ...]:
    """Each failing dimension with its sources, config fields probed where ``probe`` is given."""
    attributes = list(module_attributes(model))
    budget = MAX_PROBES if probe else 0
    out: list[DimSource] = []
    for dim in failure_dims(outcome):
        found = matches(dim, specs, outcome.batch_size, leaves, attributes)
        probed: list[FieldMatch] = []
        tried = 0
        for m in found:
            if m.kind == "config" and budget > 0 and tried < _PER_DIM and probe is not None:
                budget -= 1
                tried += 1
                probed.append(FieldMatch(m.name, m.value, m.kind, _confirm(probe, m.name, dim)))
            else:
                probed.append(m)
        probed.sort(
            key=lambda m: (m.kind != "input", m.confirmed is not True, m.kind == "attribute")
        )
        out.append(DimSource(dim, tuple(probed)))
    return tuple(out)


def _confirm(probe: Prober, name: str, dim: int) -> bool | None:
    try:
        after = probe(name, dim * 2)
    except Exception:  # noqa: BLE001 - a rebuild that fails tells nothing either way
        return None
    if after is None:  # the failure went away
        return True
    return (dim * 2) in _all_dims(after)


def _all_dims(outcome: Outcome) -> set[int]:
    dims = {int(n) for n in _NUMBER.findall(outcome.error)}
    if outcome.op_failure:
        for _n, shape, _d in outcome.op_failure.operands:
            dims.update(shape)
    return dims
