"""What a forward check found: one run per batch size, index-range findings, and where each
failing dimension came from. Pure Python, frozen; renders as text or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["DimSource", "Failure", "FieldMatch", "ForwardReport", "RangeFinding", "Run"]

Mode = Literal["shape-only", "data"]


@dataclass(frozen=True)
class FieldMatch:
    """A value that equals a failing dimension.

    Attributes:
        name: the config field (``multimodal_cfg.context_length``), module attribute
            (``text_decoder.context_length``) or input dimension (``text[1]``).
        value: its value.
        kind: ``config``, ``attribute`` or ``input``.
        confirmed: for config fields, True when rebuilding with the field doubled changed the
            failure (the field produced the dimension), False when it did not, None when not
            probed.
    """

    name: str
    value: int
    kind: str
    confirmed: bool | None = None

    def describe(self) -> str:
        """``multimodal_cfg.context_length=76 (confirmed: ...)``."""
        what = f"input {self.name}" if self.kind == "input" else self.name
        text = f"{what}={self.value}"
        if self.confirmed:
            return f"{text} (confirmed: rebuilt with {self.value * 2}, it follows)"
        if self.confirmed is False:
            return f"{text} (same value, but rebuilding with {self.value * 2} does not change it)"
        return text


@dataclass(frozen=True)
class DimSource:
    """One dimension of a failure and the values equal to it."""

    dim: int
    fields: tuple[FieldMatch, ...]


@dataclass(frozen=True)
class Failure:
    """Where and how a forward pass failed.

    Attributes:
        module: the path of the module it failed in (``""``: the model itself).
        module_type: that module's class name.
        op: the torch call that raised (None: the model's own code raised).
        operands: ``(argument, shape, dtype)`` of the op's tensor operands.
        error: the exception, as ``Type: message`` (first line, bounded).
        dims: the dimensions named by the error (or the operands), with their sources.
    """

    module: str
    module_type: str
    op: str | None
    operands: tuple[tuple[str, tuple[int, ...], str], ...]
    error: str
    dims: tuple[DimSource, ...] = ()

    @property
    def signature(self) -> tuple[Any, ...]:
        """What makes two failures the same (for grouping batch sizes)."""
        return (self.module, self.op, self.error)


@dataclass(frozen=True)
class Run:
    """One forward pass at one batch size.

    Attributes:
        batch_size: dim 0 of the inputs (None: the saved batch as it is).
        mode: ``shape-only`` or ``data``.
        status: ``ok``, ``failed`` or ``not run`` (data mode was needed and unavailable).
        failure: what failed, for ``failed``.
        note: why this mode ran (a fallback), or why it did not run.
    """

    batch_size: int | None
    mode: Mode
    status: Literal["ok", "failed", "not run"]
    failure: Failure | None = None
    note: str | None = None


@dataclass(frozen=True)
class RangeFinding:
    """An integer input whose values reach past the rows it indexes.

    Attributes:
        input: the input (``labels``).
        kind: ``embedding`` (rows of an embedding) or ``loss`` / ``logits`` (classes).
        module: the module holding the table, or computing the loss.
        limit: rows or classes.
        max_value, min_value: the input's values (``ignore_index`` left out).
        out_of_range: how many values fall outside ``[0, limit)``.
        fields: config values equal to ``limit`` (probed as for failures), and those equal
            to the largest value + 1 (the vocabulary the values come from).
        producer: for ``loss``, the module whose output the class scores are.
    """

    input: str
    kind: str
    module: str
    limit: int
    max_value: int
    min_value: int
    out_of_range: int
    fields: tuple[FieldMatch, ...] = ()
    producer: str | None = None

    def describe(self) -> str:
        """One line, for people."""
        scores = f" (scores from {self.producer})" if self.producer else ""
        where = self.module or "the model"
        table = {
            "embedding": f"the {self.limit} rows of {where}",
            "loss": f"the {self.limit} classes of the loss in {where}{scores}",
            "logits": f"the {self.limit} classes of the logits from {where}",
        }
        return (
            f"{self.input} values reach {self.max_value} (min {self.min_value}; "
            f"{self.out_of_range} out of range) past {table[self.kind]}"
        )


@dataclass(frozen=True)
class ForwardReport:
    """The result of :func:`ckptdiff.forward`.

    Attributes:
        target: the model as named.
        inputs: the inputs, described (``input_ids=Bx77:int64``).
        runs: one per batch size (and per mode when shape-only fell back to data mode).
        ranges: integer inputs past the rows they index (needs known values: --batch).
        ranges_checked: ``(input, kind, module, limit)`` of every index use seen.
        shrunk: ``(field, full value, value used)`` of the data-mode model, when shrunk.
        notes: what was not looked at, and why.
    """

    target: str
    inputs: tuple[str, ...]
    runs: tuple[Run, ...]
    ranges: tuple[RangeFinding, ...] = ()
    ranges_checked: tuple[tuple[str, str, str, int], ...] = ()
    shrunk: tuple[tuple[str, int, int], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every run passed and no input reaches past its table."""
        return all(r.status == "ok" for r in self.runs) and not self.ranges

    @property
    def exit_code(self) -> int:
        """0 ok, 1 a failure found, 2 nothing could be run to decide."""
        if any(r.status == "failed" for r in self.runs) or self.ranges:
            return 1
        return 0 if self.ok else 2

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``schema: ckptdiff.forward/1``); shapes are lists of ints."""
        body = asdict(self)
        return {"schema": "ckptdiff.forward/1", "ok": self.ok, **_lists(body)}

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        from ckptdiff.forward_check.render import render_text

        return render_text(self)


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value
