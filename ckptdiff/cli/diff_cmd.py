"""``ckptdiff diff A B``."""

from __future__ import annotations

import click

from ckptdiff.cli.common import (
    build_keymap,
    coverage_depth_option,
    debug_option,
    emit,
    format_option,
    handle_errors,
    key_map_file_options,
    keymap_options,
    stats_option,
    write_json,
)


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.option(
    "--select", metavar="PATH", help="The state dict to use inside A (state_dict, model_ema...)."
)
@click.option("--b-select", metavar="PATH", help="The state dict to use inside B.")
@keymap_options("", "A")
@keymap_options("b-", "B")
@key_map_file_options("A")
@click.option(
    "--full",
    is_flag=True,
    help="List every key; by default keys that differ only in a layer index are "
    "collapsed into one row (resblocks.{0-23}.ln_1.weight).",
)
@click.option("--coverage", is_flag=True, help="Add per-module coverage of B by A.")
@coverage_depth_option
@format_option
@debug_option
@stats_option
@handle_errors
def diff(
    a: str,
    b: str,
    select: str | None,
    b_select: str | None,
    strip_prefix: tuple[str, ...],
    add_prefix: tuple[str, ...],
    rename: tuple[str, ...],
    b_strip_prefix: tuple[str, ...],
    b_add_prefix: tuple[str, ...],
    b_rename: tuple[str, ...],
    key_map_file: str | None,
    emit_key_map: str | None,
    full: bool,
    coverage: bool,
    depth: int,
    fmt: str,
) -> None:
    """Compare checkpoint A with B, the checkpoint or layout you mean to load it into.

    Reports what loading A into a model shaped like B would hit: keys B expects that A lacks
    (missing), keys of A that B has no place for (unexpected), keys with other shapes
    (mismatched, both shapes side by side) and dtype changes. When A's keys are B's under a
    wrapper prefix (module., _orig_mod., model.) it says so and shows the option that fixes it.

    \b
    Examples:
      ckptdiff diff finetuned.safetensors base/model.safetensors
      ckptdiff diff ddp.pt model.pt --strip-prefix module.
      ckptdiff diff last.ckpt model.safetensors --select state_dict --format json

    Exit codes, like diff(1): 0 compatible, 1 differences found, 2 bad input,
    3 a file names code outside the pickle allow-list.
    """
    from ckptdiff._diff import diff_sources
    from ckptdiff.render.report import render_report

    report = diff_sources(
        a,
        b,
        key_map=build_keymap(strip_prefix, add_prefix, rename, key_map_file),
        target_key_map=build_keymap(b_strip_prefix, b_add_prefix, b_rename),
        select=select,
        target_select=b_select,
        depth=depth,
    )
    if fmt == "json":
        emit(render_report(report, "json"))
    else:
        emit(render_report(report, fmt, full=full, coverage=coverage))
    if emit_key_map:
        from ckptdiff.diagnosis.emit import emitted_key_map

        key_map = emitted_key_map(report)
        if key_map is None:
            click.echo(f"ckptdiff: no verified key map to write to {emit_key_map}.", err=True)
        else:
            write_json(emit_key_map, key_map)
    raise SystemExit(report.exit_code)
