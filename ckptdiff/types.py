"""Core value types: pure Python, frozen, no torch objects inside."""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal

__all__ = [
    "DTYPE_SIZES",
    "Coverage",
    "DtypeChange",
    "Finding",
    "Manifest",
    "Mismatch",
    "Report",
    "STATUSES",
    "Severity",
    "Status",
    "Suggestion",
    "TensorSpec",
    "new_specs",
]

#: Bytes per element for every dtype name ckptdiff knows (torch's names).
#: Sub-byte and packed types are listed with their storage element size.
DTYPE_SIZES: Mapping[str, float] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
    "quint4x2": 1,
    "quint2x4": 1,
}

Severity = Literal["info", "warning", "error", "security"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What is known of one tensor without reading its data.

    Attributes:
        key: the state-dict key.
        shape: the tensor's shape.
        dtype: torch's name of the element type (``float32``, ``bfloat16``...).
        nbytes: bytes the tensor's elements take, when known.
        file: the file (or shard) the tensor lives in, when known.
    """

    key: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int | None = None
    file: str | None = None

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"key", "shape", "dtype"}``."""
        return {"key": self.key, "shape": list(self.shape), "dtype": self.dtype}


def new_specs(
    keys: Sequence[str],
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[str],
    nbytes: Sequence[int | None],
    file: str | None,
) -> dict[str, TensorSpec]:
    """``{key: TensorSpec}`` for parallel lists of fields, built in whole-list passes.

    The same objects ``TensorSpec(key, shape, dtype, nbytes, file)`` makes, for readers of
    100,000s of tensors: each slot is filled for every spec at once by its C-level setter,
    without the frozen dataclass's per-field ``object.__setattr__``. The caller vouches for
    the types (``shape`` a tuple of ints).

    Example:
        >>> new_specs(["w"], [(2,)], ["float32"], [8], None)["w"]
        TensorSpec(key='w', shape=(2,), dtype='float32', nbytes=8, file=None)
    """
    specs = list(map(object.__new__, repeat(TensorSpec, len(keys))))
    for name, values in (
        ("key", keys),
        ("shape", shapes),
        ("dtype", dtypes),
        ("nbytes", nbytes),
        ("file", repeat(file)),
    ):
        deque(map(_SLOT_SETTERS[name], specs, values), maxlen=0)
    return dict(zip(keys, specs, strict=False))


_SLOT_SETTERS = {n: TensorSpec.__dict__[n].__set__ for n in TensorSpec.__slots__}


@dataclass(frozen=True, slots=True)
class Finding:
    """Something worth telling about a source or a comparison.

    Attributes:
        kind: a stable machine name (``wrapper_prefix``, ``unsafe_global``...).
        message: one human sentence.
        keys: the keys (or config fields, or globals) it concerns.
        severity: ``info``, ``warning``, ``error`` or ``security``.
        data: extra machine-readable detail (numbers, the option that fixes it).
    """

    kind: str
    message: str
    keys: tuple[str, ...] = ()
    severity: Severity = "warning"
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"kind", "message", "keys", "severity", ...data}``."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "message": self.message,
            "keys": list(self.keys),
            "severity": self.severity,
        }
        out.update(self.data)
        return out


@dataclass(frozen=True)
class Manifest:
    """The ordered ``key -> TensorSpec`` map of one side, and what that side is.

    Attributes:
        source: the source string as the user gave it.
        format: ``safetensors``, ``safetensors-sharded``, ``torch-zip``, ``torch-legacy``,
            ``pickle``, ``torch-zip-sharded``, ``meta-model``...
        tensors: key -> spec, in file order.
        files: the files that were read.
        metadata: the format's non-tensor metadata (safetensors ``__metadata__``, the
            non-tensor entries of a pickled container).
        findings: what the reader noticed (index defects, forbidden globals...).
        selected: the path inside a nested container the tensors came from (``state_dict``).
        candidates: every path in the container that holds a state dict.
        buffers: keys that are persistent buffers (built models only).
        non_persistent: non-persistent buffer names (built models only): never expected.
        aliases: ``key -> key it is stored as`` for tied tensors saved once.
        tied: groups of keys that share one tensor (built models only).
        config: the config the model was built from, when there is one.
    """

    source: str
    format: str
    tensors: Mapping[str, TensorSpec]
    files: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    selected: str | None = None
    candidates: tuple[str, ...] = ()
    buffers: frozenset[str] = frozenset()
    non_persistent: frozenset[str] = frozenset()
    aliases: Mapping[str, str] = field(default_factory=dict)
    tied: tuple[tuple[str, ...], ...] = ()
    config: Mapping[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def parameter_count(self) -> int:
        """Total elements over every tensor."""
        return sum(t.numel for t in self.tensors.values())

    @property
    def security_findings(self) -> tuple[Finding, ...]:
        """Findings of severity ``security``."""
        return tuple(f for f in self.findings if f.severity == "security")


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One key present on both sides with different shapes."""

    key: str
    checkpoint_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    checkpoint_dtype: str
    target_dtype: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"key", "checkpoint_shape", "target_shape", ...}``."""
        return {
            "key": self.key,
            "checkpoint_shape": list(self.checkpoint_shape),
            "target_shape": list(self.target_shape),
            "checkpoint_dtype": self.checkpoint_dtype,
            "target_dtype": self.target_dtype,
        }


@dataclass(frozen=True, slots=True)
class DtypeChange:
    """One key with the same shape on both sides but another dtype."""

    key: str
    shape: tuple[int, ...]
    checkpoint_dtype: str
    target_dtype: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "key": self.key,
            "shape": list(self.shape),
            "checkpoint_dtype": self.checkpoint_dtype,
            "target_dtype": self.target_dtype,
        }


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of one module of the target the checkpoint supplies.

    Attributes:
        module: the module path (``""`` for the whole model).
        expected: parameter elements the target expects under it.
        supplied: elements the checkpoint supplies with the right shape.
        expected_tensors: tensors the target expects under it.
        supplied_tensors: tensors supplied with the right shape.
    """

    module: str
    expected: int
    supplied: int
    expected_tensors: int
    supplied_tensors: int

    @property
    def share(self) -> float:
        """``supplied / expected`` (1.0 for an empty module)."""
        return self.supplied / self.expected if self.expected else 1.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"module", "expected", "supplied", ...}``."""
        return {
            "module": self.module,
            "expected": self.expected,
            "supplied": self.supplied,
            "expected_tensors": self.expected_tensors,
            "supplied_tensors": self.supplied_tensors,
            "share": round(self.share, 6),
        }


