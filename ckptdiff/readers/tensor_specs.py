"""Tensor specs from unpickled tensor references: keys, shapes, dtypes and sizes, built fast."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import compress, repeat
from math import prod
from operator import attrgetter, is_, itemgetter, mul
from typing import Any

from ckptdiff.readers.unpickler.records import TensorRef
from ckptdiff.types import TensorSpec, new_specs

__all__ = ["specs_from_tensors"]


def specs_from_tensors(tensors: Mapping[str, Any], file: str | None) -> dict[str, TensorSpec]:
    """Turn the chosen tensors into :class:`TensorSpec`s (sized tensors only), in their order,
    in whole-list passes.

    Example:
        >>> from ckptdiff.readers.unpickler.records import DTYPES
        >>> ref = TensorRef((2, 3), (3, 1), 0, DTYPES["float16"], None)
        >>> specs_from_tensors({"w": ref, "n": 7}, "a.pt")
        {'w': TensorSpec(key='w', shape=(2, 3), dtype='float16', nbytes=12, file='a.pt')}
    """
    sized = list(map(is_, map(type, tensors.values()), repeat(TensorRef)))
    keys = list(compress(tensors, sized))
    refs = list(compress(tensors.values(), sized))
    shapes = list(map(itemgetter(0), refs))
    dtypes = list(map(itemgetter(3), refs))
    nbytes = list(map(mul, map(prod, shapes), map(attrgetter("itemsize"), dtypes)))
    return new_specs(keys, shapes, list(map(attrgetter("name"), dtypes)), nbytes, file)
