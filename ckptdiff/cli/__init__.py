"""The ``ckptdiff`` command line: parse, call the library, render, exit code.

Exit codes: 0 compatible, 1 differences found, 2 usage or read error, 3 security finding.
"""

from __future__ import annotations

import importlib

import click

#: name -> (module, its one-line help as ``--help`` lists it). A command's module is imported
#: only when that command runs (or its own ``--help`` is asked for): ``ckptdiff inspect`` never
#: loads what ``check`` needs. tests/test_startup.py holds each line to the command's own.
LAZY_COMMANDS = {
    "inspect": (
        "ckptdiff.cli.inspect_cmd",
        "List a checkpoint's tensors: keys, shapes, dtypes, parameter counts.",
    ),
    "diff": (
        "ckptdiff.cli.diff_cmd",
        "Compare checkpoint A with B, the checkpoint or layout you mean to load it into.",
    ),
    "check": (
        "ckptdiff.cli.check_cmd",
        "Check checkpoint CKPT against the model you mean to load it into, built on meta.",
    ),
    "audit": (
        "ckptdiff.cli.audit_cmd",
        "Audit hub repos (or local folders) before you download them.",
    ),
    "identify": (
        "ckptdiff.cli.identify_cmd",
        "Rank the configs in DIR by how well checkpoint CKPT fits each, best first.",
    ),
    "scan": (
        "ckptdiff.cli.scan_cmd",
        "Report what is unsafe in checkpoints, without loading them: findings only.",
    ),
    "forward": (
        "ckptdiff.cli.forward_cmd",
        "Run the forward pass of the model TARGET without its weights, and say where it breaks.",
    ),
}


class LazyGroup(click.Group):
    """A group whose :data:`LAZY_COMMANDS` are imported when used; others are added as usual."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module = importlib.import_module(LAZY_COMMANDS[cmd_name][0])
            self.add_command(getattr(module, cmd_name), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, with the lazy commands' lines from the table (nothing imported)."""
        names = [
            n
            for n in self.list_commands(ctx)
            if n not in self.commands or not self.commands[n].hidden
        ]
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = []
        for name in names:
            # an unloaded command's line, shortened as click shortens the command's own
            cmd = self.commands.get(name) or click.Command(name, help=LAZY_COMMANDS[name][1])
            rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="ckptdiff")
def main() -> None:
    """Check a checkpoint against a model before you spend a GPU-hour loading it.

    Reads keys, shapes and dtypes only (no tensor data, no pickle code), and reports missing,
    unexpected and mis-shaped tensors with the options that make them fit.

    \b
    Start here:
      ckptdiff inspect model.safetensors
      ckptdiff diff finetuned.pt base.safetensors
      ckptdiff check model.safetensors --model hf-config:config.json
      ckptdiff check ckpt.pt --model mypkg.models:build --arg width=1024
      ckptdiff audit hf://org/repo
      ckptdiff scan downloaded.ckpt
      ckptdiff forward --model hf-config:config.json --input input_ids=2x512

    Exit codes: 0 compatible, 1 differences found, 2 bad input, 3 security finding.
    """


__all__ = ["LAZY_COMMANDS", "main"]
