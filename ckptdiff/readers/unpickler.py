"""A restricted unpickler for torch checkpoints: tensors become specs, nothing is imported or run.

Shared by the torch zip reader, the legacy/plain pickle reader and (later) the hub reader: it
works on the bytes of one pickle and never touches a file.

How it stays safe:

- ``find_class`` never imports anything. An exact ``(module, name)`` allow-list maps torch's
  rebuild functions, storage types, dtypes, ``torch.Size``... to fakes of ours; every other
  global becomes a placeholder class (a subclass of :class:`Opaque`) that accepts any arguments
  and state and runs nothing, and is reported as a :class:`~ckptdiff.types.Finding`.
- ``persistent_load`` accepts only torch's storage records and returns a :class:`StorageRef`
  (key, dtype, element count): storage bytes are never read.
- Every object a pickle can reach is immutable (builtin types, our slotted fakes, placeholder
  classes with a read-only metaclass), so ``BUILD`` cannot rewire our own code between files.
- Before the C unpickler runs, :func:`scan_pickle` walks the opcodes once to check that every
  length fits in the data and that no memo index is absurd (CPython's C unpickler allocates
  ``8 * 2 * index`` bytes for ``LONG_BINPUT index``).
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import contextvars
import dataclasses
import gc
import io
import pickle
import pickletools
import re
import reprlib
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Literal

from ckptdiff.errors import ReadError, UnsafeUnreadableError
from ckptdiff.types import DTYPE_SIZES, Finding

__all__ = [
    "MAX_PICKLE_SIZE",
    "MAX_SECONDS",
    "UnsafeUnreadableError",
    "ALLOWED_GLOBALS",
    "BENIGN_GLOBALS",
    "DType",
    "Opaque",
    "StorageRef",
    "TensorRef",
    "UnsizedTensor",
    "Unpickled",
    "is_tensor",
    "scan_pickle",
    "short_repr",
    "unpickle",
]

#: Largest pickle (``data.pkl``, or the object pickle of a legacy file) we agree to read.
MAX_PICKLE_SIZE = 1 << 30
#: Largest storage, in elements, a storage record may declare (2**62, like torch's int64 sizes).
MAX_NUMEL = 1 << 62
#: Largest tensor rank accepted.
MAX_NDIM = 64
#: Largest ``bytes``/``bytearray`` a pickle may ask us to build from a count.
MAX_BYTES_ARG = 1 << 20
#: Distinct globals outside the allow-list reported one by one; the rest share one placeholder.
MAX_DISTINCT_GLOBALS = 10_000

StorageForm = Literal["zip", "legacy", "none"]


class PickleDataError(ValueError):
    """Raised by the fakes when the pickle's data is inconsistent (turned into ReadError)."""


# --- immutable fakes -----------------------------------------------------------------------------


class _Frozen:
    """Slotted and read-only after construction: ``BUILD`` cannot alter it."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def _init(self, **values: Any) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)


class DType(_Frozen):
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


class StorageType(_Frozen):
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


class UnsizedTensor(_Frozen):
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


# --- placeholders for globals outside the allow-list ---------------------------------------------


class _OpaqueMeta(type):
    """Metaclass of placeholder classes: their attributes cannot be set or deleted."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise AttributeError(f"placeholder class {cls.__name__} is read-only")

    def __delattr__(cls, name: str) -> None:
        raise AttributeError(f"placeholder class {cls.__name__} is read-only")

    def __repr__(cls) -> str:
        module, name = getattr(cls, "pickle_module", ""), getattr(cls, "pickle_name", "")
        return f"<placeholder {module}.{name}>"


