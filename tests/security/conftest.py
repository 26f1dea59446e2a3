"""The hostile corpus, written once per session into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.hostile import CANARY, Case, write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Case, Path]]:
    """Every case by name, written with a 64 MiB zip bomb (the report uses 1 GiB)."""
    root = tmp_path_factory.mktemp("hostile")
    return {case.name: (case, path) for case, path in write_corpus(root, bomb_size=64 << 20)}


@pytest.fixture(scope="session")
def canary(corpus: dict[str, tuple[Case, Path]]) -> Path:
    """The file any payload of the corpus would create."""
    _, path = next(iter(corpus.values()))
    return path.parent / CANARY


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real peft LoRA (r=4, q_proj/v_proj) of a tiny Llama."""
    from fixtures import layouts as L

    return L.write_peft(tmp_path_factory.mktemp("lora") / "adapter", L.tiny_llama())
