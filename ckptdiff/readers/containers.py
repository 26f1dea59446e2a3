"""Find the state dict inside an unpickled checkpoint, and honour ``--select``.

A checkpoint is often a container: Lightning's ``{"state_dict", "epoch", ...}``, a training
script's ``{"model", "optimizer", ...}``, timm's ``{"state_dict", "state_dict_ema"}``, or a whole
pickled ``nn.Module``. The search only walks dicts with string keys (and pickled modules' own
``_parameters``/``_buffers``/``_modules``), guards against shared references and cycles, and
stops at a fixed depth.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.errors import SelectError
from ckptdiff.readers.unpickler.placeholders import Opaque
from ckptdiff.readers.unpickler.records import (
    DType,
    TensorRef,
    UnsizedTensor,
    is_tensor,
    short_repr,
)
from ckptdiff.types import Finding

__all__ = [
    "KNOWN_ORDER",
    "Selection",
    "find_candidates",
    "select_state_dict",
]

#: Preferred state dicts, best first: timm's ``load_state_dict`` order (EMA weights first), then
#: other names training scripts use.
KNOWN_ORDER = (
    "state_dict_ema",
    "model_ema",
    "state_dict",
    "model",
    "module",
    "model_state_dict",
    "ema",
    "ema_state_dict",
    "net",
    "network",
    "params",
    "weights",
)
#: Deepest container level searched for state dicts.
MAX_SEARCH_DEPTH = 8
#: Deepest nesting flattened inside a state dict, and deepest module tree walked.
MAX_FLATTEN_DEPTH = 32
#: Limits on what goes to :attr:`Manifest.metadata`.
MAX_METADATA_DEPTH = 3
MAX_METADATA_ITEMS = 32
MAX_METADATA_STRING = 256


@dataclass
class Selection:
    """The state dict chosen inside a container, and what surrounds it.

    Attributes:
        tensors: flattened key -> tensor, in file order.
        selected: the dotted path of the chosen state dict (None: the top level is one).
        candidates: every path holding a state dict.
        metadata: JSON-safe non-tensor entries next to the chosen state dict.
        findings: what the choice and the flattening noticed.
    """

    tensors: dict[str, TensorRef | UnsizedTensor]
    selected: str | None
    candidates: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


# --- recognising state dicts ---------------------------------------------------------------------


def _is_module(obj: Any) -> bool:
    """A pickled ``nn.Module``: a placeholder whose state has ``_parameters`` and ``_modules``."""
    state = obj.state if isinstance(obj, Opaque) else None
    return isinstance(state, dict) and "_parameters" in state and "_modules" in state


def _is_state_dict(obj: Any, depth: int = 0) -> bool:
    """A dict of tensors: string keys, some tensors, and mostly tensors.

    A dict qualifies when all its values are tensors, or when it has a tensor of rank >= 1 and
    its tensors and nested dicts of tensors (flattened later) make at least half its values.
    """
    if not isinstance(obj, dict) or not obj:
        return False
    if set(map(type, obj)) == {str} and set(map(type, obj.values())) <= {TensorRef, UnsizedTensor}:
        return True  # a flat state dict, told in whole-list passes
    tensors = 0
    ranked = False
    dicts = []
    for k, v in obj.items():
        if type(k) is not str:
            return False
        if type(v) is TensorRef:
            tensors += 1
            ranked = ranked or bool(v[0])
        elif type(v) is UnsizedTensor:
            tensors += 1
        elif isinstance(v, dict):
            dicts.append(v)
    if tensors == len(obj):
        return True
    if not (tensors and ranked):
        return False
    if tensors * 2 >= len(obj):
        return True
    if depth >= 4:
        return False
    nested = sum(1 for d in dicts if _is_state_dict(d, depth + 1))
    return (tensors + nested) * 2 >= len(obj)


def _is_candidate(obj: Any) -> bool:
    return _is_state_dict(obj) or _is_module(obj)


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """The named children a container search descends into."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) is str:
                yield k, v
    elif isinstance(obj, Opaque) and isinstance(obj.state, dict):
        # a pickled object (argparse.Namespace, a trainer state...): look at its attributes
        for k, v in obj.state.items():
            if type(k) is str and not k.startswith("_"):
                yield k, v