class Opaque(metaclass=_OpaqueMeta):
    """Base of the placeholder classes standing for globals we never import.

    An instance records what the pickle gave it (call arguments, ``BUILD`` state, items appended
    or set) and does nothing else, so ``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``BUILD``, ``INST``,
    ``OBJ``, ``APPENDS`` and ``SETITEMS`` all succeed without running code.
    """

    __slots__ = ("args", "kwargs", "state", "items", "listitems")
    pickle_module = ""
    pickle_name = ""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: list[tuple[Any, Any]]
    listitems: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        _tick()
        self = object.__new__(cls)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "state", None)
        object.__setattr__(self, "items", [])
        object.__setattr__(self, "listitems", [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("placeholder objects are read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("placeholder objects are read-only")

    def __setstate__(self, state: Any) -> None:
        _tick()
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        _tick()
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        """Record an item (``APPEND`` on a list subclass)."""
        _tick()
        self.listitems.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        """Record items (``APPENDS`` on a list subclass)."""
        self.listitems.extend(values)

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:
        return type(self)(*args, **kwargs)

    @classmethod
    def qualified_name(cls) -> str:
        """``module.name`` of the global this placeholder stands for."""
        return f"{cls.pickle_module}.{cls.pickle_name}"

    def __repr__(self) -> str:
        return f"<{type(self).qualified_name()} placeholder>"


def _placeholder(module: str, name: str) -> type[Opaque]:
    cls_name = re.sub(r"\W", "_", name)[:64] or "_"
    return _OpaqueMeta(  # type: ignore[return-value]
        cls_name,
        (Opaque,),
        {"__slots__": (), "pickle_module": module, "pickle_name": name},
    )


# --- fakes of the allowed globals -----------------------------------------------------------------


class _Fake(_Frozen):
    """An allowed global: a read-only callable wrapping one of our functions."""

    __slots__ = ("qualname", "fn")
    qualname: str
    fn: Callable[..., Any] | None

    def __init__(self, qualname: str, fn: Callable[..., Any] | None) -> None:
        self._init(qualname=qualname, fn=fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _tick()
        if self.fn is None:
            raise PickleDataError(f"'{self.qualname}' is called, which a torch pickle never does")
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<fake {self.qualname}>"


def _int(value: Any, what: str, low: int = 0, high: int = MAX_NUMEL) -> int:
    if type(value) is not int or not low <= value <= high:
        raise PickleDataError(f"{what} must be an integer in [{low}, {high}], got {_short(value)}")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is not tuple:
        if not isinstance(value, (tuple, list)):
            raise PickleDataError(f"{what} must be a tuple of integers, got {_short(value)}")
        value = tuple(value)
    if len(value) > MAX_NDIM:
        raise PickleDataError(f"{what} has {len(value)} dimensions, more than {MAX_NDIM}")
    for v in value:
        if type(v) is not int or not 0 <= v <= MAX_NUMEL:
            raise PickleDataError(f"{what} must hold non-negative integers, got {_short(value)}")
    return value  # type: ignore[no-any-return]


def _dtype(value: Any, what: str) -> DType:
    if not isinstance(value, DType):
        raise PickleDataError(f"{what} must be a torch dtype, got {_short(value)}")
    return value


_new_tuple = tuple.__new__


def _tensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, dtype: DType | None = None
) -> TensorRef:
    """Check one tensor's geometry against its storage and record it (the hot path)."""
    if type(storage) is not StorageRef:
        raise PickleDataError(f"a tensor's storage must be a storage record, got {_short(storage)}")
    if type(size) is not tuple or type(stride) is not tuple:
        size, stride = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    if type(storage_offset) is not int or not 0 <= storage_offset <= MAX_NUMEL:
        raise PickleDataError(f"a tensor's storage offset is {_short(storage_offset)}")
    ndim = len(size)
    if ndim != len(stride) or ndim > MAX_NDIM:
        raise PickleDataError(
            f"a tensor's size {_short(size)} and stride {_short(stride)} do not fit together"
        )
    extent = storage_offset + 1
    for s, st in zip(size, stride, strict=True):
        if type(s) is not int or type(st) is not int or s < 0 or st < 0 or s > MAX_NUMEL:
            raise PickleDataError(
                f"a tensor's size {_short(size)} and stride {_short(stride)} must hold "
                "non-negative integers"
            )
        extent += (s - 1) * st  # past a 0 size, the extent is not checked: the tensor is empty
    if dtype is None:
        dtype = storage[1]
        too_big = extent > storage[2]  # itemsizes are >= 1
    else:
        too_big = extent * dtype.itemsize > storage[2] * storage[1].itemsize
    if too_big and 0 not in size:
        raise PickleDataError(
            f"a {dtype.name} tensor of shape {list(size)}, stride {list(stride)} and offset "
            f"{storage_offset} needs {extent} elements but its storage '{storage[0]}' holds "
            f"{storage.nbytes // dtype.itemsize}"
        )
    return _new_tuple(TensorRef, (size, stride, storage_offset, dtype, storage, False))  # type: ignore[no-any-return]


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRef:
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> TensorRef:
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> TensorRef:
    return _tensor(storage, storage_offset, size, stride, _dtype(dtype, "a tensor's dtype"))


def _rebuild_qtensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    quantizer_params: Any,
    requires_grad: Any,
    backward_hooks: Any,
) -> TensorRef:
    return _tensor(storage, storage_offset, size, stride)


def _as_tensor(data: Any) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise PickleDataError(f"a parameter's data must be a tensor, got {_short(data)}")
    return data


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> TensorRef:
    return _as_tensor(data).as_parameter()


def _rebuild_parameter_with_state(
    data: Any, requires_grad: Any, backward_hooks: Any, state: Any
) -> TensorRef:
    return _as_tensor(data).as_parameter()


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if not callable(func) or not isinstance(args, tuple):
        raise PickleDataError("_rebuild_from_type_v2 needs a function and an argument tuple")
    result = func(*args)
    if isinstance(result, TensorRef) and new_type is _PARAMETER:
        return result.as_parameter()
    return result


def _rebuild_meta_tensor_no_storage(
    dtype: Any, size: Any, stride: Any, requires_grad: Any = False
) -> TensorRef:
    shape, strides = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    return TensorRef(shape, strides, 0, _dtype(dtype, "a tensor's dtype"), None)


def _rebuild_wrapper_subclass(
    cls: Any,
    dtype: Any,
    size: Any,
    stride: Any,
    storage_offset: Any,
    layout: Any,
    device: Any,
    requires_grad: Any,
) -> TensorRef:
    shape, strides = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    offset = _int(storage_offset, "a tensor's storage offset")
    return TensorRef(shape, strides, offset, _dtype(dtype, "a tensor's dtype"), None)


def _rebuild_device_tensor(data: Any, dtype: Any, device: Any, requires_grad: Any) -> Any:
    if isinstance(data, TensorRef):
        dt = _dtype(dtype, "a tensor's dtype")
        return TensorRef(data.shape, data.stride, data.storage_offset, dt, data.storage)
    return UnsizedTensor("a tensor rebuilt from a numpy array")


def _unsized(reason: str) -> Callable[..., UnsizedTensor]:
    def build(*args: Any, **kwargs: Any) -> UnsizedTensor:
        return UnsizedTensor(reason)

    return build


def _size(value: Any = ()) -> tuple[int, ...]:
    return _ints(value, "torch.Size")


def _device(*args: Any) -> str:
    if not args or not all(isinstance(a, (str, int)) for a in args):
        raise PickleDataError(
            f"torch.device arguments must be a string and an index, got {_short(args)}"
        )
    return ":".join(str(a) for a in args)


def _parameter(data: Any = None, requires_grad: Any = True) -> TensorRef:
    return _as_tensor(data).as_parameter()


_TEXT_CODECS = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "utf-8", "utf8", "ascii"}


def _codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # protocol 2 pickles bytes as _codecs.encode(str, "latin1"); refuse every other codec
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise PickleDataError("_codecs.encode is given something other than text")
    if encoding.lower() not in _TEXT_CODECS:
        raise PickleDataError(f"_codecs.encode asks for the codec {_short(encoding)}")
    return obj.encode(encoding)


def _bytes_like(kind: type) -> Callable[..., Any]:
    def build(source: Any = b"", *args: Any) -> Any:
        if isinstance(source, int):
            source = _int(source, f"{kind.__name__}() size", 0, MAX_BYTES_ARG)
        elif isinstance(source, str):
            return (
                _codecs_encode(source, *args)
                if kind is bytes
                else kind(_codecs_encode(source, *args))
            )
        elif not isinstance(source, (bytes, bytearray, list, tuple)):
            raise PickleDataError(f"{kind.__name__}() is given {type(source).__name__}")
        return kind(source)

    return build


def _storage_class(name: str) -> StorageType:
    return StorageType(name, DTYPES[STORAGE_DTYPES[name]])


_PARAMETER = _Fake("torch.nn.parameter.Parameter", _parameter)
_TENSOR_CLASS = _Fake("torch.Tensor", None)


def _build_allowed() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    rebuilds: dict[str, Callable[..., Any]] = {
        "_rebuild_tensor": _rebuild_tensor,
        "_rebuild_tensor_v2": _rebuild_tensor_v2,
        "_rebuild_tensor_v3": _rebuild_tensor_v3,
        "_rebuild_qtensor": _rebuild_qtensor,
        "_rebuild_parameter": _rebuild_parameter,
        "_rebuild_parameter_with_state": _rebuild_parameter_with_state,
        "_rebuild_meta_tensor_no_storage": _rebuild_meta_tensor_no_storage,
        "_rebuild_wrapper_subclass": _rebuild_wrapper_subclass,
        "_rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor,
        "_rebuild_device_tensor_from_numpy": _rebuild_device_tensor,
        "_rebuild_sparse_tensor": _unsized("a sparse tensor"),
        "_rebuild_nested_tensor": _unsized("a nested tensor"),
    }
    for name, fn in rebuilds.items():
        allowed[("torch._utils", name)] = _Fake(f"torch._utils.{name}", fn)
    allowed[("torch._tensor", "_rebuild_from_type_v2")] = _Fake(
        "torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2
    )
    for name in STORAGE_DTYPES:
        allowed[("torch", name)] = _storage_class(name)
        allowed[("torch.cuda", name)] = _storage_class(name)
    untyped = StorageType("UntypedStorage", DTYPES["uint8"])
    allowed[("torch.storage", "UntypedStorage")] = untyped
    allowed[("torch", "UntypedStorage")] = untyped
    allowed[("torch.storage", "TypedStorage")] = StorageType("TypedStorage", DTYPES["uint8"])
    for name, dtype in DTYPES.items():
        allowed[("torch", name)] = dtype
    for name in (
        "strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc",
        "_mkldnn", "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
        "per_channel_symmetric", "per_channel_affine_float_qparams",
    ):  # fmt: skip
        allowed[("torch", name)] = _Fake(f"torch.{name}", None)
    allowed[("torch.serialization", "_get_layout")] = _Fake(
        "torch.serialization._get_layout", lambda name: _Fake(f"layout {name}", None)
    )
    allowed[("torch", "Size")] = _Fake("torch.Size", _size)
    allowed[("torch", "device")] = _Fake("torch.device", _device)
    allowed[("torch", "Tensor")] = _TENSOR_CLASS
    allowed[("torch._tensor", "Tensor")] = _TENSOR_CLASS
    allowed[("torch.nn.parameter", "Parameter")] = _PARAMETER
    allowed[("collections", "OrderedDict")] = OrderedDict
    for builtin in (set, frozenset, slice, complex):
        allowed[("builtins", builtin.__name__)] = builtin
    allowed[("builtins", "bytes")] = _Fake("builtins.bytes", _bytes_like(bytes))
    allowed[("builtins", "bytearray")] = _Fake("builtins.bytearray", _bytes_like(bytearray))
    allowed[("_codecs", "encode")] = _Fake("_codecs.encode", _codecs_encode)
    return allowed


#: ``(module, name)`` -> our fake; nothing else is ever resolved.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _build_allowed()

#: Data types that real training checkpoints hold and that are harmless to construct: reported
#: with severity ``info``, still never imported.
BENIGN_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("argparse", "Namespace"),
        *(("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePath",
                                    "PurePosixPath", "PureWindowsPath")),
        *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
          for n in ("scalar", "_reconstruct")),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *(("omegaconf." + m, n) for m, n in (
            ("dictconfig", "DictConfig"), ("listconfig", "ListConfig"),
            ("base", "ContainerMetadata"), ("base", "Metadata"), ("nodes", "AnyNode"),
            ("nodes", "StringNode"), ("nodes", "IntegerNode"), ("nodes", "FloatNode"),
            ("nodes", "BooleanNode"), ("nodes", "PathNode"), ("nodes", "BytesNode"))),
        ("collections", "defaultdict"),
        ("collections", "Counter"),
        ("collections", "deque"),
        *(("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")),
        *(("typing", n) for n in ("Any", "Union", "Optional", "List", "Dict", "Tuple")),
        *(("builtins", n) for n in ("dict", "list", "tuple", "int", "float", "bool", "str",
                                     "object", "NoneType", "range")),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
        *(("torch", n) for n in ("FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor",
                                 "LongTensor", "IntTensor", "ShortTensor", "CharTensor",
                                 "ByteTensor", "BoolTensor")),
    ]
)  # fmt: skip
_NUMPY_DTYPE_CLASS = re.compile(r"[A-Za-z0-9]+DType")


