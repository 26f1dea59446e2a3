"""``ckptdiff audit SOURCE...``, and ``--stats`` (hub requests and bytes, on stderr)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ckptdiff.cli.common import (
    DEBUG_KEY,
    debug_option,
    emit,
    handle_errors,
    no_cache_option,
    stats_option,
)
from ckptdiff.errors import UsageError
from ckptdiff.terminal import printable


def _sources(sources: tuple[str, ...], from_file: str | None) -> list[str]:
    out = list(sources)
    if from_file:
        try:
            with click.open_file(from_file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise UsageError(f"Cannot read --from {from_file!r}: {e.strerror or e}.") from e
        out += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return list(dict.fromkeys(out))


@click.command("audit")
@click.argument("sources", nargs=-1, metavar="SOURCE...")
@click.option(
    "--from",
    "from_file",
    metavar="FILE",
    help="Read more sources from FILE, one per line ('-' for stdin; # comments).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "jsonl", "markdown"]),
    default="table",
    show_default=True,
    help="table for people, jsonl (one object per repo, as each completes) or json "
    "for machines, markdown for issues.",
)
@click.option(
    "--auto-class",
    metavar="NAME",
    help="transformers class to build (AutoModel, AutoModelForCausalLM...); default: "
    "the config's architectures[0].",
)
@click.option(
    "--allow-download",
    is_flag=True,
    help="When a file cannot be read by range requests (a legacy torch pickle, a "
    "server that ignores Range), download it whole instead of failing.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Repos audited at the same time.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on stderr (default: when stderr is a terminal).",
)
@click.option("--full", is_flag=True, help="List every key instead of collapsing layer runs.")
@click.option(
    "--depth",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Module depth of the coverage rows (JSON).",
)
@no_cache_option
@stats_option
@debug_option
@handle_errors
def audit(
    sources: tuple[str, ...],
    from_file: str | None,
    fmt: str,
    auto_class: str | None,
    allow_download: bool,
    jobs: int,
    progress: bool | None,
    full: bool,
    depth: int,
) -> None:
    """Audit hub repos (or local folders) before you download them.

    Reads each repo's weights headers only (safetensors headers by HTTP range requests, a
    torch .bin's zip directory and data.pkl, the index and every shard's header), builds the
    repo's own config.json on torch's meta device and checks the weights against it, and
    checks the repo against itself: index vs shards, the config's torch_dtype vs the stored
    dtypes, the tokenizer's size vs vocab_size and the embedding, .safetensors vs .bin copies.

    SOURCE is hf://org/repo[@revision][/subfolder], https://huggingface.co/org/repo[/tree/REV],
    or a local folder in the Hugging Face layout. Your HF_TOKEN (or `hf auth login`),
    HF_ENDPOINT, cache and HF_HUB_OFFLINE apply.

    \b
    Examples:
      ckptdiff audit hf://sentence-transformers/all-MiniLM-L6-v2
      ckptdiff audit hf://org/model@v2.0 hf://org/other --format jsonl
      ckptdiff audit --from repos.txt --jobs 8 --stats

    Exit codes: 0 consistent, 1 findings or weights that do not fit the config, 2 a repo
    could not be audited (not found, gated, offline...), 3 a file names code outside the
    pickle allow-list. With several repos, the highest.
    """
    from ckptdiff._audit import audit as audit_repo
    from ckptdiff._audit import audit_many
    from ckptdiff.render.audit import render_audit, render_audit_jsonl

    todo = _sources(sources, from_file)
    if not todo:
        raise UsageError(
            "Cannot audit: no repos given. Name repos or folders, or pass --from FILE."
        )
    options: dict[str, Any] = {
        "auto_class": auto_class,
        "allow_download": allow_download or None,
        "depth": depth,
    }
    if len(todo) == 1 and fmt != "jsonl":
        # one repo: an error is one line on stderr and exit 2, as for every command
        result = audit_repo(todo[0], **options)
        emit(render_audit([result], fmt, full=full))
        raise SystemExit(result.exit_code)
    ctx = click.get_current_context()
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar: Any = None
    if show_bar:
        bar = click.progressbar(length=len(todo), label="auditing", file=sys.stderr, show_pos=True)
        bar.__enter__()

    def done(result: Any) -> None:
        if fmt == "jsonl":
            emit(render_audit_jsonl(result))
        if bar is not None:
            bar.update(1)

    try:
        results = audit_many(
            todo,
            jobs=jobs,
            on_result=done,
            raise_errors=bool(ctx.meta.get(DEBUG_KEY)),
            **options,
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if fmt != "jsonl":
        emit(render_audit(results, fmt, full=full))
    for r in results:
        if r.error is not None and fmt in ("table", "markdown"):
            click.echo(f"ckptdiff: {printable(r.error)}", err=True)
    raise SystemExit(max(r.exit_code for r in results))


__all__ = ["audit"]
