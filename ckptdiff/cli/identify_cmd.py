"""``ckptdiff identify CKPT --candidates DIR [--model FACTORY]``."""

from __future__ import annotations

import json

import click

from ckptdiff.cli.common import debug_option, emit, format_option, handle_errors, stats_option


def render_candidates(ranked: list, fmt: str) -> str:
    """The ranking as a table (or markdown, or JSON)."""
    if fmt == "json":
        return json.dumps({"schema": "ckptdiff.identify/1",
                           "candidates": [c.to_dict() for c in ranked]}, indent=2) + "\n"
    from tabulate import tabulate

    rows = []
    for i, c in enumerate(ranked, 1):
        if c.report is None:
            rows.append([i, c.name, "-", "-", "-", "-", "-", "-", f"does not build: {c.error}"])
            continue
        n = c.counts
        rows.append([i, c.name, n["matched"], n["mismatched"], n["missing"], n["unexpected"],
                     f"{100 * c.coverage:.1f}%", f"{c.fit:.3f}",
                     "fits exactly" if c.report.ok else ""])
    headers = ["rank", "candidate", "matched", "mismatched", "missing", "unexpected",
               "coverage", "fit", "verdict"]
    return tabulate(rows, headers, tablefmt="github" if fmt == "markdown" else "simple",
                    disable_numparse=True) + "\n"


@click.command("identify")
@click.argument("ckpt")
@click.option("--candidates", "candidates", required=True, metavar="DIR",
              type=click.Path(file_okay=False),
              help="Folder of candidate configs: *.json for --model, else transformers configs "
                   "(or folders holding a config.json).")
@click.option("--model", "-m", "model", metavar="FACTORY",
              help="The factory (pkg.module:callable) each *.json in DIR configures.")
@click.option("--select", metavar="PATH", help="The state dict inside CKPT (state_dict...).")
@format_option
@debug_option
@stats_option
@handle_errors
def identify(ckpt: str, candidates: str, model: str | None, select: str | None,
             fmt: str) -> None:
    """Rank the configs in DIR by how well checkpoint CKPT fits each, best first.

    Each candidate is built on meta (no weights), keys are aligned (module., _orig_mod. ...),
    and the fit is the share of parameters both sides agree on. One line per candidate with
    its diff counts and the coverage of the candidate by the checkpoint.

    \b
    Examples:
      ckptdiff identify vit_l_336.pt --candidates configs/open_clip --model mypkg:build_clip
      ckptdiff identify model.safetensors --candidates hf_configs/

    Exit codes: 0 the best candidate fits exactly, 1 none does, 2 bad input.
    """
    from ckptdiff._identify import identify as rank

    ranked = rank(ckpt, candidates, model=model, select=select)
    emit(render_candidates(ranked, fmt))
    best = ranked[0] if ranked else None
    raise SystemExit(0 if best is not None and best.report is not None and best.report.ok else 1)