def is_benign(module: str, name: str) -> bool:
    """Whether a global outside the allow-list is a known harmless data type."""
    if (module, name) in BENIGN_GLOBALS:
        return True
    return module == "numpy.dtypes" and _NUMPY_DTYPE_CLASS.fullmatch(name) is not None


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Apply Python 2 -> 3 renames, as the stdlib unpickler does for protocols < 3."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    if module in _compat_pickle.IMPORT_MAPPING:
        return _compat_pickle.IMPORT_MAPPING[module], name
    return module, name


# --- opcode scan ---------------------------------------------------------------------------

_ARG_SIZE: list[int | None] = [None] * 256
for _op in pickletools.opcodes:
    _ARG_SIZE[ord(_op.code)] = 0 if _op.arg is None else _op.arg.n
_STOP, _LONG_BINPUT, _PUT, _GLOBAL, _INST, _BINUNICODE = b".rpciX"
_FRAME = 0x95
#: copyreg's extension-code opcodes: resolved through a process-wide registry and cache, so a
#: file using them is read with :class:`_PyRestrictedUnpickler` (see :func:`unpickle`).
_EXT_OPS = frozenset((0x82, 0x83, 0x84))
_SLOW_OPS = frozenset((_STOP, _LONG_BINPUT, _FRAME, *_EXT_OPS))
#: LONG1, LONG4, LONG, INT: the only opcodes that push integers beyond 32 bits.
_BIG_INT_OPS = frozenset(b"\x8a\x8bLI")
#: Integers beyond 32 bits accepted in one pickle: ints equal modulo 2**61 - 1 hash alike, so
#: a dict of many of them costs quadratic time inside the C unpickler, where no deadline runs.
MAX_BIG_INTS = 5_000
#: One or more opcodes whose arguments have fixed sizes and cannot be harmful, matched at C speed;
#: ``LONG_BINPUT`` is included when its index is below 2**20 (16 MB of memo at worst), and
#: ``BINUNICODE`` when its text is shorter than :data:`_SHORT_TEXT` bytes and all there. Runs of
#: argument-less opcodes are taken in one step (an opcode flood costs one regex iteration).
#: Alternatives start with disjoint opcodes and go most common in torch pickles first; on
#: Python >= 3.11 the repeat is possessive (no backtracking state kept per opcode).
_SHORT_TEXT = 128


