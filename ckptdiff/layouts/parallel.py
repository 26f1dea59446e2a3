"""Tensor/model-parallel shards: one file per rank, each matrix cut 1/N along one dimension.

Megatron-style and Meta ``consolidated.XX.pth`` checkpoints store, per rank, the same keys:
column-parallel weights cut along their output rows (``[out/N, in]``), row-parallel weights cut
along their input columns (``[out, in/N]``), vocab- or embedding-parallel tables cut along one
dimension, and norms replicated. A uniform cut gives every rank the same shapes, so the cut
dimension is told from the model's hidden width ``H`` (``params.json``'s ``dim``, training
args' ``hidden_size``, or the length of the replicated norm weights): the dimension that is not
``H`` (or that is ``H/N``) is the cut one.

Torch-free; works on manifests.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ckptdiff.types import Finding, Manifest, Mismatch, Report, TensorSpec

__all__ = [
    "hidden_width",
    "merge_manifests",
    "shard_factor_finding",
    "split_dims",
]

_NORM = re.compile(
    r"(?:^|[._])(?:norm|ln|layernorm|layer_norm|rms_norm|ln_f|ln_\d)(?:[._]|$)", re.IGNORECASE
)


def hidden_width(specs: Mapping[str, TensorSpec], hint: int | None = None) -> int | None:
    """The model's hidden width: ``hint`` when given, else the most common norm-weight length."""
    if hint:
        return hint
    lengths = Counter(
        t.shape[0]
        for k, t in specs.items()
        if len(t.shape) == 1 and _NORM.search(k) and k.endswith("weight")
    )
    if not lengths:
        lengths = Counter(t.shape[0] for t in specs.values() if len(t.shape) == 1)
    return lengths.most_common(1)[0][0] if lengths else None


def split_dims(
    specs: Mapping[str, TensorSpec], n: int, hidden: int | None
) -> dict[str, int | None]:
    """For each key, the dimension a uniform 1/``n`` split cut (None: replicated or unknown).

    Example:
        >>> from ckptdiff.types import TensorSpec as T
        >>> s = {"wq.weight": T("wq.weight", (4, 8), "f"), "wo.weight": T("wo.weight", (8, 4), "f"),
        ...      "norm.weight": T("norm.weight", (8,), "f")}
        >>> split_dims(s, 2, 8)
        {'wq.weight': 0, 'wo.weight': 1, 'norm.weight': None}
    """
    out: dict[str, int | None] = {}
    if hidden is None:
        return {k: None for k in specs}
    for key, t in specs.items():
        dim: int | None = None
        if len(t.shape) >= 2:
            a, b = t.shape[0], t.shape[1]
            if b == hidden and a != hidden:
                dim = 0
            elif a == hidden and b != hidden:
                dim = 1
            elif a != hidden and b != hidden:
                dim = 1 if b * n == hidden else 0 if a * n == hidden else None
        out[key] = dim
    for key, t in specs.items():  # a bias follows its weight when the weight's rows are cut
        if len(t.shape) == 1 and key.endswith(".bias") and t.shape[0] != hidden:
            weight = out.get(key[: -len("bias")] + "weight")
            out[key] = 0 if weight == 0 else None
    return out


def merge_manifests(
    ranks: Sequence[Manifest],
    source: str,
    *,
    format_: str = "model-parallel",
    rank_files: Sequence[str] = (),
    hidden: int | None = None,
) -> Manifest:
    """Merge the manifests of ``N`` model-parallel ranks into the logical model's manifest.

    Keys whose shapes differ across ranks are concatenated along the one dimension that
    differs; keys with equal shapes are cut along the dimension :func:`split_dims` names.

    Args:
        ranks: one manifest per rank, rank 0 first.
        source: the source string.
        format_: the merged manifest's format.
        rank_files: the rank files, for messages.
        hidden: the model's hidden width, when known (``params.json``'s ``dim``).

    Returns:
        A manifest of merged shapes, ``metadata["layout"] == "model-parallel"`` and a ``layout``
        finding that says how many tensors were cut along which dimension.
    """
    n = len(ranks)
    first = ranks[0]
    findings: list[Finding] = []
    keysets = [set(r.tensors) for r in ranks]
    uneven = sorted(set[str]().union(*keysets) - keysets[0].intersection(*keysets[1:]))
    if uneven:
        findings.append(
            Finding(
                "mp_keys_differ",
                f"the {n} model-parallel ranks do not hold the same keys "
                f"({len(uneven)} differ, e.g. {', '.join(uneven[:3])}): "
                "a rank file is from another "
                "model or save",
                tuple(uneven[:50]),
                "error",
            )
        )
    h = hidden_width(first.tensors, hidden)
    dims = split_dims(first.tensors, n, h)
    merged: dict[str, TensorSpec] = {}
    by_dim: Counter[str] = Counter()
    for key, t in first.tensors.items():
        shapes = [r.tensors[key].shape for r in ranks if key in r.tensors]
        same_rank = [s for s in shapes if len(s) == len(t.shape)]
        differing = [d for d in range(len(t.shape)) if len({s[d] for s in same_rank}) > 1]
        if len(differing) == 1 and len(shapes) == n:
            d = differing[0]
            shape = tuple(sum(s[d] for s in shapes) if i == d else x for i, x in enumerate(t.shape))
            by_dim[f"dim {d} (uneven)"] += 1
        elif (cut := dims.get(key)) is not None and len(shapes) == n:
            shape = tuple(x * n if i == cut else x for i, x in enumerate(t.shape))
            by_dim[f"dim {cut}"] += 1
        else:
            shape = t.shape
            by_dim["replicated"] += 1
        nbytes = None if t.nbytes is None or not t.numel else t.nbytes // t.numel * math.prod(shape)
        merged[key] = TensorSpec(key, shape, t.dtype, nbytes, t.file)
    counts = ", ".join(
        f"{c} on {d}" if d != "replicated" else f"{c} replicated" for d, c in sorted(by_dim.items())
    )
    width = f"hidden width {h}" if h else "no hidden width found"
    more = ", ..." if len(rank_files) > 4 else ""
    files = f" ({', '.join(rank_files[:4])}{more})" if rank_files else ""
    findings.insert(
        0,
        Finding(
            "layout",
            f"model-parallel shards: {n} ranks{files}, each holding 1/{n} of the split tensors. "
            f"Listed with merged logical shapes ({counts}; "
            f"split dimensions inferred from the {width}). "
            "Merge the ranks (concatenate along those dimensions) before loading into an unsharded "
            "model, or load with the same model-parallel size",
            (),
            "info",
            {
                "layout": "model-parallel",
                "mp_world_size": n,
                "hidden": h,
                "split_dims": {k: d for k, d in dims.items() if d is not None},
            },
        ),
    )
    metadata: dict[str, Any] = dict(first.metadata)
    inner = metadata.get("layout")
    metadata.update(
        {"layout": "model-parallel", "mp_world_size": n, "rank_layout": inner, "hidden": h}
    )
    return Manifest(
        source=source,
        format=format_,
        tensors=merged,
        files=tuple(f for r in ranks for f in r.files),
        metadata=metadata,
        findings=(*findings, *first.findings),
        selected=first.selected,
        candidates=first.candidates,
    )


