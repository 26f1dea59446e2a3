"""``ckptdiff inspect SOURCE``."""

from __future__ import annotations

import re

import click

from ckptdiff.cli.common import debug_option, emit, format_option, handle_errors, stats_option
from ckptdiff.errors import UsageError


@click.command("inspect")
@click.argument("source")
@click.option(
    "--select",
    metavar="PATH",
    help="The state dict to use in a nested checkpoint (state_dict, model_ema, ...).",
)
@click.option(
    "--filter",
    "pattern",
    metavar="REGEX",
    help="Only keys matching REGEX (re.search), e.g. '^visual\\.' or 'attn'.",
)
@click.option(
    "--depth",
    type=click.IntRange(min=0),
    metavar="N",
    help="Summarise by module, N key components deep, instead of listing keys.",
)
@click.option(
    "--full",
    is_flag=True,
    help="List every key. By default keys that differ only in one layer index, with one "
    "shape and dtype, are one row: layers.{0-31}.mlp.fc1.weight.",
)
@format_option
@debug_option
@stats_option
@handle_errors
def inspect(
    source: str,
    select: str | None,
    pattern: str | None,
    depth: int | None,
    full: bool,
    fmt: str,
) -> None:
    """List a checkpoint's tensors: keys, shapes, dtypes, parameter counts.

    Reads only headers and pickle metadata, never tensor data, and never runs code from a
    pickle. SOURCE is a .safetensors, .pt/.pth/.bin/.ckpt file, a *.index.json of a sharded
    checkpoint, or a folder holding one of those.

    \b
    Examples:
      ckptdiff inspect model.safetensors
      ckptdiff inspect model.safetensors --full
      ckptdiff inspect last.ckpt --select state_dict --depth 2
      ckptdiff inspect ckpt_dir/ --filter 'layers\\.0\\.' --format json

    Exit codes: 0 read cleanly, 1 read but inconsistent (an index that disagrees with its
    shards...), 2 bad input, 3 the file names code outside the pickle allow-list.
    """
    from ckptdiff.readers import read
    from ckptdiff.render.manifest import render_manifest

    manifest = read(source, select=select)
    tensors = list(manifest.tensors.values())
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise UsageError(
                f"--filter {pattern!r} is not a valid regular expression ({e})."
            ) from e
        tensors = [t for t in tensors if rx.search(t.key)]
    emit(render_manifest(manifest, fmt, tensors=tensors, depth=depth, full=full))
    if manifest.security_findings:
        raise SystemExit(3)
    raise SystemExit(1 if any(f.severity == "error" for f in manifest.findings) else 0)
