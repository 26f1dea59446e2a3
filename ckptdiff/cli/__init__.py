"""The ``ckptdiff`` command line: parse, call the library, render, exit code.

Exit codes: 0 compatible, 1 differences found, 2 usage or read error, 3 security finding.
"""

from __future__ import annotations

import click

from ckptdiff.cli.audit_cmd import audit
from ckptdiff.cli.check_cmd import check
from ckptdiff.cli.diff_cmd import diff
from ckptdiff.cli.forward_cmd import forward
from ckptdiff.cli.identify_cmd import identify
from ckptdiff.cli.inspect_cmd import inspect
from ckptdiff.cli.scan_cmd import scan


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


main.add_command(inspect)
main.add_command(diff)
main.add_command(check)
main.add_command(audit)
main.add_command(identify)
main.add_command(scan)
main.add_command(forward)

__all__ = ["main"]
