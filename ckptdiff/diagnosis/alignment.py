"""The alignment: prefix rules, then transforms, found on what is still unpaired, and the
key-map findings and suggestions they give (unverified: :mod:`ckptdiff.diagnosis.verify`
judges them). Pure and torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.conventions import naming_convention, other_architecture
from ckptdiff.diagnosis.prefixes import PrefixMatch, find_prefix_matches, scoped_prefix_rules
from ckptdiff.diagnosis.tensor_ops import find_fused_qkv, find_transposed
from ckptdiff.diagnosis.transforms import KNOWN_RENAMES, KeyTransform, find_renames
from ckptdiff.keymap import KeyMap, rules_to_options
from ckptdiff.types import Finding, Manifest, Report, Suggestion
from ckptdiff.wording import sampled

Shape = tuple[int, ...]


# --- key alignment -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alignment:
    """The key map that pairs a checkpoint's keys with a target's, and what it achieves.

    Attributes:
        prefix_rules: the prefix rules (wrappers, branches) found first.
        transforms: renames, transposes, splits and concatenations found after them.
        key_map: all rules, in the order they apply.
        before: the comparison with no rules.
        after: the comparison with every rule applied.
        checkpoint: the checkpoint manifest with every rule applied.
    """

    prefix_rules: tuple[dict[str, Any], ...]
    transforms: tuple[KeyTransform, ...]
    key_map: KeyMap
    before: Report
    after: Report
    checkpoint: Manifest
    foreign: Finding | None = None

    @property
    def verified(self) -> bool:
        """True when every target key a transform explains loads after the map, and no
        transform rests on equal shapes alone (a rename between unrelated names)."""
        ok = set(self.after.matched) | set(self.after.tied)
        if any(t.data.get("basis") == "shapes" for t in self.transforms):
            return False
        return all(k in ok for t in self.transforms for k in t.target_keys)


def _only(report: Report) -> tuple[dict[str, Shape], dict[str, Shape]]:
    return ({t.key: t.shape for t in report.unexpected}, {t.key: t.shape for t in report.missing})


def align(checkpoint: Manifest, target: Manifest, *, depth: int = 2) -> Alignment:
    """Find the key map that turns unexpected + missing (and transposed) keys into matches.

    Prefixes first (:func:`~ckptdiff.align.find_prefix_matches`), then transposed weights,
    renames, fused vs split q/k/v and renames again, each on what is still unpaired.

    Args:
        checkpoint: the checkpoint's manifest (after the user's key map).
        target: the target's manifest.
        depth: coverage depth of the reports.

    Returns:
        The :class:`Alignment`; ``key_map`` is empty when nothing pairs up.

    Example:
        >>> from ckptdiff.types import TensorSpec as T
        >>> ck = Manifest("c", "x", {"n.gamma": T("n.gamma", (4,), "float32")})
        >>> tg = Manifest("t", "x", {"n.weight": T("n.weight", (4,), "float32")})
        >>> align(ck, tg).key_map.to_list()[0]["op"]
        'rename'
    """
    before = compare(checkpoint, target, depth=depth)
    unpaired = other_architecture(checkpoint, target) or naming_convention(
        checkpoint, target, before
    )
    if unpaired is not None:  # no key map is safe: none is proposed
        return Alignment((), (), KeyMap(), before, before, checkpoint, unpaired)
    prefix_rules: list[dict[str, Any]] = []
    for m in find_prefix_matches(
        (t.key for t in before.unexpected), (t.key for t in before.missing)
    ):
        prefix_rules += scoped_prefix_rules(m, checkpoint.tensors)
    km = KeyMap.from_rules(prefix_rules)
    ck = km.apply_to_manifest(checkpoint)
    report = compare(ck, target, depth=depth) if prefix_rules else before
    transforms: list[KeyTransform] = []
    foreign = other_architecture(ck, target)
    if foreign is not None:  # per-key renames between two architectures are coincidences
        return Alignment(tuple(prefix_rules), (), km, before, report, ck, foreign)

    def take(found: Iterable[KeyTransform]) -> None:
        nonlocal ck, report, km
        for found_t in found:
            t: KeyTransform | None = found_t
            if found_t.kind == "rename" and not found_t.data.get("known", True):
                t = _rename_basis(found_t, report)
            if t is None:
                continue
            step = KeyMap.from_rules(t.rules)
            trial = step.apply_to_manifest(ck)
            trial_report = compare(trial, target, depth=depth)
            if len(trial_report.matched) <= len(report.matched):
                continue  # a rule must make more keys load, or it is not proposed
            transforms.append(t)
            km, ck, report = km + step, trial, trial_report

    take(
        filter(
            None,
            [
                find_transposed(
                    ((m.key, m.checkpoint_shape, m.target_shape) for m in report.mismatched),
                    {k: ck.tensors[k].shape for k in report.matched if k in ck.tensors},
                    target_class=_target_class(target),
                )
            ],
        )
    )
    take(find_renames(*_only(report)))
    take(find_fused_qkv(*_only(report)))
    take(find_renames(*_only(report)))
    take(_known_renames_then_prefix(report))
    return Alignment(tuple(prefix_rules), tuple(transforms), km, before, report, ck)


def _target_class(target: Manifest) -> str | None:
    cls = target.metadata.get("class")
    return cls if isinstance(cls, str) else None


#: A rename whose keys share this share of their components is a rename of the same model.
SIMILAR_NAMES = 0.5
#: Share of the target's parameters that must already load for a rename on shapes alone.
MOSTLY_MATCHES = 0.5


def _rename_basis(t: KeyTransform, report: Report) -> KeyTransform | None:
    """A rename that is not a known one is kept when the renamed keys share most of their
    components (``basis="names"``), or when most of the model already loads as it is
    (``basis="shapes"``: proposed, never verified); otherwise it is a coincidence of shapes."""
    if float(t.data.get("similarity", 0.0)) >= SIMILAR_NAMES:
        return replace(t, data={**t.data, "basis": "names"})
    share = report.whole_share
    if share < MOSTLY_MATCHES:
        return None
    return replace(
        t,
        message=t.message.replace(
            "(same shapes): rename it",
            "(same shapes, names with little in common): check it before renaming",
        ),
        data={**t.data, "basis": "shapes"},
    )


def _known_renames_then_prefix(report: Report) -> list[KeyTransform]:
    """``module.ln.gamma`` vs ``ln.weight``: a known rename hides a prefix; try both at once."""
    unexpected, missing = _only(report)
    rules = [
        {"op": "rename", "pattern": rf"(?P<pre>^|\.){old[0]}$", "replacement": rf"\g<pre>{new[0]}"}
        for old, new in KNOWN_RENAMES.items()
    ]
    km = KeyMap.from_rules(rules)
    renamed = {km.apply(u): u for u in unexpected}
    if all(k == v for k, v in renamed.items()):
        return []
    out = []
    for m in find_prefix_matches(renamed, missing):
        pairs = tuple(((renamed[u],), (t,)) for u, t in m.pairs)
        out.append(
            KeyTransform(
                "rename",
                tuple(rules) + tuple(m.rules()),
                pairs,
                f"{len(pairs)} checkpoint keys are target keys after renaming "
                f"gamma/beta to weight/bias and '{m.options()}'",
                {"option": m.options()},
            )
        )
    return out


def _module_shares(report: Report) -> dict[str, float]:
    return {c.module: c.share for c in report.coverage if c.module.count(".") == 0}


def alignment_findings(al: Alignment) -> tuple[list[Finding], list[Suggestion]]:
    """What an alignment tells the user: a finding per key transform (``key_rename``,
    ``transposed``, ``fused_qkv``) and one ``key_map`` suggestion holding every rule, with the
    coverage before and after; nothing when no transform was found.

    Example:
        >>> findings, suggestions = alignment_findings(align(ck, target))  # doctest: +SKIP
        >>> suggestions[0].kind  # doctest: +SKIP
        'key_map'
    """
    if not al.transforms:
        return [], []
    findings = []
    for t in al.transforms:
        kind = {"rename": "key_rename", "transpose": "transposed"}.get(t.kind, "fused_qkv")
        keys = tuple(k for ks, _ in t.pairs for k in ks)
        findings.append(
            Finding(
                kind,
                t.message,
                keys[:20],
                "warning",
                {**t.data, "rules": list(t.rules), "explains": len(t.pairs)},
            )
        )
    before = al.before.whole_share
    after = al.after.whole_share
    b_mod, a_mod = _module_shares(al.before), _module_shares(al.after)
    by_module = [
        {"module": m, "before": round(b_mod.get(m, 0.0), 6), "after": round(a, 6)}
        for m, a in a_mod.items()
        if m and round(a, 6) != round(b_mod.get(m, 0.0), 6)
    ]
    kinds = ", ".join(sorted({t.kind for t in al.transforms}))
    evidence = _key_map_evidence(al.transforms)
    rules = al.key_map.to_list()
    suggestion = Suggestion(
        "key_map",
        rules_to_options(rules) or "--key-map",
        None,
        rules,
        "unverified",
        f"A key map ({kinds}) pairs {sum(len(t.pairs) for t in al.transforms)} more keys: "
        f"coverage {100 * before:.1f}% -> {100 * after:.1f}%; write it with --emit-key-map",
        evidence,
        {
            "combined": True,
            "names_unrelated": any(t.data.get("basis") == "shapes" for t in al.transforms),
            "coverage_before": round(before, 6),
            "coverage_after": round(after, 6),
            "coverage_by_module": by_module,
            "python": al.key_map.python_snippet(),
        },
    )
    return findings, [suggestion]


def _key_map_evidence(transforms: Sequence[KeyTransform]) -> tuple[str, ...]:
    """One entry per key a transform moves (transposed square keys too), the transforms
    taking turns so each shows up in the samples."""
    per: list[list[str]] = []
    for t in transforms:
        if t.kind == "transpose":
            keys = [k for ks, _ in t.pairs for k in ks] + list(t.data.get("square", ()))
            per.append([f"{k}: .t()" for k in keys])
        else:
            per.append([f"{' + '.join(ks)} -> {' + '.join(ts)}" for ks, ts in t.pairs])
    entries = [e for row in _zip_longest(per) for e in row]
    return sampled(entries)


def _zip_longest(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    width = max((len(r) for r in rows), default=0)
    return [[r[i] for r in rows if i < len(r)] for i in range(width)]


def key_map_to_emit(report: Report) -> list[dict[str, Any]] | None:
    """The verified key map of a report, as rules for ``--key-map``; None when there is none.

    The map of the comparison shown "with the key map applied" (``report.aligned``) when it is
    a verified suggestion, else the verified prefix rules.
    """
    shown = [dict(r) for r in report.aligned.key_map] if report.aligned is not None else None
    maps = [s for s in report.suggestions if s.kind == "key_map"]
    for s in maps:
        if shown is not None and [dict(r) for r in s.suggested] == shown:
            return shown if s.verified else None
    rules = [dict(r) for s in maps if s.verified for r in s.suggested]
    return rules or None


def _coverage_moves(before: Report, after: Report) -> list[dict[str, Any]]:
    """Top-level modules whose coverage a key map changes: ``{"module", "before", "after"}``."""
    b = {c.module: c.share for c in before.coverage if c.module and "." not in c.module}
    return [
        {"module": c.module, "before": round(b.get(c.module, 0.0), 6), "after": round(c.share, 6)}
        for c in after.coverage
        if c.module and "." not in c.module and round(c.share, 6) != round(b.get(c.module, 0.0), 6)
    ]


def prefix_key_maps(
    report: Report, checkpoint: Manifest, target: Manifest, depth: int
) -> tuple[list[Finding], list[Suggestion]]:
    """Findings and (unverified) key-map suggestions for keys that differ only by a prefix."""
    if other_architecture(checkpoint, target) or naming_convention(checkpoint, target, report):
        return [], []  # the explain step says so, once; no key map is safe
    matches: list[PrefixMatch] = find_prefix_matches(
        (t.key for t in report.unexpected), (t.key for t in report.missing)
    )
    findings: list[Finding] = []
    suggestions: list[Suggestion] = []
    before = report.whole_share
    for m in matches:
        rules = scoped_prefix_rules(m, checkpoint.tensors)
        km = KeyMap.from_rules(rules)
        after_report = compare(km.apply_to_manifest(checkpoint), target, depth=depth)
        explained = [t for _, t in m.pairs]
        now_present = set(after_report.matched) | set(after_report.tied)
        loads = sum(1 for t in explained if t in now_present)
        after = after_report.whole_share
        what = (
            f"under the wrapper prefix '{m.strip}'"
            if m.is_wrapper and m.strip
            else f"without the prefix '{m.add}'"
            if m.is_wrapper
            else f"under '{m.strip}' instead of '{m.add}'"
            if m.strip and m.add
            else f"under the extra prefix '{m.strip}'"
            if m.strip
            else f"without the prefix '{m.add}' the target has"
        )
        option = rules_to_options(rules) or m.options()
        shape_note = (
            ""
            if loads == len(explained)
            else f" ({len(explained) - loads} of them then differ in shape)"
        )
        scope = ""
        if rules != m.rules():
            heads = sorted({u[len(m.strip) :].split(".", 1)[0] for u, _ in m.pairs})
            scope = f" (only the keys under {', '.join(m.strip + h + '.' for h in heads)})"
        message = (
            f"{len(m.pairs)} checkpoint keys are target keys {what}{shape_note}; "
            f"fix with '{option}'{scope}"
        )
        by_module = _coverage_moves(report, after_report)
        data = {
            "option": option,
            "rules": rules,
            "explains": len(m.pairs),
            "coverage_before": round(before, 6),
            "coverage_after": round(after, 6),
            "coverage_by_module": by_module,
        }
        findings.append(
            Finding(
                "wrapper_prefix" if m.is_wrapper else "key_prefix",
                message,
                tuple(u for u, _ in m.pairs[:5]),
                "warning",
                data,
            )
        )
        suggestions.append(
            Suggestion(
                "key_map",
                option,
                None,
                rules,
                "unverified",
                message,
                sampled([f"{u} -> {t}" for u, t in m.pairs]),
                {
                    "coverage_before": round(before, 6),
                    "coverage_after": round(after, 6),
                    "coverage_by_module": by_module,
                },
            )
        )
    return findings, suggestions
