"""The inputs of a forward check: named shapes and dtypes, and values where they are known.

An input is given by shape (``--input input_ids=2x77:int64``), read from a saved batch
(``--batch FILE``: shapes, dtypes, and the values of small integer tensors), or passed as a
tensor through the API. Dim 0 is the batch; each run replaces it with one of the batch sizes.

Pure Python until tensors are made (:func:`synthesize` imports torch).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckptdiff.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "InputSpec",
    "default_inputs",
    "parse_batch_sizes",
    "parse_input",
    "check_names",
    "synthesize",
]

#: dtype names accepted after ``:`` (torch's names, and a few short forms).
DTYPE_ALIASES = {
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "double": "float64",
}
INTEGER_DTYPES = frozenset({"int64", "int32", "int16", "int8", "uint8"})
_INT_NAME = re.compile(r"(^|_)(ids|labels?|mask|text|tokens|positions?|offsets?)$")
MAX_INPUT_ELEMENTS = 1 << 31  # a shape is only described, never allocated, in shape-only mode
#: Elements of one input data mode allocates (256 MiB of float32).
MAX_DATA_ELEMENTS = 1 << 26
DEFAULT_SEQUENCE = 128


@dataclass(frozen=True)
class InputSpec:
    """One keyword argument of the forward call.

    Attributes:
        name: the keyword (``input_ids``).
        shape: the shape as given; dim 0 is the batch (a 0-d input has none).
        dtype: torch's dtype name.
        values: a CPU tensor of the actual values (small integer tensors of a saved batch, or
            tensors passed through the API), else None: values are synthesized.
        origin: where it came from (``--input``, the batch file, ``default``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    values: Any = None
    origin: str = "--input"

    @property
    def is_integer(self) -> bool:
        """True for integer dtypes (ids, labels, masks, offsets)."""
        return self.dtype in INTEGER_DTYPES

    def at_batch(self, batch_size: int | None) -> tuple[int, ...]:
        """The shape with dim 0 replaced by ``batch_size`` (None: as given)."""
        if batch_size is None or not self.shape:
            return self.shape
        return (batch_size, *self.shape[1:])

    def describe(self) -> str:
        """``input_ids=Bx77:int64``."""
        dims = "x".join(["B", *map(str, self.shape[1:])]) if self.shape else "scalar"
        return f"{self.name}={dims}:{self.dtype}"


def parse_input(text: str) -> InputSpec:
    """Parse ``NAME=2x77[:DTYPE]``.

    The dtype defaults to int64 for names ending in ``ids``, ``labels``, ``mask``, ``text``,
    ``tokens``, ``positions`` or ``offsets``, and to float32 otherwise.

    Raises:
        UsageError: no ``=``, a dim that is not a positive integer, an unknown dtype.

    Example:
        >>> parse_input("input_ids=2x77").dtype, parse_input("pixel_values=2x3x224x224").shape
        ('int64', (2, 3, 224, 224))
    """
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise UsageError(
            f"Cannot use --input '{text}': expected NAME=SHAPE[:DTYPE], e.g. input_ids=2x77:int64."
        )
    dims_text, _, dtype_text = rest.partition(":")
    try:
        shape = tuple(int(d) for d in dims_text.lower().split("x")) if dims_text.strip() else ()
    except ValueError:
        shape = (-1,)
    if any(d < 1 for d in shape) or math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise UsageError(
            f"Cannot use --input '{text}': the shape must be positive integers joined by x "
            f"(2x77), at most {MAX_INPUT_ELEMENTS} elements."
        )
    if dtype_text:
        dtype = DTYPE_ALIASES.get(dtype_text.strip().lower())
        if dtype is None:
            raise UsageError(
                f"Cannot use --input '{text}': unknown dtype '{dtype_text}' (int64, int32, bool, "
                "float32, float16, bfloat16...)."
            )
    else:
        dtype = "int64" if _INT_NAME.search(name) else "float32"
    return InputSpec(name, shape, dtype)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,2,8"`` -> ``(1, 2, 8)``.

    Raises:
        UsageError: an item is not a positive integer.
    """
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 or s > 4096 for s in sizes):
        raise UsageError(
            f"Cannot use --batch-sizes '{text}': expected positive integers up to 4096 "
            "separated by commas, e.g. 1,2,8."
        )
    return tuple(dict.fromkeys(sizes))


def forward_parameters(model: nn.Module) -> tuple[list[str], bool]:
    """The names ``model.forward`` takes by keyword, and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_names(model: nn.Module, specs: Sequence[InputSpec], target: str) -> None:
    """Refuse inputs the forward does not take, naming the ones it does.

    Raises:
        UsageError: a name is not a parameter of ``forward`` (and it takes no ``**kwargs``).
    """
    names, var_kw = forward_parameters(model)
    unknown = [s.name for s in specs if s.name not in names]
    if unknown and not var_kw:
        raise UsageError(
            f"Cannot run '{target}': its forward takes no input named "
            f"{', '.join(map(repr, unknown))}; it takes {', '.join(names) or 'nothing'}."
        )


def default_inputs(model: nn.Module, target: str) -> list[InputSpec]:
    """Inputs for a transformers model named by its config: its main input, sized by config.

    ``input_ids`` are ``Bx<min(max positions, 128)>``; ``pixel_values`` are
    ``Bx<channels>x<image size>x<image size>``; a model with a text and a vision config (CLIP,
    SigLIP...) gets both; ``input_features`` / ``input_values`` have no default.

    Raises:
        UsageError: the model is not a transformers model, or its main input has no default.
    """
    main = getattr(model, "main_input_name", None)
    config = getattr(model, "config", None)
    names, _ = forward_parameters(model)
    hint = (
        f"Name its inputs with --input NAME=SHAPE (e.g. --input input_ids=2x77:int64) or "
        f"--batch FILE; its forward takes {', '.join(names) or 'nothing'}."
    )
    if config is None or main is None:
        raise UsageError(f"Cannot run '{target}' without inputs. {hint}")
    text = getattr(config, "text_config", None)
    vision = getattr(config, "vision_config", None)
    wanted = ["input_ids", "pixel_values"] if text is not None and vision is not None else [main]
    specs = []
    for name in wanted:
        if name == "input_ids":
            length = _config_int(
                text or config, ("max_position_embeddings", "n_positions", "max_seq_len")
            )
            seq = min(length or DEFAULT_SEQUENCE, DEFAULT_SEQUENCE)
            specs.append(InputSpec("input_ids", (2, seq), "int64", origin="default"))
        elif name == "pixel_values":
            size = _config_int(vision or config, ("image_size",)) or 224
            channels = _config_int(vision or config, ("num_channels",)) or 3
            specs.append(
                InputSpec("pixel_values", (2, channels, size, size), "float32", origin="default")
            )
        else:
            raise UsageError(
                f"Cannot run '{target}' without inputs: no default for '{main}'. {hint}"
            )
    return specs


def _config_int(config: Any, names: Sequence[str]) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def synthesize(
    specs: Sequence[InputSpec],
    batch_size: int | None,
    limits: Mapping[str, int],
    *,
    real: bool,
    pad_id: int = 0,
) -> dict[str, torch.Tensor]:
    """Tensors for one run.

    With ``real=False`` (shape-only mode, call under a fake mode) only shapes and dtypes
    matter. With ``real=True`` (data mode) values are made as a collator would: masks padded
    on the right with a different length per sample (so a batch above 1 is ragged), ids drawn
    below ``limits[name]`` (the rows of the embedding they index) and ``pad_id`` where padded,
    labels ``-100`` where padded, ``token_type_ids`` zero, floats standard normal. Known values
    are used as they are (at their own batch size).
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)
    lengths: list[int] | None = None
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        shape = spec.at_batch(batch_size)
        if not real:
            out[spec.name] = torch.empty(shape, dtype=dtype)
            continue
        if spec.values is not None:
            out[spec.name] = _resampled(spec.values, batch_size).to(dtype)
            continue
        if math.prod(shape) > MAX_DATA_ELEMENTS:
            raise UsageError(
                f"Cannot run data mode with {spec.name}={'x'.join(map(str, shape))}: over "
                f"{MAX_DATA_ELEMENTS} elements. Give a smaller --input or fewer --batch-sizes."
            )
        if len(shape) >= 2 and lengths is None:
            seq = shape[1]
            lengths = [max(seq - i, max(seq // 2, 1)) for i in range(shape[0])]
        out[spec.name] = _values(
            spec.name, shape, dtype, limits.get(spec.name), lengths, pad_id, gen
        )
    return out


def _resampled(values: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """Known values at another batch size: rows taken in turn (1, 2, 1, 2... for 4 of 2)."""
    import torch

    if batch_size is None or values.dim() == 0 or values.shape[0] in (0, batch_size):
        return values
    return values[torch.arange(batch_size) % values.shape[0]]


def _values(
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    limit: int | None,
    lengths: list[int] | None,
    pad_id: int,
    gen: Any,
) -> torch.Tensor:
    import torch

    if not (dtype.is_floating_point or dtype == torch.bool or dtype.is_complex):
        padded = torch.zeros(shape, dtype=torch.bool)
        if lengths is not None and len(shape) >= 2:
            for b in range(shape[0]):
                padded[b, lengths[b % len(lengths)] :] = True
        if "mask" in name:
            return (~padded).to(dtype)
        if "token_type" in name:
            return torch.zeros(shape, dtype=dtype)
        high = max(min(limit or 2, torch.iinfo(dtype).max), 1)
        values = torch.randint(0, high, shape, generator=gen, dtype=torch.int64).to(dtype)
        fill = -100 if "label" in name else pad_id
        return values.masked_fill(padded, fill)
    if dtype == torch.bool:
        if "mask" in name and lengths is not None and len(shape) >= 2:
            mask = torch.ones(shape, dtype=torch.bool)
            for b in range(shape[0]):
                mask[b, lengths[b % len(lengths)] :] = False
            return mask
        return torch.ones(shape, dtype=torch.bool)
    return torch.randn(shape, generator=gen).to(dtype)
