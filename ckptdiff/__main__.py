"""``python -m ckptdiff``: the same as the ``ckptdiff`` command."""

from ckptdiff.cli import main

if __name__ == "__main__":
    main()
