"""Index ranges: integer inputs with known values against the rows they index.

An input indexes a table when its values (or a slice, reshape or mask of them) reach an
embedding (its rows) or a cross-entropy / NLL loss (its classes). An input named like labels
that no loss in the model consumes is held against the classes of the output's logits, as a
loss outside the model would use them (open_clip's CoCa computes its caption loss outside).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from ckptdiff.forward_check.inputs import InputSpec
from ckptdiff.forward_check.report import FieldMatch, RangeFinding
from ckptdiff.forward_check.run import Outcome
from ckptdiff.forward_check.trace import IndexUse

__all__ = ["confirm_fields", "range_findings"]

IGNORE_INDEX = -100


def _uses(outcomes: Sequence[Outcome], specs: Sequence[InputSpec]) -> list[IndexUse]:
    seen: dict[tuple[str, str, str, int], IndexUse] = {}
    for o in outcomes:
        for u in o.uses:
            seen.setdefault((u.input, u.kind, u.module, u.limit), u)
    in_loss = {u.input for u in seen.values() if u.kind == "loss"}
    for o in outcomes:
        if o.logits is None:
            continue
        classes, producer = o.logits
        for s in specs:
            if "label" in s.name and s.is_integer and s.name not in in_loss:
                u = IndexUse(s.name, "logits", classes, producer, IGNORE_INDEX)
                seen.setdefault((u.input, u.kind, u.module, u.limit), u)
    return list(seen.values())


def range_findings(
    outcomes: Sequence[Outcome], specs: Sequence[InputSpec], leaves: Mapping[str, int]
) -> tuple[tuple[RangeFinding, ...], tuple[tuple[str, str, str, int], ...]]:
    """``(findings, checked)``: inputs past their table, and every ``(input, kind, module,
    limit)`` seen."""
    values = {s.name: s.values for s in specs if s.values is not None and s.is_integer}
    findings: list[RangeFinding] = []
    uses = _uses(outcomes, specs)
    for u in uses:
        v = values.get(u.input)
        if v is None or v.numel() == 0:
            continue
        flat = v.reshape(-1).long()
        if u.ignore_index is not None:
            flat = flat[flat != u.ignore_index]
        if flat.numel() == 0:
            continue
        low, high = int(flat.min()), int(flat.max())
        bad = int(((flat < 0) | (flat >= u.limit)).sum())
        if bad:
            fields = [FieldMatch(k, n, "config") for k, n in leaves.items() if n == u.limit]
            fields += [
                FieldMatch(k, n, "config")
                for k, n in leaves.items()
                if n == high + 1 and n != u.limit
            ]
            findings.append(
                RangeFinding(
                    u.input,
                    u.kind,
                    u.module,
                    u.limit,
                    high,
                    low,
                    bad,
                    tuple(fields[:6]),
                    u.producer,
                )
            )
    checked = tuple(sorted({(u.input, u.kind, u.module, u.limit) for u in uses}))
    return tuple(findings), checked


def confirm_fields(
    finding: RangeFinding, probe: Callable[[str, int], Outcome | None], budget: int = 4
) -> RangeFinding:
    """Probe the config fields equal to the finding's limit: rebuilt with the field doubled,
    does the table the input reaches double too?"""
    fields = []
    for f in finding.fields:
        probeable = f.kind == "config" and ".config." not in f.name
        if probeable and f.value == finding.limit and budget > 0:
            budget -= 1
            try:
                after = probe(f.name, f.value * 2)
            except Exception:  # noqa: BLE001 - a rebuild that fails tells nothing either way
                fields.append(f)
                continue
            limits = {
                u.limit
                for u in (after.uses if after else ())
                if u.input == finding.input and u.kind == finding.kind
            }
            if after is not None and after.ok and after.logits and finding.kind == "logits":
                limits.add(after.logits[0])
            f = FieldMatch(f.name, f.value, f.kind, f.value * 2 in limits)
        fields.append(f)
    fields.sort(key=lambda m: m.confirmed is not True)
    return dataclasses.replace(finding, fields=tuple(fields))
