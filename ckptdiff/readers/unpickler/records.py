"""What the allowed fakes build from a pickle: immutable records of dtypes, storages and tensors.

A :class:`TensorRef` holds a tensor's shape, stride, offset, dtype and storage; a
:class:`StorageRef` a storage's key, dtype and element count, never its bytes. Both are tuples,
and the other records are slotted and read-only (:class:`Frozen`), so a pickle's ``BUILD`` cannot
alter them. :func:`check_int` and :func:`check_ints` validate the numbers a record is built from.
"""

from __future__ import annotations

import reprlib
from operator import itemgetter
from typing import Any

from ckptdiff.types import DTYPE_SIZES

__all__ = [
    "DTYPES",
    "MAX_BYTES_ARG",
    "MAX_NDIM",
    "MAX_NUMEL",
    "STORAGE_DTYPES",
    "DType",
    "Frozen",
    "PickleDataError",
    "StorageRef",
    "StorageType",
    "TensorRef",
    "UnsizedTensor",
    "check_dtype",
    "check_int",
    "check_ints",
    "is_tensor",
    "short_repr",
]

#: Largest storage, in elements, a storage record may declare (2**62, like torch's int64 sizes).
MAX_NUMEL = 1 << 62
#: Largest tensor rank accepted.
MAX_NDIM = 64
#: Largest ``bytes``/``bytearray`` a pickle may ask us to build from a count.
MAX_BYTES_ARG = 1 << 20


class PickleDataError(ValueError):
    """Raised by the fakes when the pickle's data is inconsistent (turned into ReadError)."""


