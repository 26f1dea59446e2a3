"""Tensor specs from unpickled tensor references: keys, shapes, dtypes and sizes, built fast."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ckptdiff.readers.unpickler.records import TensorRef
from ckptdiff.types import TensorSpec

__all__ = ["specs_from_tensors"]


def _spec_setters() -> tuple[Callable[[TensorSpec, Any], None], ...] | None:
    """The slot setters of :class:`TensorSpec`'s five fields, to build specs at half the cost of
    its frozen-dataclass ``__init__``; None (use the class) when its fields are not the five
    known ones or it checks its values after ``__init__``."""
    names = ("key", "shape", "dtype", "nbytes", "file")
    if (
        tuple(getattr(TensorSpec, "__dataclass_fields__", ())) != names
        or getattr(TensorSpec, "__slots__", ()) != names
        or hasattr(TensorSpec, "__post_init__")
    ):
        return None
    return tuple(TensorSpec.__dict__[n].__set__ for n in names)


_SPEC_SETTERS = _spec_setters()


def specs_from_tensors(tensors: Mapping[str, Any], file: str | None) -> dict[str, TensorSpec]:
    """Turn the chosen tensors into :class:`TensorSpec`s (sized tensors only)."""
    specs: dict[str, TensorSpec] = {}
    prod = math.prod
    if _SPEC_SETTERS is None:
        for key, t in tensors.items():
            if type(t) is TensorRef:
                shape, dtype = t[0], t[3]
                specs[key] = TensorSpec(key, shape, dtype.name, prod(shape) * dtype.itemsize, file)
        return specs
    new = object.__new__
    set_key, set_shape, set_dtype, set_nbytes, set_file = _SPEC_SETTERS
    for key, t in tensors.items():
        if type(t) is TensorRef:
            shape, dtype = t[0], t[3]
            spec = new(TensorSpec)
            set_key(spec, key)
            set_shape(spec, shape)
            set_dtype(spec, dtype.name)
            set_nbytes(spec, prod(shape) * dtype.itemsize)
            set_file(spec, file)
            specs[key] = spec
    return specs