def find_candidates(root: Any) -> list[tuple[str, Any, Any, str]]:
    """Every state dict below ``root``, in file order, as ``(path, obj, parent, key)``.

    The search does not descend into a state dict it found, visits each object once, and stops
    at :data:`MAX_SEARCH_DEPTH`.
    """
    found: list[tuple[str, Any, Any, str]] = []
    seen: set[int] = {id(root)}
    stack: list[tuple[str, Any, Any, str, int]] = [("", root, None, "", 0)]
    while stack:
        path, obj, parent, key, depth = stack.pop()
        if path and _is_candidate(obj):
            found.append((path, obj, parent, key))
            continue
        if depth >= MAX_SEARCH_DEPTH:
            continue
        children = [
            (f"{path}.{k}" if path else k, v, k)
            for k, v in _children(obj)
            if isinstance(v, (dict, Opaque)) and id(v) not in seen
        ]
        for child_path, child, k in reversed(children):
            seen.add(id(child))
            stack.append((child_path, child, obj, k, depth + 1))
    return found


# --- flattening ----------------------------------------------------------------------------


def _flatten(
    obj: Any, prefix: str, out: dict[str, Any], skipped: list[str], seen: set[int], depth: int
) -> None:
    if depth > MAX_FLATTEN_DEPTH:
        skipped.append(prefix.rstrip(".") or "<top>")
        return
    if _is_module(obj):
        _flatten_module(obj, prefix, out, skipped, seen, depth)
        return
    if set(map(type, obj)) == {str} and set(map(type, obj.values())) <= {TensorRef, UnsizedTensor}:
        out.update(zip(map(prefix.__add__, obj), obj.values(), strict=True))  # flat: at once
        return
    for k, v in obj.items():
        key = f"{prefix}{k}" if type(k) is str else f"{prefix}{short_repr(k)}"
        if is_tensor(v):
            out[key] = v
        elif isinstance(v, dict) and v and type(k) is str and id(v) not in seen:
            seen.add(id(v))
            before = len(out)
            _flatten(v, key + ".", out, skipped, seen, depth + 1)
            if len(out) == before:
                skipped.append(key)
        else:
            skipped.append(key)


def _flatten_module(
    obj: Opaque, prefix: str, out: dict[str, Any], skipped: list[str], seen: set[int], depth: int
) -> None:
    """A pickled module's state dict: parameters, persistent buffers, then submodules."""
    state = obj.state
    non_persistent = state.get("_non_persistent_buffers_set")
    hidden = non_persistent if isinstance(non_persistent, (set, frozenset)) else set()
    for attr in ("_parameters", "_buffers"):
        entries = state.get(attr)
        if not isinstance(entries, dict):
            continue
        for k, v in entries.items():
            if type(k) is not str or v is None or (attr == "_buffers" and k in hidden):
                continue
            if is_tensor(v):
                out[prefix + k] = v
            else:
                skipped.append(prefix + k)
    modules = state.get("_modules")
    if isinstance(modules, dict):
        for k, v in modules.items():
            if type(k) is str and _is_module(v) and id(v) not in seen:
                seen.add(id(v))
                if depth < MAX_FLATTEN_DEPTH:
                    _flatten_module(v, f"{prefix}{k}.", out, skipped, seen, depth + 1)
                else:
                    skipped.append(prefix + k)


def _tensors_of(obj: Any) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    skipped: list[str] = []
    _flatten(obj, "", out, skipped, {id(obj)}, 0)
    return out, skipped


# --- choosing ------------------------------------------------------------------------------


def _resolve(root: Any, path: str) -> tuple[Any, str, Any] | None:
    """``(parent, key, object)`` at a dotted path (keys holding dots match whole), or None."""
    parent, key, obj = None, "", root
    rest = path
    while rest:
        children = dict(_children(obj))
        if _is_module(obj):
            modules = obj.state.get("_modules")
            if isinstance(modules, dict):
                children.update((k, v) for k, v in modules.items() if type(k) is str)
        match = next(
            (
                k
                for k in sorted(children, key=len, reverse=True)
                if rest == k or rest.startswith(k + ".")
            ),
            None,
        )
        if match is None:
            return None
        parent, key, obj = obj, match, children[match]
        rest = rest[len(match) + 1 :]
    return parent, key, obj