class Frozen:
    """Slotted and read-only after construction: ``BUILD`` cannot alter it."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def _init(self, **values: Any) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)


class DType(Frozen):
    """A torch dtype, by name (``float32``) with its element size in bytes."""

    __slots__ = ("name", "itemsize")
    name: str
    itemsize: int

    def __init__(self, name: str, itemsize: int) -> None:
        self._init(name=name, itemsize=itemsize)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


#: Element sizes of dtypes torch has that :data:`~ckptdiff.types.DTYPE_SIZES` does not list.
_EXTRA_DTYPE_SIZES = {
    "bits1x8": 1,
    "bits2x4": 1,
    "bits4x2": 1,
    "bits8": 1,
    "bits16": 2,
    **{f"uint{i}": 1 for i in range(1, 8)},
    **{f"int{i}": 1 for i in range(1, 8)},
}
DTYPES: dict[str, DType] = {
    name: DType(name, int(size)) for name, size in {**DTYPE_SIZES, **_EXTRA_DTYPE_SIZES}.items()
}

#: Legacy storage class name -> dtype name.
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}


class StorageType(Frozen):
    """A storage class a pickle names (``torch.FloatStorage``, ``torch.storage.UntypedStorage``)."""

    __slots__ = ("name", "dtype")
    name: str
    dtype: DType

    def __init__(self, name: str, dtype: DType) -> None:
        self._init(name=name, dtype=dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class StorageRef(tuple):
    """A storage a tensor views: its record key, dtype and size, never its bytes.

    An immutable tuple ``(key, dtype, numel, location, root)``:

    Attributes:
        key: the storage record key (``archive/data/<key>`` in a zip).
        dtype: the storage's element type.
        numel: elements the storage holds.
        location: the device tag it was saved from (``cpu``, ``cuda:0``).
        root: for a legacy storage view, the key of the storage it views (else ``key``).
    """

    __slots__ = ()
    key = property(itemgetter(0))
    dtype = property(itemgetter(1))
    numel = property(itemgetter(2))
    location = property(itemgetter(3))
    root = property(itemgetter(4))

    def __new__(cls, key: str, dtype: DType, numel: int, location: str, root: str) -> StorageRef:
        return tuple.__new__(cls, (key, dtype, numel, location, root))

    @property
    def nbytes(self) -> int:
        """Bytes the storage holds."""
        return self[2] * self[1].itemsize  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"StorageRef({self[0]!r}, {self[1].name}, {self[2]})"


class TensorRef(tuple):
    """What a pickled tensor says about itself: shape, stride, offset, dtype, storage.

    An immutable tuple ``(shape, stride, storage_offset, dtype, storage, parameter)``; test for
    it before testing for ``tuple``.

    Attributes:
        shape: sizes per dimension.
        stride: strides per dimension, in elements.
        storage_offset: first element's index in the storage.
        dtype: the element type.
        storage: the storage it views, or None (meta tensors saved without storage).
        parameter: True for an ``nn.Parameter``.
    """

    __slots__ = ()
    shape = property(itemgetter(0))
    stride = property(itemgetter(1))
    storage_offset = property(itemgetter(2))
    dtype = property(itemgetter(3))
    storage = property(itemgetter(4))
    parameter = property(itemgetter(5))

    def __new__(
        cls,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
        storage_offset: int,
        dtype: DType,
        storage: StorageRef | None,
        parameter: bool = False,
    ) -> TensorRef:
        return tuple.__new__(cls, (shape, stride, storage_offset, dtype, storage, parameter))

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        n = 1
        for s in self[0]:
            n *= s
        return n

    def as_parameter(self) -> TensorRef:
        """The same tensor marked as an ``nn.Parameter``."""
        return TensorRef(self[0], self[1], self[2], self[3], self[4], True)

    def __repr__(self) -> str:
        return f"TensorRef({self[3].name}{list(self[0])})"


class UnsizedTensor(Frozen):
    """A tensor whose shape cannot be told without running code (sparse, nested, numpy-backed)."""

    __slots__ = ("reason",)
    reason: str

    def __init__(self, reason: str) -> None:
        self._init(reason=reason)

    def __repr__(self) -> str:
        return f"UnsizedTensor({self.reason})"


def is_tensor(value: Any) -> bool:
    """Whether an unpickled value stands for a tensor (sized or not)."""
    return isinstance(value, (TensorRef, UnsizedTensor))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 40, 40, 40


def short_repr(value: Any) -> str:
    """A bounded one-line repr of a value from the pickle, for messages."""
    if type(value) is int and value.bit_length() > 128:  # repr refuses > 4300 digits
        return f"<an integer of {value.bit_length()} bits>"
    try:
        text = _REPR.repr(value).replace("\n", "\\n")
    except Exception:  # a hostile value whose repr fails
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(value: Any, what: str, low: int = 0, high: int = MAX_NUMEL) -> int:
    """``value`` when it is an ``int`` in ``[low, high]``.

    Raises:
        PickleDataError: it is not (``what`` names it in the message).
    """
    if type(value) is not int or not low <= value <= high:
        raise PickleDataError(
            f"{what} must be an integer in [{low}, {high}], got {short_repr(value)}"
        )
    return value


def check_ints(value: Any, what: str) -> tuple[int, ...]:
    """``value`` as a tuple of at most :data:`MAX_NDIM` non-negative ints (a size or stride).

    Raises:
        PickleDataError: it is not.
    """
    if type(value) is not tuple:
        if not isinstance(value, (tuple, list)):
            raise PickleDataError(f"{what} must be a tuple of integers, got {short_repr(value)}")
        value = tuple(value)
    if len(value) > MAX_NDIM:
        raise PickleDataError(f"{what} has {len(value)} dimensions, more than {MAX_NDIM}")
    for v in value:
        if type(v) is not int or not 0 <= v <= MAX_NUMEL:
            raise PickleDataError(
                f"{what} must hold non-negative integers, got {short_repr(value)}"
            )
    return value  # type: ignore[no-any-return]


def check_dtype(value: Any, what: str) -> DType:
    """``value`` when it is one of our torch dtypes.

    Raises:
        PickleDataError: it is not.
    """
    if not isinstance(value, DType):
        raise PickleDataError(f"{what} must be a torch dtype, got {short_repr(value)}")
    return value
