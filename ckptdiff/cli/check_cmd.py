"""``ckptdiff check CKPT --model TARGET``."""

from __future__ import annotations

from typing import Any

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
    no_cache_option,
    stats_option,
    write_json,
)


@click.command("check")
@click.argument("ckpt")
@click.option(
    "--model",
    "-m",
    "model",
    required=True,
    metavar="TARGET",
    help="The model to load into: pkg.module:callable, path/to/file.py:callable, "
    "hf-config:path/config.json, or a folder with a config.json.",
)
@click.option(
    "--arg",
    "args",
    multiple=True,
    metavar="KEY=VALUE",
    help="A keyword argument of the factory (or a transformers config field); VALUE is JSON "
    "where it parses, dotted keys reach into dicts (vision_cfg.width=1024). Repeatable.",
)
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="A JSON object of keyword arguments (config fields for transformers); --arg wins.",
)
@click.option(
    "--auto-class",
    metavar="NAME",
    help="transformers class to build (AutoModel, AutoModelForCausalLM, "
    "BertForSequenceClassification...); default: the config's architectures[0].",
)
@click.option(
    "--select", metavar="PATH", help="The state dict inside CKPT (state_dict, model_ema...)."
)
@keymap_options("", "the checkpoint")
@key_map_file_options("the checkpoint")
@click.option(
    "--emit-config",
    "emit_config",
    metavar="OUT.json",
    type=click.Path(dir_okay=False),
    help="Write the target's config with every verified fix to OUT.json, for --config.",
)
@click.option(
    "--raw",
    is_flag=True,
    help="Compare as plain load_state_dict sees CKPT, without the target loader's own renames "
    "and conversions (transformers' conversion mapping: MoE experts, VLM prefixes, gamma/beta).",
)
@click.option(
    "--full",
    is_flag=True,
    help="List every key instead of collapsing layer-indexed runs into one row.",
)
@coverage_depth_option
@format_option
@debug_option
@no_cache_option
@stats_option
@handle_errors
def check(
    ckpt: str,
    model: str,
    args: tuple[str, ...],
    config: str | None,
    auto_class: str | None,
    select: str | None,
    strip_prefix: tuple[str, ...],
    add_prefix: tuple[str, ...],
    rename: tuple[str, ...],
    key_map_file: str | None,
    emit_key_map: str | None,
    emit_config: str | None,
    raw: bool,
    full: bool,
    depth: int,
    fmt: str,
) -> None:
    """Check checkpoint CKPT against the model you mean to load it into, built on meta.

    Builds the model on torch's meta device (no weight memory, no init time), reads CKPT's
    keys, shapes and dtypes without its data, and reports what load_state_dict would hit:
    missing, unexpected and mis-shaped tensors, dtype casts, what loading ignores or ties, and
    how much of each module the checkpoint supplies (a module at 0% would stay at random
    init). For a transformers config it applies what from_pretrained does: the model's own
    conversion mapping (renamed prefixes, per-expert MoE tensors merged, legacy names; --raw
    turns it off), tied weights, ignore patterns, the base-model prefix. A config without
    "architectures" is built as the class the checkpoint fits (--auto-class wins).

    \b
    Examples:
      ckptdiff check model.safetensors --model hf-config:path/config.json
      ckptdiff check ckpt.pt --model mypkg.models:build_clip --config ViT-B-16.json \\
          --arg vision_cfg.image_size=336
      ckptdiff check last.ckpt --model train.py:make_model --select state_dict --strip-prefix model.

    Exit codes: 0 compatible, 1 differences found, 2 bad input or a target that does not
    build, 3 a file names code outside the pickle allow-list.
    """
    from ckptdiff._check import check as check_checkpoint
    from ckptdiff.render.report import render_report

    report = check_checkpoint(
        model,
        ckpt,
        key_map=build_keymap(strip_prefix, add_prefix, rename, key_map_file),
        select=select,
        depth=depth,
        args=list(args),
        config=config,
        auto_class=auto_class,
        raw=raw,
    )
    if fmt == "json":
        emit(render_report(report, "json"))
    else:
        emit(render_report(report, fmt, full=full, coverage=True))
    _write_emitted(report, emit_key_map, emit_config)
    raise SystemExit(report.exit_code)


def _write_emitted(report: Any, key_map_path: str | None, config_path: str | None) -> None:
    """``--emit-key-map`` / ``--emit-config``: write what was verified, or say there is none."""
    from ckptdiff.diagnosis.emit import emitted_config, emitted_key_map

    key_map = emitted_key_map(report) if key_map_path else None
    if key_map_path and key_map is None:
        click.echo(f"ckptdiff: no verified key map to write to {key_map_path}.", err=True)
    elif key_map_path:
        write_json(key_map_path, key_map)
    config = emitted_config(report) if config_path else None
    if config_path and config is not None:
        write_json(config_path, config)
    elif config_path:
        weak = [
            f"{s.field} ({s.status})"
            for s in report.suggestions
            if s.kind == "config" and s.status not in ("verified", "undetermined")
        ]
        if weak:
            click.echo(
                f"ckptdiff: the config fixes are not all verified ({', '.join(weak)}); nothing "
                f"written to {config_path}.",
                err=True,
            )
        else:
            click.echo(f"ckptdiff: no verified config fix to write to {config_path}.", err=True)