#: How far a suggestion was proven (see :mod:`ckptdiff.diagnosis.verify`).
Status = Literal["verified", "partial", "undetermined", "unverified"]
STATUSES: tuple[Status, ...] = ("verified", "partial", "undetermined", "unverified")


@dataclass(frozen=True)
class Suggestion:
    """A change that makes the checkpoint fit, and how far it was proven on meta.

    Attributes:
        kind: ``config`` (a config field), ``key_map`` (a key rule) or ``call`` (a call to make).
        field: the dotted config field, the option string, or the call.
        current: the value now (None for key maps and calls).
        suggested: the value (or rules, or call text) that fixes it.
        status: ``verified`` (everything the user gets applied together, rebuilt on meta and
            compared: every key it touches matches and nothing that matched stops matching),
            ``partial`` (it helps, but keys it moves still differ: ``still_differ``),
            ``undetermined`` (shapes cannot tell the value: attention heads when the head dim
            is free) or ``unverified`` (it could not be checked). ``True``/``False`` given
            here mean ``verified``/``unverified``.
        message: one human sentence.
        evidence: keys and shapes behind it.
        data: extra machine-readable detail.
        still_differ: keys it moves that still differ after it (``partial``).
    """

    kind: str
    field: str
    current: Any
    suggested: Any
    status: Status | bool
    message: str = ""
    evidence: tuple[str, ...] = ()
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    still_differ: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.status, bool):
            object.__setattr__(self, "status", "verified" if self.status else "unverified")
        elif self.status not in STATUSES:
            raise ValueError(f"Suggestion status {self.status!r}: expected one of {STATUSES}.")

    @property
    def verified(self) -> bool:
        """True only for status ``verified``."""
        return self.status == "verified"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"kind", "field", "current", "suggested", "verified", "status",
        ...}``; ``verified`` is ``status == "verified"``."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "field": self.field,
            "current": self.current,
            "suggested": self.suggested,
            "verified": self.verified,
            "status": self.status,
            "message": self.message,
            "evidence": list(self.evidence),
            "still_differ": list(self.still_differ),
        }
        out.update(self.data)
        return out


REPORT_SCHEMA = "ckptdiff.report/2"
MANIFEST_SCHEMA = "ckptdiff.manifest/1"