def _op_class(size: int) -> bytes:
    return (
        b"["
        + b"".join(
            re.escape(bytes([c]))
            for c, n in enumerate(_ARG_SIZE)
            if n == size and c not in _SLOW_OPS
        )
        + b"]"
    )


def _safe_run_pattern(possessive: bool) -> bytes:
    sizes = sorted({n for n in _ARG_SIZE if n is not None and n > 0})
    alternatives = [rb"r..[\x00-\x0f]\x00", _op_class(1) + b".", _op_class(0) + b"+"]
    if possessive:  # a text alternative needs the possessive repeat to pay off
        alternatives.append(
            b"X(?:"
            + b"|".join(re.escape(bytes([i, 0, 0, 0])) + b".{%d}" % i for i in range(_SHORT_TEXT))
            + b")"
        )
    alternatives += [_op_class(size) + b"." * size for size in sizes if size > 1]
    return b"(?:" + b"|".join(alternatives) + (b")*+" if possessive else b")*")


_SAFE_RUN = re.compile(_safe_run_pattern(sys.version_info >= (3, 11)), re.DOTALL)
#: Bytes the opcode scan walks between two looks at the clock.
_SCAN_CHUNK = 1 << 20
#: Most seconds one pickle may take to scan and unpickle (read at call time); a file built to
#: be slow is refused instead of hanging the caller.
MAX_SECONDS = 60.0

