"""Value ranges of integer tensors in shape-only mode, where no value is known.

Fake tensors carry shapes only, so an embedding indexed past its rows passes unnoticed. Most
such indices are not data, though: position ids are ``torch.arange(length)``, or a running sum
of the attention mask, plus an offset. :class:`Bounds` follows the range ``[low, high]`` of
integer tensors through the ops that build them (``arange``, comparisons, ``cumsum``, sums
and products with constants, slices and reshapes, ``masked_fill``, ``where``, ``clamp``), so
an embedding whose index range reaches past its rows is a failure in shape-only mode as it is
with real tensors. Ids read from the user's data have no known range and are never judged.

The ranges are the values an unpadded batch reaches (an attention mask of ones): the case every
training run meets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Bounds", "Range"]

Range = tuple[int, int]

_SAME = frozenset(
    "__getitem__ view reshape flatten unflatten contiguous clone to long int detach narrow "
    "select unsqueeze squeeze expand expand_as repeat roll transpose permute flip movedim t "
    "type type_as view_as repeat_interleave".split()
)
_BOOLEAN = frozenset(
    "eq ne lt le gt ge __eq__ __ne__ __lt__ __le__ __gt__ __ge__ logical_not logical_and "
    "logical_or __and__ __or__ __invert__ isin bool".split()
)
_JOIN = frozenset({"cat", "concat", "concatenate", "stack"})


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    return None


@dataclass(eq=False)
class Bounds:
    """Known ranges, by tensor identity (the tensors are kept alive while the pass runs)."""

    ranges: dict[int, Range] = field(default_factory=dict)
    _keep: list[Any] = field(default_factory=list)

    def set(self, t: Any, r: Range) -> None:
        """Record ``t``'s range."""
        if isinstance(t, torch.Tensor):
            self.ranges[id(t)] = r
            self._keep.append(t)

    def get(self, value: Any) -> Range | None:
        """The range of a tensor, or of a Python int (itself)."""
        n = _int(value)
        if n is not None:
            return (n, n)
        return self.ranges.get(id(value)) if isinstance(value, torch.Tensor) else None

    def update(self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> None:
        """The range of ``out`` after the call ``name(*args, **kwargs)``, where it is known.

        Floating tensors are followed too where their values are whole numbers by construction
        (``torch.ones(...)`` as a mask, its running sum), until they become ids (``.long()``).
        """
        if not isinstance(out, torch.Tensor) or out.is_complex():
            return
        op = name.rsplit(".", 1)[-1]
        if not op.endswith("__"):
            op = op.rstrip("_")  # in-place forms: add_, masked_fill_
        if op == "where":
            a, b = (self.get(args[1]), self.get(args[2])) if len(args) == 3 else (None, None)
            if a and b:
                self.set(out, _union(a, b))
            return
        r = self._rule(op, args, kwargs, out)
        if r is not None:
            self.set(out, r)

    def _rule(
        self, op: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: torch.Tensor
    ) -> Range | None:
        if op in _BOOLEAN or out.dtype == torch.bool:
            return (0, 1)
        if op == "arange":
            return _arange(args, kwargs)
        if op in ("ones", "ones_like", "new_ones"):
            return (1, 1)
        if op in ("zeros", "zeros_like", "new_zeros"):
            return (0, 0)
        if op in ("full", "full_like", "new_full"):
            v = _int(args[1] if len(args) > 1 else kwargs.get("fill_value"))
            return (v, v) if v is not None else None
        first = self.get(args[0]) if args else None
        if op in _SAME:
            return first
        if op in _JOIN and args and isinstance(args[0], (list, tuple)):
            parts = [self.get(t) for t in args[0]]
            return _union(*parts) if parts and all(parts) else None  # type: ignore[arg-type]
        second = self.get(args[1]) if len(args) > 1 else self.get(kwargs.get("other"))
        return self._arithmetic(op, args, kwargs, first, second)

    def _arithmetic(
        self,
        op: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        a: Range | None,
        b: Range | None,
    ) -> Range | None:
        if a is None:
            return None
        if op == "cumsum" and a[0] >= 0:
            dim = _int(args[1] if len(args) > 1 else kwargs.get("dim"))
            t = args[0]
            n = int(t.shape[dim]) if dim is not None and t.dim() else 1
            return (a[0], a[1] * n)
        if op in ("clamp", "clamp_min", "clamp_max", "clip"):
            low = _int(args[1] if len(args) > 1 else kwargs.get("min"))
            high = _int(args[2] if len(args) > 2 else kwargs.get("max"))
            if op == "clamp_max":
                low, high = None, low
            return (
                a[0] if low is None else max(a[0], low),
                a[1] if high is None else min(a[1], high),
            )
        if op == "masked_fill":
            v = self.get(args[2] if len(args) > 2 else kwargs.get("value"))
            return _union(a, v) if v else None
        if b is None:
            return None
        if op in ("add", "__add__", "__radd__"):
            return (a[0] + b[0], a[1] + b[1])
        if op in ("sub", "__sub__"):
            return (a[0] - b[1], a[1] - b[0])
        if op == "__rsub__":
            return (b[0] - a[1], b[1] - a[0])
        if op in ("mul", "__mul__", "__rmul__"):
            corners = [x * y for x in a for y in b]
            return (min(corners), max(corners))
        return None


def _union(*ranges: Range) -> Range:
    return (min(r[0] for r in ranges), max(r[1] for r in ranges))


def _arange(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Range | None:
    nums = [_int(a) for a in args]
    if "end" in kwargs:
        nums = [*(nums or [_int(kwargs.get("start", 0))]), _int(kwargs["end"])]
    if not nums or any(n is None for n in nums):
        return None
    known = [n for n in nums if n is not None]
    start, end, step = (0, known[0], 1) if len(known) == 1 else (*known[:2], (known[2:] or [1])[0])
    if step <= 0 or end <= start:
        return None
    last = start + ((end - start - 1) // step) * step
    return (start, last)
