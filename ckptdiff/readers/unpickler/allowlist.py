"""The allow-list: the exact ``(module, name)`` globals a torch pickle may name, mapped to fakes.

Torch's rebuild functions, storage types, dtypes, layouts, ``torch.Size``, ``torch.device``,
``nn.Parameter`` and a few builtins are resolved to read-only fakes of ours that check what the
pickle gives them and build records (:mod:`~ckptdiff.readers.unpickler.records`); nothing is
ever imported. :data:`ALLOWED_GLOBALS` is the whole list.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ckptdiff.readers.unpickler.deadline import tick
from ckptdiff.readers.unpickler.records import (
    DTYPES,
    MAX_BYTES_ARG,
    MAX_NDIM,
    MAX_NUMEL,
    STORAGE_DTYPES,
    DType,
    Frozen,
    PickleDataError,
    StorageRef,
    StorageType,
    TensorRef,
    UnsizedTensor,
    check_dtype,
    check_int,
    check_ints,
    short_repr,
)

__all__ = ["ALLOWED_GLOBALS"]


class _Fake(Frozen):
    """An allowed global: a read-only callable wrapping one of our functions."""

    __slots__ = ("qualname", "fn")
    qualname: str
    fn: Callable[..., Any] | None

    def __init__(self, qualname: str, fn: Callable[..., Any] | None) -> None:
        self._init(qualname=qualname, fn=fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tick()
        if self.fn is None:
            raise PickleDataError(f"'{self.qualname}' is called, which a torch pickle never does")
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<fake {self.qualname}>"


_new_tuple = tuple.__new__


def _tensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, dtype: DType | None = None
) -> TensorRef:
    """Check one tensor's geometry against its storage and record it (the hot path)."""
    if type(storage) is not StorageRef:
        raise PickleDataError(
            f"a tensor's storage must be a storage record, got {short_repr(storage)}"
        )
    if type(size) is not tuple or type(stride) is not tuple:
        size, stride = check_ints(size, "a tensor's size"), check_ints(stride, "a tensor's stride")
    if type(storage_offset) is not int or not 0 <= storage_offset <= MAX_NUMEL:
        raise PickleDataError(f"a tensor's storage offset is {short_repr(storage_offset)}")
    ndim = len(size)
    if ndim != len(stride) or ndim > MAX_NDIM:
        raise PickleDataError(
            f"a tensor's size {short_repr(size)} and stride {short_repr(stride)} do not fit "
            "together"
        )
    extent = storage_offset + 1
    for s, st in zip(size, stride, strict=True):
        if type(s) is not int or type(st) is not int or s < 0 or st < 0 or s > MAX_NUMEL:
            raise PickleDataError(
                f"a tensor's size {short_repr(size)} and stride {short_repr(stride)} must hold "
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
    return _tensor(storage, storage_offset, size, stride, check_dtype(dtype, "a tensor's dtype"))


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
        raise PickleDataError(f"a parameter's data must be a tensor, got {short_repr(data)}")
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
    shape, strides = check_ints(size, "a tensor's size"), check_ints(stride, "a tensor's stride")
    return TensorRef(shape, strides, 0, check_dtype(dtype, "a tensor's dtype"), None)


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
    shape, strides = check_ints(size, "a tensor's size"), check_ints(stride, "a tensor's stride")
    offset = check_int(storage_offset, "a tensor's storage offset")
    return TensorRef(shape, strides, offset, check_dtype(dtype, "a tensor's dtype"), None)


def _rebuild_device_tensor(data: Any, dtype: Any, device: Any, requires_grad: Any) -> Any:
    if isinstance(data, TensorRef):
        dt = check_dtype(dtype, "a tensor's dtype")
        return TensorRef(data.shape, data.stride, data.storage_offset, dt, data.storage)
    return UnsizedTensor("a tensor rebuilt from a numpy array")


def _unsized(reason: str) -> Callable[..., UnsizedTensor]:
    def build(*args: Any, **kwargs: Any) -> UnsizedTensor:
        return UnsizedTensor(reason)

    return build


def _size(value: Any = ()) -> tuple[int, ...]:
    return check_ints(value, "torch.Size")


def _device(*args: Any) -> str:
    if not args or not all(isinstance(a, (str, int)) for a in args):
        raise PickleDataError(
            f"torch.device arguments must be a string and an index, got {short_repr(args)}"
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
        raise PickleDataError(f"_codecs.encode asks for the codec {short_repr(encoding)}")
    return obj.encode(encoding)


def _bytes_like(kind: type) -> Callable[..., Any]:
    def build(source: Any = b"", *args: Any) -> Any:
        if isinstance(source, int):
            source = check_int(source, f"{kind.__name__}() size", 0, MAX_BYTES_ARG)
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
        "strided",
        "sparse_coo",
        "sparse_csr",
        "sparse_csc",
        "sparse_bsr",
        "sparse_bsc",
        "_mkldnn",
        "per_tensor_affine",
        "per_tensor_symmetric",
        "per_channel_affine",
        "per_channel_symmetric",
        "per_channel_affine_float_qparams",
    ):
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