_clock = threading.local()
#: Calls of :func:`_tick` between two looks at the clock: a look costs more than most of the
#: calls it guards, and 256 of the slowest (a new placeholder class each) take milliseconds.
_TICK_EVERY = 256
_ticks_left = 0


def _check_clock() -> None:
    """Raise once the current unpickle has run past its deadline."""
    if time.monotonic() > getattr(_clock, "deadline", float("inf")):
        raise PickleDataError(f"reading the pickle took more than {MAX_SECONDS:g} seconds")


def _tick() -> None:
    """:func:`_check_clock` every :data:`_TICK_EVERY` calls (cheap; called for every record).

    The countdown is shared by threads; each thread's look is at its own deadline, and a racy
    decrement can only make a look come sooner.
    """
    global _ticks_left
    if _ticks_left > 0:
        _ticks_left -= 1
        return
    _ticks_left = _TICK_EVERY
    _check_clock()


def scan_pickle(data: bytes, start: int = 0) -> int | None:
    """Walk one pickle's opcodes without building anything, and find its end.

    Checks that every opcode is known, that every length-prefixed argument (and every frame)
    fits in the data, and that no memo index is larger than the data (the C unpickler would
    allocate memory for it).

    Args:
        data: bytes holding the pickle from ``start``.
        start: where the pickle begins.

    Returns:
        The offset just after the pickle's ``STOP``, or None when the data ends first (read more,
        or the pickle is truncated).

    Raises:
        PickleDataError: an unknown opcode or an absurd memo index.

    Example:
        >>> scan_pickle(b"\\x80\\x02K\\x01.")
        5
    """
    return _scan(data, start)[0]


def _scan(data: bytes, start: int = 0) -> tuple[int | None, bool]:
    """:func:`scan_pickle`, also telling whether the pickle uses extension codes."""
    n = len(data)
    limit = max(n, 1 << 16)
    pos = start
    arg_size = _ARG_SIZE
    match = _SAFE_RUN.match
    from_bytes = int.from_bytes
    uses_ext = False
    big_ints = 0
    next_tick = pos + _SCAN_CHUNK
    while True:
        pos = match(data, pos, min(n, next_tick)).end()  # type: ignore[union-attr]
        if pos >= next_tick:
            _check_clock()
            next_tick = pos + _SCAN_CHUNK
            continue
        if pos >= n:
            return None, uses_ext
        op = data[pos]
        if op == _BINUNICODE:  # the common case in torch pickles: keys
            pos += 5 + from_bytes(data[pos + 1 : pos + 5], "little")
            if pos > n:
                return None, uses_ext
            continue
        pos += 1
        size = arg_size[op]
        if size is None:
            raise PickleDataError(f"unknown pickle opcode 0x{op:02x} at byte {pos - 1}")
        if op in _BIG_INT_OPS:
            big_ints += 1
            if big_ints > MAX_BIG_INTS:
                raise PickleDataError(
                    f"it holds more than {MAX_BIG_INTS:,} integers beyond 32 bits, the makings "
                    "of a dict whose keys all hash alike (minutes of work inside the unpickler); "
                    "torch never writes that. Raise ckptdiff.readers.unpickler.MAX_BIG_INTS if "
                    "you trust the file"
                )
        if size >= 0:
            if op == _STOP:
                return pos, uses_ext
            if op == _LONG_BINPUT and from_bytes(data[pos : pos + 4], "little") > limit:
                raise PickleDataError(f"memo index at byte {pos - 1} is absurdly large")
            if op == _FRAME and pos + 8 + from_bytes(data[pos : pos + 8], "little") > n:
                return None, uses_ext  # the frame's bytes are not all there
            uses_ext = uses_ext or op in _EXT_OPS
            pos += size
        elif size == pickletools.UP_TO_NEWLINE:
            end = data.find(b"\n", pos)
            if end < 0:
                return None, uses_ext
            if op == _PUT:
                digits = bytes(data[pos:end]).strip()
                if len(digits) > 12 or (digits.isdigit() and int(digits) > limit):
                    raise PickleDataError(f"memo index at byte {pos - 1} is absurdly large")
            if op in (_GLOBAL, _INST):
                end = data.find(b"\n", end + 1)
                if end < 0:
                    return None, uses_ext
            pos = end + 1
        elif size == pickletools.TAKEN_FROM_ARGUMENT1:
            if pos >= n:
                return None, uses_ext
            pos += 1 + data[pos]
        elif size in (pickletools.TAKEN_FROM_ARGUMENT4, pickletools.TAKEN_FROM_ARGUMENT4U):
            pos += 4 + from_bytes(data[pos : pos + 4], "little", signed=False)
        else:  # TAKEN_FROM_ARGUMENT8U
            pos += 8 + from_bytes(data[pos : pos + 8], "little", signed=False)
        if pos > n:
            return None, uses_ext