def select_state_dict(root: Any, name: str, *, select: str | None = None) -> Selection:
    """Choose the state dict of an unpickled checkpoint.

    Supports, in order: a top-level dict of tensors or a pickled module (used as it is);
    ``select`` (a dotted path); the one state dict the container holds; the best of several by
    :data:`KNOWN_ORDER`.

    Args:
        root: the unpickled object.
        name: the file, for messages.
        select: a dotted path to the state dict (``state_dict``, ``model.state_dict``).

    Returns:
        The tensors (nested dicts flattened with dots), the chosen path, the candidates, the
        metadata next to it, and findings.

    Raises:
        SelectError: ``select`` names no state dict, or several state dicts exist and none has
            a usual name.

    Example:
        >>> from ckptdiff.readers.unpickler.records import DTYPES, TensorRef
        >>> t = TensorRef((2,), (1,), 0, DTYPES["float32"], None)
        >>> select_state_dict({"state_dict": {"w": t}, "epoch": 3}, "x.ckpt").selected
        'state_dict'
    """
    if select is None and (_is_state_dict(root) or _is_module(root)):
        return _selection(root, None, [], {}, [])
    candidates = find_candidates(root)
    paths = [c[0] for c in candidates]
    findings: list[Finding] = []
    if select is not None:
        found = _resolve(root, select) if select else None
        if found is None or not (isinstance(found[2], dict) or _is_module(found[2])):
            raise _no_such_path(name, select, paths)
        parent, key, chosen = found
        path = select
    elif not candidates:
        return _selection(root, None, [], _metadata(root, "", paths), [_no_state_dict(root)])
    elif len(candidates) == 1:
        path, chosen, parent, key = candidates[0]
    else:
        path, chosen, parent, key = _best(candidates, name)
    if len(candidates) > 1:
        findings.append(_container_finding(path, paths, _sizes(candidates), select is not None))
    selection = _selection(chosen, path, paths, _metadata(parent, key, paths), findings)
    if select is not None and not selection.tensors:
        raise _no_such_path(name, select, paths)
    return selection


def _selection(
    chosen: Any,
    path: str | None,
    paths: list[str],
    metadata: dict[str, Any],
    findings: list[Finding],
) -> Selection:
    if isinstance(chosen, dict) or _is_module(chosen):
        tensors, skipped = _tensors_of(chosen)
    else:
        tensors, skipped = {}, []
    if skipped:
        shown = ", ".join(skipped[:8]) + (", ..." if len(skipped) > 8 else "")
        findings.append(
            Finding(
                kind="non_tensor_entry",
                message=f"{len(skipped)} non-tensor entries of the state dict are skipped: {shown}",
                keys=tuple(skipped),
                severity="info",
            )
        )
    sized_only = UnsizedTensor not in set(map(type, tensors.values()))
    unsized = [] if sized_only else [k for k, v in tensors.items() if type(v) is UnsizedTensor]
    for key in unsized:
        findings.append(
            Finding(
                kind="unsized_tensor",
                message=(
                    f"'{key}' is {tensors[key].reason}, whose shape cannot be read without "
                    "loading it; it is left out"
                ),
                keys=(key,),
                severity="warning",
            )
        )
        del tensors[key]
    return Selection(tensors, path, tuple(paths), metadata, findings)


def _best(candidates: list[tuple[str, Any, Any, str]], name: str) -> tuple[str, Any, Any, str]:
    by_path = {c[0]: c for c in candidates}
    for preferred in KNOWN_ORDER:
        if preferred in by_path:
            return by_path[preferred]
    listed = ", ".join(c[0] for c in candidates)
    first = candidates[0][0]
    raise SelectError(
        f"Cannot read '{name}' (container): it holds {len(candidates)} state dicts and none has "
        f"a usual name: {listed}. Pick one with --select (e.g. --select {first})."
    )


def _no_such_path(name: str, select: str, paths: list[str]) -> SelectError:
    listed = ", ".join(paths) if paths else "none (the top level is the state dict; omit --select)"
    return SelectError(
        f"Cannot read '{name}' (--select {select}): no state dict at '{select}'. "
        f"Candidates: {listed}."
    )


#: Names of state dicts holding EMA weights.
EMA_NAMES = ("state_dict_ema", "model_ema", "ema", "ema_state_dict", "ema_model", "model_ema_state")