@dataclass(frozen=True)
class Report:
    """The comparison of a checkpoint with a target: sorted, deterministic.

    "missing" means the target has it and the checkpoint lacks it; "unexpected" the reverse.

    Attributes:
        checkpoint: source string of the checkpoint side (A in ``ckptdiff diff A B``).
        target: source string of the target side (B, or the model).
        checkpoint_format: the checkpoint's format.
        target_format: the target's format (``meta-model`` for a built model).
        missing: tensors the target expects that the checkpoint lacks.
        unexpected: tensors the checkpoint has that the target does not.
        mismatched: keys on both sides with other shapes.
        dtype_changes: keys with equal shapes and other dtypes (loading casts them).
        matched: keys that load as they are.
        ignored: checkpoint keys that loading ignores (non-persistent buffers, ignore lists).
        tied: target keys absent from the checkpoint but supplied by a tied/aliased key.
        buffers_missing: persistent buffers the checkpoint lacks (kept at their built value).
        coverage: per-module coverage, whole model first.
        findings: what the comparison noticed (wrapper prefixes, ...), reader findings too.
        suggestions: fixes, each with ``verified``.
        key_map: the key rules applied to the checkpoint side before comparing.
        aligned: the same comparison with the suggested key map applied, when one was found
            (its ``key_map`` holds those rules): what loading looks like after the fix.
        fixed_config: the target's config with the suggested config values, exactly as
            ``--emit-config`` writes it and as the verifier rebuilt it; None when no config
            change was suggested.
    """

    checkpoint: str
    target: str
    checkpoint_format: str
    target_format: str
    missing: tuple[TensorSpec, ...] = ()
    unexpected: tuple[TensorSpec, ...] = ()
    mismatched: tuple[Mismatch, ...] = ()
    dtype_changes: tuple[DtypeChange, ...] = ()
    matched: tuple[str, ...] = ()
    ignored: tuple[TensorSpec, ...] = ()
    tied: tuple[str, ...] = ()
    buffers_missing: tuple[TensorSpec, ...] = ()
    coverage: tuple[Coverage, ...] = ()
    findings: tuple[Finding, ...] = ()
    suggestions: tuple[Suggestion, ...] = ()
    key_map: tuple[Mapping[str, Any], ...] = ()
    aligned: Report | None = None
    fixed_config: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when every target key is supplied with its shape and nothing is left over."""
        return not (self.missing or self.unexpected or self.mismatched or self.buffers_missing)

    @property
    def load_key_map(self) -> tuple[Mapping[str, Any], ...]:
        """The key-map rules to apply to the checkpoint before ``load_state_dict``: the ones
        given to the comparison, then the ones it found (empty when none are needed).

        Example:
            >>> from ckptdiff.keymap import KeyMap  # doctest: +SKIP
            >>> sd = KeyMap.from_rules(report.load_key_map).remap_state_dict(sd)  # doctest: +SKIP
        """
        found = self.aligned.key_map if self.aligned is not None else ()
        return tuple(self.key_map) + tuple(found)

    @property
    def has_security_findings(self) -> bool:
        """True when a source named a forbidden global or escaped its folder."""
        return any(f.severity == "security" for f in self.findings)

    @property
    def exit_code(self) -> int:
        """3 for a security finding, else 0 compatible, 1 different (like ``diff``)."""
        if self.has_security_findings:
            return 3
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form (schema ``ckptdiff.report/2``)."""
        return {
            "schema": REPORT_SCHEMA,
            "ok": self.ok,
            "checkpoint": {"source": self.checkpoint, "format": self.checkpoint_format},
            "target": {"source": self.target, "format": self.target_format},
            "counts": {
                "matched": len(self.matched),
                "missing": len(self.missing),
                "unexpected": len(self.unexpected),
                "mismatched": len(self.mismatched),
                "dtype_changes": len(self.dtype_changes),
                "ignored": len(self.ignored),
                "tied": len(self.tied),
                "buffers_missing": len(self.buffers_missing),
            },
            "missing": [t.to_dict() for t in self.missing],
            "unexpected": [t.to_dict() for t in self.unexpected],
            "mismatched": [m.to_dict() for m in self.mismatched],
            "dtype_changes": [d.to_dict() for d in self.dtype_changes],
            "ignored": [t.to_dict() for t in self.ignored],
            "tied": list(self.tied),
            "buffers_missing": [t.to_dict() for t in self.buffers_missing],
            "coverage": [c.to_dict() for c in self.coverage],
            "findings": [f.to_dict() for f in self.findings],
            "suggestions": [s.to_dict() for s in self.suggestions],
            "key_map": [dict(r) for r in self.key_map],
            "after_key_map": None
            if self.aligned is None
            else {
                "key_map": [dict(r) for r in self.aligned.key_map],
                "ok": self.aligned.ok,
                "counts": self.aligned.to_dict()["counts"],
                "mismatched": [m.to_dict() for m in self.aligned.mismatched],
                "missing": [t.to_dict() for t in self.aligned.missing],
                "unexpected": [t.to_dict() for t in self.aligned.unexpected],
            },
        }

    @property
    def whole_share(self) -> float:
        """Share of the target's parameters the checkpoint supplies (the whole-model coverage
        row); 0.0 without coverage."""
        return self.coverage[0].share if self.coverage else 0.0

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text (``json.dumps`` with ``indent``; long lists of
        records written a column at a time, the same text)."""
        import json

        from ckptdiff.json_text import dumps_indented

        if indent == 2:
            return dumps_indented(self.to_dict())
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        from ckptdiff.render.report import render_report_table

        return render_report_table(self)

    def raise_for_incompatible(
        self, *, allow_missing: bool = False, allow_unexpected: bool = False
    ) -> None:
        """Raise when loading would fail or leave weights at their initial values.

        Args:
            allow_missing: tolerate target keys the checkpoint lacks (``strict=False``).
            allow_unexpected: tolerate checkpoint keys the target has no place for.

        Raises:
            IncompatibleCheckpointError: with the report's table as the message.
        """
        from ckptdiff.errors import IncompatibleCheckpointError

        bad = (
            bool(self.mismatched)
            or ((self.missing or self.buffers_missing) and not allow_missing)
            or (self.unexpected and not allow_unexpected)
        )
        if bad:
            raise IncompatibleCheckpointError(str(self))
