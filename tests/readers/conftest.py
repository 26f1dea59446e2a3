"""Layout fixtures written once per session (peft and DCP writers take a moment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import layouts as L


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real peft LoRA (r=4, q_proj/v_proj, lm_head in modules_to_save) of a tiny Llama."""
    return L.write_peft(
        tmp_path_factory.mktemp("lora") / "adapter", L.tiny_llama(), modules_to_save=["lm_head"]
    )


@pytest.fixture(scope="session")
def old_layout_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA trained when the base had no ``language_model.`` level."""
    return L.write_peft(
        tmp_path_factory.mktemp("lora_old") / "adapter",
        L.TinyLM(),
        target_modules=["q_proj", "v_proj"],
    )


@pytest.fixture(scope="session")
def dcp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dcp.save({"model": ..., "optim": ...})`` of :func:`mlp` after one AdamW step."""
    return L.write_dcp(tmp_path_factory.mktemp("dcp") / "step-1", mlp())


def mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
