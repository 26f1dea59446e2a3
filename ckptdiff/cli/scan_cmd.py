"""``ckptdiff scan SOURCE...``: security findings only, for files, folders and hub repos."""

from __future__ import annotations

import click

from ckptdiff.cli.common import debug_option, emit, handle_errors, stats_option


@click.command("scan")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output: table (a line per file, its first findings under it) or json "
    "(schema ckptdiff.scan/1, every finding). No markdown.",
)
@debug_option
@stats_option
@handle_errors
def scan(sources: tuple[str, ...], fmt: str) -> None:
    """Report what is unsafe in checkpoints, without loading them: findings only.

    Each SOURCE is a file, a folder (every weights file below it, found by content or
    extension) or a hub repo. In a folder, each file is judged against the folder it sits in,
    as if that folder were scanned alone: a link out of it is flagged, not followed (links
    into a Hugging Face cache's own blobs are fine). Nothing is imported or run: a pickle is
    read with an allow-list of globals and every other global is reported.

    \b
    Examples:
      ckptdiff scan downloaded.ckpt
      ckptdiff scan ~/models/ --format json

    Exit codes: 0 every file is clean, 2 some file could not be read or no weights file was
    found (and none is flagged), 3 some file names code outside the allow-list, escapes its
    folder or is a zip bomb.
    """
    from ckptdiff._scan import scan_source
    from ckptdiff.render.scan import render_json, render_table

    results = [r for source in sources for r in scan_source(source)]
    emit(render_json(results) if fmt == "json" else render_table(results))
    if any(r.status == "flagged" for r in results):
        raise SystemExit(3)
    raise SystemExit(2 if any(r.status == "unreadable" for r in results) or not results else 0)
