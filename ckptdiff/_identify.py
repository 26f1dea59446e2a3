"""Identify: rank candidate targets (configs) by how well a checkpoint fits each, best first.

With a factory, each ``*.json`` in a folder is tried as its ``--config``; without one, each
transformers config in the folder (a ``*.json`` naming a ``model_type``, or a sub-folder
holding a ``config.json``). Every candidate is built on meta (torch is imported then), keys
are aligned (wrapper prefixes and the like), and the fit is the share of parameters both
sides agree on: ``matched / (checkpoint + candidate - matched)``, so a candidate that is too
small and one that is too large both lose.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ckptdiff.errors import CkptDiffError, UsageError
from ckptdiff.hf_files import is_hf_config
from ckptdiff.types import Manifest, Report

__all__ = ["Candidate", "find_candidates", "identify"]


@dataclass(frozen=True)
class Candidate:
    """One candidate target and how the checkpoint fits it.

    Attributes:
        name: the file or folder name (``ViT-L-14-336.json``).
        path: where it is.
        report: the comparison after key alignment (None when it did not build).
        fit: matched parameters over the union of both sides' parameters (0..1).
        error: why it did not build.
    """

    name: str
    path: str
    report: Report | None
    fit: float = 0.0
    error: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        """matched / mismatched / missing / unexpected tensor counts."""
        r = self.report
        if r is None:
            return {"matched": 0, "mismatched": 0, "missing": 0, "unexpected": 0}
        return {
            "matched": len(r.matched),
            "mismatched": len(r.mismatched),
            "missing": len(r.missing),
            "unexpected": len(r.unexpected),
        }

    @property
    def coverage(self) -> float:
        """Share of the candidate's parameters the checkpoint supplies."""
        return self.report.whole_share if self.report is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "name": self.name,
            "path": self.path,
            "fit": round(self.fit, 6),
            "coverage": round(self.coverage, 6),
            "ok": bool(self.report and self.report.ok),
            **self.counts,
            "error": self.error,
        }


def find_candidates(folder: str, *, factory: bool) -> list[str]:
    """The candidate configs in ``folder``, sorted by name.

    Raises:
        UsageError: ``folder`` is not a folder, or holds no candidates.
    """
    if not os.path.isdir(folder):
        raise UsageError(f"Cannot use --candidates '{folder}': not a folder.")
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".json") and os.path.isfile(path):
            if factory or is_hf_config(path, by_architectures=False):
                out.append(path)
        elif not factory and os.path.isfile(os.path.join(path, "config.json")):
            out.append(path)
    if not out:
        what = "*.json files" if factory else "transformers configs (or folders with config.json)"
        raise UsageError(f"Cannot use --candidates '{folder}': it holds no {what}.")
    return out


def _matched_params(report: Report, target: Manifest) -> int:
    return sum(target.tensors[k].numel for k in report.matched if k in target.tensors)


def identify(
    checkpoint: str | Manifest,
    candidates: str | Sequence[str],
    *,
    model: str | None = None,
    select: str | None = None,
) -> list[Candidate]:
    """Rank candidate configs for a checkpoint, best fit first.

    Args:
        checkpoint: a source path or a manifest (a manifest built in memory works as well).
        candidates: a folder (see :func:`find_candidates`) or a list of config paths.
        model: a factory (``pkg.module:callable``) whose ``--config`` each candidate is;
            without it each candidate is a transformers config.
        select: the state dict inside a nested checkpoint.

    Returns:
        Candidates sorted by fit (then fewer mismatches); ones that did not build come last,
        with their error.

    Example:
        >>> ranked = identify("vit_l_336.safetensors", "configs/", model="mypkg:build_clip")
        ... # doctest: +SKIP
        >>> ranked[0].name  # doctest: +SKIP
        'ViT-L-14-336.json'
    """
    from ckptdiff.diagnosis.alignment import align
    from ckptdiff.targets import build_target

    if isinstance(checkpoint, Manifest):
        ck = checkpoint
    else:
        from ckptdiff.readers import read

        ck = read(checkpoint, select=select)
    paths = (
        find_candidates(candidates, factory=model is not None)
        if isinstance(candidates, str)
        else list(candidates)
    )
    ck_params = ck.parameter_count
    out: list[Candidate] = []
    for path in paths:
        name = os.path.basename(os.path.normpath(path))
        try:
            if model is not None:
                target = build_target(model, config=path)
            else:
                target = build_target(f"hf-config:{path}")
        except CkptDiffError as e:
            out.append(Candidate(name, path, None, 0.0, str(e)))
            continue
        report = align(ck, target).after
        matched = _matched_params(report, target)
        union = ck_params + target.parameter_count - matched
        fit = matched / union if union else 1.0
        out.append(Candidate(name, path, report, fit))
    out.sort(key=lambda c: (c.report is None, -c.fit, c.counts["mismatched"], c.name))
    return out
