"""Position-grid and patch-size causes: a ViT's ``(image / patch)**2 (+1)`` position rows
and its patch embedding's kernel. Pure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

from ckptdiff.diagnosis.cause_finding import cause_finding
from ckptdiff.naming import POSITION_HINTS
from ckptdiff.types import Finding, Manifest, Mismatch, Report
from ckptdiff.wording import listed

Shape = tuple[int, ...]
CauseRule = Callable[[Report, Manifest, Manifest], "list[Finding] | None"]


def _is_square(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r * r == n and r > 1 else None


def square_grid(rows: int) -> tuple[int, int] | None:
    """``(grid, prefix tokens)``: 577 -> (24, 1), 729 -> (27, 0)."""
    for extra in (1, 0):
        g = _is_square(rows - extra)
        if g:
            return g, extra
    return None


def patch_of(m: Manifest, branch: str) -> int | None:
    """The patch size of ``branch`` (its first key component): the side of a square conv
    kernel over 1, 3 or 4 channels (``[1024, 3, 14, 14]`` -> 14), or None."""
    for k, t in m.tensors.items():
        if (
            len(t.shape) == 4
            and k.split(".")[0] == branch
            and t.shape[2] == t.shape[3]
            and t.shape[1] in (1, 3, 4)
        ):
            return t.shape[2]
    return None


def _position_dim(m: Mismatch) -> tuple[int, int] | None:
    a, b = m.checkpoint_shape, m.target_shape
    if len(a) != len(b) or not a:
        return None
    for i in range(len(a)):
        if a[i] != b[i] and (len(a) == 1 or i == len(a) - 2):
            return a[i], b[i]
    return None


def position_rows(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """Position embeddings: a text context length, or a ViT grid (197 = 14*14+1)."""
    out = []
    for m in report.mismatched:
        if not any(h in m.key for h in POSITION_HINTS):
            continue
        d = _position_dim(m)
        if d is None:
            continue
        a, b = d
        branch = m.key.split(".")[0]
        visionish = (
            any(h in m.key for h in ("visual", "vision", "image", "patch", "pos_embed"))
            or patch_of(target, branch) is not None
        )
        ga, gb = square_grid(a), square_grid(b)
        if visionish and ga and gb:
            pa, pb = patch_of(ck, branch), patch_of(target, branch)
            sa = f"{a} = {ga[0]}*{ga[0]}" + ("+1" if ga[1] else "")
            sb = f"{b} = {gb[0]}*{gb[0]}" + ("+1" if gb[1] else "")
            img_a = ga[0] * pa if pa else None
            img_b = gb[0] * pb if pb else None
            where_a = f" (patch {pa}: image {img_a})" if img_a else ""
            where_b = f" (patch {pb}: image {img_b})" if img_b else ""
            if pb and pa == pb:
                fix = f"set the image size to {ga[0] * pb}, or interpolate the position embedding"
            elif img_a:
                fix = (
                    f"use patch {pa} and image size {img_a}, or interpolate the position embedding"
                )
            else:
                fix = "interpolate the position embedding, or match the grid"
            out.append(
                cause_finding(
                    "position_grid",
                    f"position grid of {m.key}: checkpoint {sa}"
                    f"{where_a}, target {sb}{where_b}: {fix}",
                    [m.key],
                    a,
                    b,
                    grid={"checkpoint": ga[0], "target": gb[0]},
                    prefix_tokens=ga[1],
                    patch={"checkpoint": pa, "target": pb},
                    image_size={"checkpoint": img_a, "target": img_b},
                )
            )
        else:
            out.append(
                cause_finding(
                    "positions",
                    f"position rows of {m.key}: {a} in the checkpoint vs "
                    f"{b} in the target (the context length): set it to {a}, or "
                    "truncate/extend the embedding",
                    [m.key],
                    a,
                    b,
                )
            )
    return out or None


def patch_size(report: Report, ck: Manifest, target: Manifest) -> list[Finding] | None:
    """A conv kernel (patch embedding) of another size: ``[1024, 3, 14, 14]`` vs ``[..16, 16]``."""
    by: dict[tuple[int, int], list[str]] = defaultdict(list)
    for m in report.mismatched:
        a, b = m.checkpoint_shape, m.target_shape
        if len(a) == 4 and len(b) == 4 and a[2:] != b[2:]:
            by[(a[2], b[2])].append(m.key)
    return [
        cause_finding(
            "patch_size",
            f"patch size (conv kernel) of {listed(keys)}: {x} in the "
            f"checkpoint vs {y} in the target",
            keys,
            x,
            y,
        )
        for (x, y), keys in by.items()
    ] or None