def _sizes(candidates: list[tuple[str, Any, Any, str]]) -> dict[str, dict[str, int]]:
    """``path -> {"tensors", "parameters"}`` of every candidate state dict."""
    out = {}
    for path, obj, _, _ in candidates:
        tensors, _skipped = _tensors_of(obj)
        sized = [t for t in tensors.values() if type(t) is TensorRef]
        out[path] = {"tensors": len(sized), "parameters": sum(t.numel for t in sized)}
    return out


def _container_finding(
    path: str,
    paths: list[str],
    sizes: dict[str, dict[str, int]] | None = None,
    explicit: bool = False,
) -> Finding:
    sizes = sizes or {}
    others = [p for p in paths if p != path]

    def size(p: str) -> str:
        s = sizes.get(p)
        return f"{s['tensors']} tensors, {s['parameters']:,} parameters" if s else ""

    listed = ", ".join(
        f"{p} ({size(p)}; --select {p})" if p in sizes else f"{p} (--select {p})" for p in others
    )
    why = (
        "as --select asked"
        if explicit
        else (
            "EMA weights first, as timm loads them"
            if path.rsplit(".", 1)[-1] in EMA_NAMES
            else "the usual name"
        )
    )
    held = f" ({size(path)})" if path in sizes else ""
    return Finding(
        kind="container",
        message=f"using the state dict at '{path}'{held}, {why}; the file also holds {listed}",
        keys=tuple(paths),
        severity="info",
        data={"selected": path, "others": others, "candidate_sizes": sizes},
    )


def _no_state_dict(root: Any) -> Finding:
    return Finding(
        kind="no_state_dict",
        message=(f"the file holds {_describe(root)} and no dict of tensors; nothing to compare"),
        severity="warning",
    )


# --- metadata ------------------------------------------------------------------------------------


def _metadata(parent: Any, chosen_key: str, paths: list[str]) -> dict[str, Any]:
    """JSON-safe non-tensor entries of the chosen state dict's container."""
    if isinstance(parent, Opaque) and isinstance(parent.state, dict):
        parent = parent.state
    if not isinstance(parent, Mapping):
        return {}
    out: dict[str, Any] = {}
    for k, v in parent.items():
        if type(k) is not str or k == chosen_key or is_tensor(v) or _is_candidate(v):
            continue
        if len(out) >= MAX_METADATA_ITEMS:
            out["..."] = f"{len(parent) - len(out)} more entries"
            break
        out[k] = _jsonable(v, 0, set())
    return out


def short_key(key: Any) -> str:
    """A dict key of a pickle as text (a huge integer key as its size, not 4300+ digits)."""
    if type(key) is int and key.bit_length() >= 1024:
        return f"<an integer of {key.bit_length()} bits>"
    return str(key)


def _jsonable(value: Any, depth: int, seen: set[int]) -> Any:
    if value is None or isinstance(value, (bool, int)):
        if not isinstance(value, int) or abs(value) < 2**63:
            return value
        return short_key(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= MAX_METADATA_STRING else value[:MAX_METADATA_STRING] + "..."
    if isinstance(value, Opaque) and isinstance(value.state, dict) and not _is_module(value):
        value = {"__class__": type(value).qualified_name(), **value.state}
    if isinstance(value, dict) or type(value) in (list, tuple, set, frozenset):
        if depth >= MAX_METADATA_DEPTH or id(value) in seen:
            return _describe(value)
        seen = seen | {id(value)}
        if isinstance(value, dict):
            items = list(value.items())[:MAX_METADATA_ITEMS]
            out = {short_key(k): _jsonable(v, depth + 1, seen) for k, v in items}
            if len(value) > len(items):
                out["..."] = f"{len(value) - len(items)} more entries"
            return out
        seq = list(value)[:MAX_METADATA_ITEMS] if not isinstance(value, (set, frozenset)) else []
        listed = [_jsonable(v, depth + 1, seen) for v in seq]
        if len(value) > len(seq):
            listed.append(f"... {len(value) - len(seq)} more")
        return listed
    return _describe(value)


def _describe(value: Any) -> str:
    if type(value) is TensorRef:
        return f"<tensor {value.dtype.name}{list(value.shape)}>"
    if isinstance(value, Opaque):
        return f"<{type(value).qualified_name()}>"
    if isinstance(value, type) and issubclass(value, Opaque):
        return f"<{value.qualified_name()}>"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, DType):
        return value.name
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)}>"
    return f"<{type(value).__name__}>"
