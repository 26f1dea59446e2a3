"""``ckptdiff identify CKPT --candidates DIR [--model FACTORY]``."""

from __future__ import annotations

import click

from ckptdiff.cli.common import debug_option, emit, format_option, handle_errors, stats_option


@click.command("identify")
@click.argument("ckpt")
@click.option(
    "--candidates",
    "candidates",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Folder of candidate configs: *.json for --model, else transformers configs "
    "(or folders holding a config.json).",
)
@click.option(
    "--model",
    "-m",
    "model",
    metavar="FACTORY",
    help="The factory (pkg.module:callable) each *.json in DIR configures.",
)
@click.option("--select", metavar="PATH", help="The state dict inside CKPT (state_dict...).")
@format_option
@debug_option
@stats_option
@handle_errors
def identify(ckpt: str, candidates: str, model: str | None, select: str | None, fmt: str) -> None:
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
    from ckptdiff.render.identify import render_candidates

    ranked = rank(ckpt, candidates, model=model, select=select)
    emit(render_candidates(ranked, fmt))
    best = ranked[0] if ranked else None
    raise SystemExit(0 if best is not None and best.report is not None and best.report.ok else 1)
