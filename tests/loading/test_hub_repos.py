"""Hub repos in the layouts transformers converts at load time: compatible, over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptdiff import check
from ckptdiff._audit import audit
from ckptdiff.render.audit import render_audit
from tests.readers.hub import repos
from tests.readers.hub.server import HubServer

pytest.importorskip("transformers")


@pytest.fixture
def moe(hub: HubServer, tmp_path: Path) -> str:
    folder = repos.moe_per_expert(tmp_path / "moe")
    assert (folder / "model.safetensors.index.json").is_file()
    hub.add_folder("tiny/mixtral-per-expert", folder)
    return "tiny/mixtral-per-expert"


@pytest.fixture
def llava(hub: HubServer, tmp_path: Path) -> str:
    hub.add_folder("tiny/llava-original", repos.llava_original(tmp_path / "llava"))
    return "tiny/llava-original"


def test_per_expert_moe_repo_audits_consistent(moe: str) -> None:
    result = audit(f"hf://{moe}")
    assert result.ok, render_audit([result])
    (conv,) = [f for f in result.all_findings if f.kind == "loader_conversion"]
    assert conv.data["converted_tensors"] == 24 and conv.data["model_class"] == "MixtralForCausalLM"


def test_per_expert_moe_repo_checks_compatible(moe: str) -> None:
    report = check(f"hf://{moe}", f"hf://{moe}")
    assert report.ok and report.exit_code == 0


def test_original_layout_llava_repo(llava: str) -> None:
    result = audit(f"hf://{llava}")
    assert result.ok, render_audit([result])
    report = check(f"hf://{llava}", f"hf://{llava}")
    assert report.ok
    assert "lm_head.weight" in report.matched
    raw = check(f"hf://{llava}", f"hf://{llava}", raw=True)  # plain load_state_dict
    assert not raw.ok and "lm_head.weight" in {t.key for t in raw.missing}
