"""What every command shares: options, error handling, output. Parsing and printing only."""

from __future__ import annotations

import functools
import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from ckptdiff.errors import CkptDiffError, UsageError
from ckptdiff.terminal import printable

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_KEY = "ckptdiff.debug"


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[DEBUG_KEY] = True
    return value


def debug_option(f: F) -> F:
    """``--debug``: show the traceback of an error instead of one line."""
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="On an error, show the full traceback instead of one line.",
    )(f)


def coverage_depth_option(f: F) -> F:
    """``--depth N``: how many key components deep the coverage table goes (default 2)."""
    return click.option(
        "--depth",
        type=click.IntRange(min=0),
        default=2,
        show_default=True,
        help="Module depth of the coverage table.",
    )(f)


def format_option(f: F) -> F:
    """``--format table|json|markdown``."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json", "markdown"]),
        default="table",
        show_default=True,
        help="Output: a text table for people, JSON for machines, markdown for PRs and issues.",
    )(f)


def target_options(model_help: str = "The model") -> Callable[[F], F]:
    """``--model TARGET``, ``--arg KEY=VALUE``, ``--config FILE`` and ``--auto-class NAME``;
    ``model_help`` starts the help of ``--model``."""

    def deco(f: F) -> F:
        return _target_options(f, model_help)

    return deco


def _target_options(f: F, model_help: str) -> F:
    f = click.option(
        "--auto-class",
        metavar="NAME",
        help="transformers class to build (AutoModel, AutoModelForCausalLM, "
        "BertForSequenceClassification...); default: the config's architectures[0].",
    )(f)
    f = click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="A JSON object of keyword arguments (config fields for transformers); --arg wins.",
    )(f)
    f = click.option(
        "--arg",
        "args",
        multiple=True,
        metavar="KEY=VALUE",
        help="A keyword argument of the factory (or a transformers config field); VALUE is JSON "
        "where it parses, dotted keys reach into dicts (vision_cfg.width=1024). Repeatable.",
    )(f)
    return click.option(
        "--model",
        "-m",
        "model",
        required=True,
        metavar="TARGET",
        help=f"{model_help}: pkg.module:callable, path/to/file.py:callable, "
        "hf-config:path/config.json, or a folder with a config.json.",
    )(f)


def keymap_options(side: str = "", what: str = "A") -> Callable[[F], F]:
    """``--strip-prefix``, ``--add-prefix`` and ``--rename`` for one side (``""`` or ``b-``)."""
    dest = side.replace("-", "_")

    def deco(f: F) -> F:
        f = click.option(
            f"--{side}rename",
            f"{dest}rename",
            multiple=True,
            metavar="'REGEX=>REPL'",
            help=f"Rename {what}'s keys with re.sub, e.g. '\\.gamma$=>.weight'. Repeatable.",
        )(f)
        f = click.option(
            f"--{side}add-prefix",
            f"{dest}add_prefix",
            multiple=True,
            metavar="PREFIX",
            help=f"Put PREFIX in front of every key of {what}. Repeatable.",
        )(f)
        f = click.option(
            f"--{side}strip-prefix",
            f"{dest}strip_prefix",
            multiple=True,
            metavar="PREFIX",
            help=f"Remove PREFIX (e.g. module.) from {what}'s keys that start with it. Repeatable.",
        )(f)
        return f

    return deco


def key_map_file_options(what: str) -> Callable[[F], F]:
    """``--key-map FILE`` (rules applied to ``what``'s keys) and ``--emit-key-map OUT.json``."""

    def deco(f: F) -> F:
        f = click.option(
            "--emit-key-map",
            "emit_key_map",
            metavar="OUT.json",
            type=click.Path(dir_okay=False),
            help="Write the verified key map found (prefixes, renames, fused/split q/k/v, "
            "transposes) to OUT.json, for --key-map.",
        )(f)
        f = click.option(
            "--key-map",
            "key_map_file",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help=f"JSON key-map rules applied to {what}'s keys before the other options.",
        )(f)
        return f

    return deco


def build_keymap(
    strip_prefix: tuple[str, ...],
    add_prefix: tuple[str, ...],
    rename: tuple[str, ...],
    key_map_file: str | None = None,
) -> Any:
    """A :class:`~ckptdiff.keymap.KeyMap` from the options (file rules first), or None."""
    from ckptdiff.keymap import KeyMap

    km = KeyMap.from_file(key_map_file) if key_map_file else KeyMap()
    km = km + KeyMap.from_options(strip_prefix, add_prefix, rename)
    return km or None


STATS_KEY = "ckptdiff.stats"


def _set_stats(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[STATS_KEY] = True
    return value


def stats_line(requests: int, nbytes: int, seconds: float) -> str:
    """``hub transfer: 4 requests, 67.1 kB in 0.31 s``."""
    from ckptdiff.wording import human_bytes

    return (
        f"hub transfer: {requests} request{'' if requests == 1 else 's'}, "
        f"{human_bytes(nbytes)} in {seconds:.2f} s"
    )


def stats_option(f: F) -> F:
    """``--stats``: print the hub requests and bytes the command took to stderr, at its end.

    Put it above ``@handle_errors`` on any command that reads sources; it counts every hub
    request the process makes while the command runs (local sources cost none).
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not click.get_current_context().meta.get(STATS_KEY):  # set first: --stats is eager
            return f(*args, **kwargs)
        from ckptdiff.readers.hub.transport import TOTAL

        requests, nbytes = TOTAL.snapshot()
        start = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            r, b = TOTAL.snapshot()
            click.echo(stats_line(r - requests, b - nbytes, time.perf_counter() - start), err=True)

    return click.option(  # type: ignore[return-value]
        "--stats",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_stats,
        help="Print the hub requests and bytes it took to stderr.",
    )(wrapper)


def _no_cache(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        from ckptdiff.targets.cache import disabled

        ctx.with_resource(disabled())
    return value


def no_cache_option(f: F) -> F:
    """``--no-cache``: build the target for real, neither reading nor writing the target cache."""
    return click.option(
        "--no-cache",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_no_cache,
        help="Build the target even when the target cache holds it, and do not store it "
        "(the cache: $CKPTDIFF_CACHE_DIR, else ~/.cache/ckptdiff/targets; safe to delete).",
    )(f)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line to stderr and exit (control characters from files escaped)."""
    click.echo(f"ckptdiff: {printable(message)}", err=True)
    sys.exit(code)


def handle_errors(f: F) -> F:
    """Turn library errors into one line on stderr and exit code 2 (3 for unsafe files).

    With ``--debug`` the traceback is shown too. Anything unforeseen is also one line, with a
    pointer to ``--debug``, never a bare traceback.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool(ctx.meta.get(DEBUG_KEY))
        try:
            return f(*args, **kwargs)
        except CkptDiffError as e:
            if debug:
                traceback.print_exc()
            fail(str(e), e.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            fail("interrupted.", 130)
        except Exception as e:  # noqa: BLE001 - the CLI promises one line, never a traceback
            if debug:
                traceback.print_exc()
            fail(
                f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback, "
                "and please report it)."
            )

    return wrapper  # type: ignore[return-value]


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as indented JSON and a newline (``--emit-config``, ``--emit-key-map``)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")


def emit(text: str) -> None:
    """Write a rendered report to stdout.

    Every control character is escaped on the way out (key names, paths and messages come from
    files that may carry terminal escape sequences); JSON has none to escape, so it stays exact.
    """
    click.echo(printable(text, keep_newlines=True), nl=not text.endswith("\n"))


__all__ = [
    "UsageError",
    "build_keymap",
    "coverage_depth_option",
    "debug_option",
    "emit",
    "write_json",
    "fail",
    "format_option",
    "handle_errors",
    "key_map_file_options",
    "keymap_options",
    "no_cache_option",
    "stats_option",
    "target_options",
]
