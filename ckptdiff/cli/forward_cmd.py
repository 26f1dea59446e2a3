"""``ckptdiff forward --model TARGET``."""

from __future__ import annotations

import click

from ckptdiff.cli.common import (
    debug_option,
    emit,
    format_option,
    handle_errors,
    target_options,
)


@click.command("forward")
@target_options()
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=SHAPE[:DTYPE]",
    help="A forward argument by shape, e.g. input_ids=2x77:int64, pixel_values=2x3x224x224. "
    "Dim 0 is the batch. DTYPE defaults to int64 for names ending in ids, labels, mask, text, "
    "tokens, positions or offsets, float32 otherwise. Repeatable.",
)
@click.option(
    "--batch",
    "batch",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="One saved collated batch (torch.save(dict(batch), FILE) or .safetensors): its tensors "
    "are the inputs, and the values of its small integer tensors (ids, labels) are checked "
    "against the embedding rows and classes they index. Runs at its own batch size.",
)
@click.option(
    "--batch-sizes",
    "batch_sizes",
    metavar="1,2,8",
    help="Run with dim 0 of every input set to each of these.  [default: 1,2,8; a --batch "
    "file: its own size]",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "shape-only", "data"]),
    default="auto",
    show_default=True,
    help="shape-only: the model on meta under fake tensors (no weights, no arithmetic). data: "
    "the model on CPU (shrunk when large) with random weights. auto: shape-only, and data "
    "mode where the forward reads values.",
)
@format_option
@debug_option
@handle_errors
def forward(
    model: str,
    args: tuple[str, ...],
    config: str | None,
    auto_class: str | None,
    inputs: tuple[str, ...],
    batch: str | None,
    batch_sizes: str | None,
    mode: str,
    fmt: str,
) -> None:
    """Run the forward pass of the model TARGET without its weights, and say where it breaks.

    Catches what a state dict cannot show: a text tower built for 77 tokens beside a decoder
    built for 76, offsets that only break in a padded batch above 1, labels past the classes
    of the head. A failure names the module path, the op, the operand shapes and the config
    fields equal to the failing dimensions (confirmed by rebuilding with the field doubled).

    \b
    Examples:
      ckptdiff forward --model hf-config:config.json --input input_ids=2x512
      ckptdiff forward --model open_clip_like:CoCa --config coca.json \\
          --input image=2x3x224x224 --input text=2x77
      ckptdiff forward --model train.py:make_model --batch batch.pt

    Exit codes: 0 forward ok, 1 a failure found, 2 bad input, a target that does not build,
    or nothing could be run.
    """
    from ckptdiff.forward_check.api import forward as run_forward
    from ckptdiff.forward_check.inputs import parse_batch_sizes
    from ckptdiff.forward_check.render import render_forward

    report = run_forward(
        model,
        list(inputs),
        batch=batch,
        batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes else None,
        mode=mode,  # type: ignore[arg-type]
        args=list(args),
        config=config,
        auto_class=auto_class,
    )
    emit(render_forward(report, fmt))
    raise SystemExit(report.exit_code)