def _factor(m: Mismatch) -> tuple[int, int] | None:
    """``(dim, N)`` when the target's shape is the checkpoint's with one dimension times N."""
    a, b = m.checkpoint_shape, m.target_shape
    if len(a) != len(b):
        return None
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if len(diff) != 1:
        return None
    x, y = a[diff[0]], b[diff[0]]
    if x and y % x == 0 and y // x >= 2:
        return diff[0], y // x
    return None


def shard_factor_finding(report: Report, target: Manifest | None = None) -> Finding | None:
    """One model-parallel rank checked against the whole model: the matrices are cut ``1/N``.

    Returns an ``error`` finding (``mp_shard``) when at least two mismatches, and every one of
    them, are the target's shape with one dimension divided by the same ``N``, and those cut
    tensors are most of the split-able ones (matrices: embeddings and projections) the
    checkpoint supplies. A rank cuts every column- and row-parallel matrix, so a handful of
    halved tensors among many that load (the k/v projections of grouped-query attention, a
    vocabulary half the size) is another cause, not a shard. When the explain layer found a
    key map, the comparison with it applied (``report.aligned``) is the one judged.

    Args:
        report: the comparison (``aligned`` used when present).
        target: the target's manifest, for the shapes of the keys that match.
    """
    findings = report.findings
    report = report.aligned or report
    if len(report.mismatched) < 2:
        return None
    factors = [_factor(m) for m in report.mismatched]
    if any(f is None for f in factors):
        return None
    ns = {f[1] for f in factors if f is not None}
    if len(ns) != 1:
        return None
    n = ns.pop()
    if _explained_elsewhere(report.mismatched, findings):
        return None
    cut = len(report.mismatched)
    splittable = cut + sum(1 for k in report.matched if _is_matrix(k, target))
    if cut * 2 < splittable:  # a uniform split leaves few matrices whole
        return None
    dims = Counter(f[0] for f in factors if f is not None)
    listed = ", ".join(f"{c} on dim {d}" for d, c in sorted(dims.items()))
    keys = tuple(m.key for m in report.mismatched)
    return Finding(
        "mp_shard",
        f"This looks like one of {n} model-parallel shards: all {len(keys)} mismatched tensors are "
        f"exactly 1/{n} of the target's along one dimension ({listed}), "
        f"{cut} of the {splittable} matrices it supplies. Merge the {n} rank files "
        f"(e.g. consolidated.00.pth ... consolidated.{n - 1:02d}.pth) first, or run with "
        f"model parallelism {n}",
        keys[:50],
        "error",
        {"mp_world_size": n, "dims": dict(dims), "cut": cut, "matrices": splittable},
    )


#: causes that halve a dimension of some tensors for another reason than a model-parallel cut
_OTHER_CAUSES = frozenset({"kv_heads"})


def _explained_elsewhere(mismatched: Sequence[Mismatch], findings: Sequence[Finding]) -> bool:
    """Every mismatch is named by a cause that is not a model-parallel cut (GQA's k/v rows)."""
    explained: set[str] = set()
    for f in findings:
        if f.kind == "cause" and f.data.get("cause") in _OTHER_CAUSES:
            explained.update(f.data.get("keys") or f.keys)
    return bool(explained) and all(m.key in explained for m in mismatched)


def _is_matrix(key: str, target: Manifest | None) -> bool:
    spec = target.tensors.get(key) if target is not None else None
    return spec is not None and len(spec.shape) >= 2


def with_finding(report: Report, finding: Finding | None) -> Report:
    """``report`` with ``finding`` put first (unchanged when None)."""
    return report if finding is None else replace(report, findings=(finding, *report.findings))
