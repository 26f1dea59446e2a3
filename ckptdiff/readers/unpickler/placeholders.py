"""Globals outside the allow-list: placeholder classes that run nothing, and their findings.

A pickle naming any global the allow-list does not hold gets a new subclass of :class:`Opaque`
instead: it records the arguments, state and items the pickle gives it and does nothing else.
:func:`global_finding` reports the global, as ``info`` for the harmless data types real
training checkpoints hold (:data:`BENIGN_GLOBALS`), as a ``security`` finding otherwise.
"""

from __future__ import annotations

import _compat_pickle
import re
from collections.abc import Iterable
from typing import Any

from ckptdiff.readers.unpickler.deadline import tick
from ckptdiff.types import Finding

__all__ = [
    "BENIGN_GLOBALS",
    "Opaque",
    "global_finding",
    "is_benign",
    "placeholder",
    "py3_name",
]


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
        tick()
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
        tick()
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        tick()
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        """Record an item (``APPEND`` on a list subclass)."""
        tick()
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


def placeholder(module: str, name: str) -> type[Opaque]:
    """A new placeholder class standing for the global ``module.name`` (never imported)."""
    cls_name = re.sub(r"\W", "_", name)[:64] or "_"
    return _OpaqueMeta(  # type: ignore[return-value]
        cls_name,
        (Opaque,),
        {"__slots__": (), "pickle_module": module, "pickle_name": name},
    )


#: Data types that real training checkpoints hold and that are harmless to construct: reported
#: with severity ``info``, still never imported.
BENIGN_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("argparse", "Namespace"),
        *(
            ("pathlib", n)
            for n in (
                "Path",
                "PosixPath",
                "WindowsPath",
                "PurePath",
                "PurePosixPath",
                "PureWindowsPath",
            )
        ),
        *(
            (m, n)
            for m in ("numpy.core.multiarray", "numpy._core.multiarray")
            for n in ("scalar", "_reconstruct")
        ),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *(
            ("omegaconf." + m, n)
            for m, n in (
                ("dictconfig", "DictConfig"),
                ("listconfig", "ListConfig"),
                ("base", "ContainerMetadata"),
                ("base", "Metadata"),
                ("nodes", "AnyNode"),
                ("nodes", "StringNode"),
                ("nodes", "IntegerNode"),
                ("nodes", "FloatNode"),
                ("nodes", "BooleanNode"),
                ("nodes", "PathNode"),
                ("nodes", "BytesNode"),
            )
        ),
        ("collections", "defaultdict"),
        ("collections", "Counter"),
        ("collections", "deque"),
        *(("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")),
        *(("typing", n) for n in ("Any", "Union", "Optional", "List", "Dict", "Tuple")),
        *(
            ("builtins", n)
            for n in (
                "dict",
                "list",
                "tuple",
                "int",
                "float",
                "bool",
                "str",
                "object",
                "NoneType",
                "range",
            )
        ),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
        *(
            ("torch", n)
            for n in (
                "FloatTensor",
                "DoubleTensor",
                "HalfTensor",
                "BFloat16Tensor",
                "LongTensor",
                "IntTensor",
                "ShortTensor",
                "CharTensor",
                "ByteTensor",
                "BoolTensor",
            )
        ),
    ]
)
_NUMPY_DTYPE_CLASS = re.compile(r"[A-Za-z0-9]+DType")


def is_benign(module: str, name: str) -> bool:
    """Whether a global outside the allow-list is a known harmless data type."""
    if (module, name) in BENIGN_GLOBALS:
        return True
    return module == "numpy.dtypes" and _NUMPY_DTYPE_CLASS.fullmatch(name) is not None


def py3_name(module: str, name: str) -> tuple[str, str]:
    """Apply Python 2 -> 3 renames, as the stdlib unpickler does for protocols < 3."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    if module in _compat_pickle.IMPORT_MAPPING:
        return _compat_pickle.IMPORT_MAPPING[module], name
    return module, name


def _printable(text: str, limit: int = 200) -> str:
    """``text`` on one line and at most ``limit`` characters, for messages and keys."""
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def global_finding(module: str, name: str) -> Finding:
    """What a pickle naming ``module.name`` (outside the allow-list) is reported as: ``info``
    for a benign data type, ``security`` for anything else."""
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