# --- the unpickler ------------------------------------------------------------------------------


@dataclass
class Unpickled:
    """One pickle, unpickled with fakes.

    Attributes:
        root: the object the pickle holds (dicts, lists, :class:`TensorRef`, placeholders...).
        storages: root storages by key, as the storage records declared them.
        findings: globals outside the allow-list, odd records.
    """

    root: Any
    storages: dict[str, StorageRef] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


class _Restricted:
    """``find_class`` and ``persistent_load`` of both unpicklers below."""

    def __init__(
        self,
        file: io.BufferedIOBase,
        storage_form: StorageForm,
        extra_globals: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        super().__init__(file, encoding="utf-8", errors="surrogateescape")  # type: ignore[call-arg]
        self.storage_form = storage_form
        self.extra_globals = extra_globals or {}
        self.storages: dict[str, StorageRef] = {}
        self.views: dict[str, StorageRef] = {}
        self.placeholders: dict[tuple[str, str], type[Opaque]] = {}
        self.findings: list[Finding] = []

    def find_class(self, module: str, name: str) -> Any:
        _tick()
        module, name = _py3_name(module, name)
        fake = ALLOWED_GLOBALS.get((module, name))
        if fake is None:
            fake = self.extra_globals.get((module, name))
        if fake is not None:
            return fake
        cls = self.placeholders.get((module, name))
        if cls is None:
            if len(self.placeholders) >= MAX_DISTINCT_GLOBALS:
                module, name = "<more globals>", "<not listed>"
                cls = self.placeholders.get((module, name))
                if cls is not None:
                    return cls
            cls = self.placeholders[(module, name)] = _placeholder(module, name)
            self.findings.append(_global_finding(module, name))
        return cls

    def persistent_load(self, pid: Any) -> Any:
        _tick()
        if type(pid) is not tuple or not pid:
            raise PickleDataError(f"unexpected persistent id {_short(pid)}")
        kind = pid[0]
        if kind == "storage" and self.storage_form == "zip" and len(pid) == 5:
            storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
            if (
                type(storage_type) is StorageType
                and type(key) is str
                and key
                and type(location) is str
                and type(numel) is int
                and 0 <= numel <= MAX_NUMEL
                and key not in self.storages
            ):  # the common case, a new storage, with the checks of _storage inlined
                ref = _new_tuple(StorageRef, (key, storage_type.dtype, numel, location, key))
                self.storages[key] = ref
                return ref
            return self._storage(storage_type, key, location, numel)
        kind = _ascii(kind)
        if kind == "storage" and self.storage_form == "legacy" and len(pid) == 6:
            root = self._storage(pid[1], _ascii(pid[2]), pid[3], pid[4])
            return root if pid[5] is None else self._view(root, pid[5])
        if kind == "module" and self.storage_form == "legacy" and len(pid) == 4:
            return pid[1]  # a pickled nn.Module class: already a placeholder, and reported
        raise PickleDataError(
            f"unexpected persistent id {_short(pid)} (this is not a torch storage record)"
        )

    def _storage(self, storage_type: Any, key: Any, location: Any, numel: Any) -> StorageRef:
        seen = self.storages.get(key) if type(key) is str else None
        if (
            seen is not None
            and storage_type.__class__ is StorageType
            and storage_type.dtype is seen[1]
            and numel == seen[2]
            and type(numel) is int
        ):
            return seen
        if type(storage_type) is not StorageType:
            raise PickleDataError(
                f"storage record names {_short(storage_type)}, not a storage type"
            )
        if type(key) is not str or not key:
            raise PickleDataError(f"storage key must be a non-empty string, got {_short(key)}")
        location = _ascii(location)
        if type(location) is not str:
            raise PickleDataError(f"storage '{key}' has a location that is not a string")
        numel = _int(numel, f"storage '{key}' size")
        ref = StorageRef(key, storage_type.dtype, numel, location, key)
        if seen is None:
            self.storages[key] = ref
        elif seen.nbytes != ref.nbytes:
            raise PickleDataError(
                f"storage '{key}' is declared as {seen.nbytes} bytes and as {ref.nbytes} bytes"
            )
        return ref

    def _view(self, root: StorageRef, view: Any) -> StorageRef:
        if not isinstance(view, tuple) or len(view) != 3:
            raise PickleDataError(f"storage view record {_short(view)} is not (key, offset, size)")
        key, offset, size = _ascii(view[0]), view[1], view[2]
        if not isinstance(key, str):
            raise PickleDataError("storage view key must be a string")
        offset = _int(offset, f"storage view '{key}' offset")
        size = _int(size, f"storage view '{key}' size")
        if offset + size > root.numel:
            raise PickleDataError(
                f"storage view '{key}' covers elements {offset}..{offset + size} of storage "
                f"'{root.key}', which holds {root.numel}"
            )
        return self.views.setdefault(
            key, StorageRef(key, root.dtype, size, root.location, root.key)
        )



class _RestrictedUnpickler(_Restricted, pickle.Unpickler):
    """The C unpickler with our ``find_class`` and ``persistent_load``."""


class _PyRestrictedUnpickler(_Restricted, pickle._Unpickler):  # type: ignore[name-defined,misc]
    """The pure-Python unpickler, for pickles that use copyreg extension codes.

    The C unpickler resolves ``EXT1``/``EXT2``/``EXT4`` through :mod:`copyreg`'s process-wide
    registry and a process-wide cache of resolved objects: a code another library registered
    (or another unpickler already resolved) would reach a real global without ``find_class``.
    Here a code never consults either: it is a global outside the allow-list, reported by its
    number, and becomes a placeholder.
    """

    def get_extension(self, code: int) -> None:
        self.append(  # type: ignore[attr-defined]
            self.find_class("copyreg._extension_registry", f"code {code}")
        )


def _ascii(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return value
    return value


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


_short = short_repr


def _printable(text: str, limit: int = 200) -> str:
    """``text`` on one line and at most ``limit`` characters, for messages and keys."""
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _global_finding(module: str, name: str) -> Finding:
    module, name = _printable(module), _printable(name)
    qualified = f"{module}.{name}"
    data = {"module": module, "name": name}
    if is_benign(module, name):
        return Finding(
            kind="non_tensor_object",
            message=(
                f"the pickle holds a '{qualified}' object; it was not imported (its entries are "
                "reported without it)"
            ),
            keys=(qualified,),
            severity="info",
            data=data,
        )
    return Finding(
        kind="unsafe_global",
        message=(
            f"global '{qualified}' is not on the allow-list: loading this file with "
            "torch.load(weights_only=False) would import and call it"
        ),
        keys=(qualified,),
        severity="security",
        data=data,
    )




#: The security findings of every pickle unpickled in the current :func:`witness` block.
_WITNESS: contextvars.ContextVar[list[Finding] | None] = contextvars.ContextVar(
    "ckptdiff_pickle_witness", default=None
)


@contextlib.contextmanager
def witness() -> Iterator[list[Finding]]:
    """Collect the security findings of every pickle unpickled inside the block.

    Whatever a format reader later does with a pickle (skips it, reads it for shapes only,
    crashes on the next record), its findings are here: the caller reports them all.

    Example:
        >>> with witness() as seen:
        ...     _ = unpickle(b"\\x80\\x02cos\\nsystem\\n.", "x.pkl")
        >>> seen[0].keys
        ('os.system',)
    """
    seen: list[Finding] = []
    outer = _WITNESS.get()
    token = _WITNESS.set(seen)
    try:
        yield seen
    finally:
        _WITNESS.reset(token)
        if outer is not None:
            outer.extend(seen)


def _witnessed(findings: Iterable[Finding], context: str) -> None:
    seen = _WITNESS.get()
    if seen is not None:
        seen.extend(
            dataclasses.replace(f, data={**(f.data or {}), "pickle": context})
            for f in findings if f.severity == "security"
        )


#: Opcodes walked by :func:`globals_in` before it gives up (a bound on its time).
MAX_WALKED_OPCODES = 2_000_000


def globals_in(
    data: bytes, start: int = 0, extra: Mapping[tuple[str, str], Any] | None = None
) -> list[Finding]:
    """The findings of every global named in ``data``'s opcodes, without unpickling.

    Walks pickle after pickle until the data ends or stops being a pickle: for the bytes a
    full unpickle cannot read (garbage after a payload, pickles past a count limit). A
    ``STACK_GLOBAL`` takes the two strings pushed last (memo included), as the unpickler does.
    """
    names: dict[tuple[str, str], None] = {}
    strings: list[str] = []
    memo: dict[int, str] = {}
    walked = 0
    stream = io.BytesIO(data)
    stream.seek(start)
    try:
        while stream.tell() < len(data) and walked < MAX_WALKED_OPCODES:
            for op, arg, _ in pickletools.genops(stream):
                walked += 1
                if walked >= MAX_WALKED_OPCODES:
                    break
                kind = op.name
                if kind in ("GLOBAL", "INST"):
                    module, _, attr = str(arg).partition(" ")
                    names[_py3_name(module, attr)] = None
                elif kind == "STACK_GLOBAL" and len(strings) >= 2:
                    names[_py3_name(strings[-2], strings[-1])] = None
                elif isinstance(arg, str) and "UNICODE" in kind:
                    strings = [*strings[-1:], arg]
                elif kind in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE") and strings:
                    memo[arg if arg is not None else len(memo)] = strings[-1]
                elif kind in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                    strings = [*strings[-1:], memo[arg]]
                elif kind == "EXT1" or kind == "EXT2" or kind == "EXT4":
                    names[("copyreg._extension_registry", f"code {arg}")] = None
    except Exception:  # the walk ends where the pickle stops being one
        pass
    return [
        f for module, name in names
        if (f := _global_finding(module, name)).severity == "security"
        and (module, name) not in ALLOWED_GLOBALS and (module, name) not in (extra or {})
    ]


def unpickle(
    data: bytes,
    name: str,
    *,
    context: str = "data.pkl",
    storage_form: StorageForm = "zip",
    extra_globals: Mapping[tuple[str, str], Any] | None = None,
) -> Unpickled:
    """Unpickle one pickle with fakes: nothing is imported, nothing is run.

    Args:
        data: exactly one pickle (ending at its ``STOP``); see :func:`scan_pickle`.
        name: the file, for messages.
        context: which pickle of the file this is, for messages (``data.pkl``).
        storage_form: the storage records to accept: ``zip`` (torch >= 1.6), ``legacy``
            (torch < 1.6) or ``none`` (a plain pickle: any storage record is an error).
        extra_globals: more ``(module, name) -> fake`` entries allowed for this pickle only
            (a format's own record types, e.g. torch.distributed.checkpoint's metadata); the
            fakes must be immutable or placeholder classes, and are never imported.

    Returns:
        The root object, the storages it declared and the findings.

    Raises:
        ReadError: the pickle is too large, malformed, truncated or inconsistent.

    Example:
        >>> unpickle(b"\\x80\\x02}q\\x00.", "x.pt").root
        {}
    """
    if len(data) > MAX_PICKLE_SIZE:
        raise ReadError(
            f"Cannot read '{name}' ({context}): the pickle is {len(data)} bytes, over the "
            f"{MAX_PICKLE_SIZE}-byte limit. Raise ckptdiff.readers.unpickler.MAX_PICKLE_SIZE if "
            "you trust its size."
        )
    global _ticks_left
    unpickler: _Restricted | None = None
    try:
        _clock.deadline = time.monotonic() + MAX_SECONDS
        _ticks_left = 0  # the first record looks at the clock
        end, uses_ext = _scan(data)
        if end is None:
            raise PickleDataError("the pickle ends before its STOP opcode (truncated?)")
        reader = io.BufferedReader(io.BytesIO(data), buffer_size=1 << 17)
        kind = _PyRestrictedUnpickler if uses_ext else _RestrictedUnpickler
        unpickler = kind(reader, storage_form, extra_globals)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # the load creates many small objects and no cycles worth collecting
        try:
            root = unpickler.load()
        finally:
            _clock.deadline = float("inf")
            if gc_was_enabled:
                gc.enable()
    except Exception as e:  # anything the C unpickler or a fake raises on bad data
        problem = " ".join(str(e).split())[:300] or type(e).__name__
        if isinstance(e, (RecursionError, MemoryError)):
            problem = f"{type(e).__name__}: the pickle nests too deep or is too large"
        if unpickler is not None:
            unsafe = [f for f in unpickler.findings if f.severity == "security"]
        else:  # the opcode walk failed before any record was built: name its globals anyway
            unsafe = globals_in(data, extra=extra_globals)
        _witnessed(unsafe, context)
        if not unsafe and isinstance(e, ReadError):
            raise
        if unsafe:
            # a payload next to a malformed record: the payload is what matters
            raise UnsafeUnreadableError(
                f"Cannot read '{name}' ({context}): it names "
                f"{', '.join(repr(f.keys[0]) for f in unsafe[:3])}"
                f"{' and more' if len(unsafe) > 3 else ''}, outside the allow-list "
                "(torch.load(weights_only=False) would import and call it), and then "
                f"{problem.rstrip('.')}. Do not load this file."
            ) from e
        raise ReadError(
            f"Cannot read '{name}' ({context}): {problem.rstrip('.')}. The file is corrupt, "
            "truncated or not a torch checkpoint; save or download it again."
        ) from e
    _witnessed(unpickler.findings, context)
    return Unpickled(root, unpickler.storages, unpickler.findings)
