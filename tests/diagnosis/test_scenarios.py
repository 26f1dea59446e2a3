"""The issue's scenarios 4 and 5 end to end: branch prefixes, wrappers, Lightning, GPT-2 Conv1D."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ckptdiff.diagnosis.alignment import key_map_to_emit
from ckptdiff.diagnosis.diagnose import diff_manifests
from ckptdiff.keymap import KeyMap
from ckptdiff.readers import read
from ckptdiff.targets import build_target
from fixtures.tiny import SMALL_CLIP

from .conftest import manifest


def test_text_branch_under_another_prefix_goes_from_0_to_100_percent():
    """Scenario 4 (CLAP): checkpoint embeddings.* / encoder.* vs model text_branch.*."""
    text = {
        "embeddings.word_embeddings.weight": (50, 8),
        "embeddings.LayerNorm.weight": (8,),
        **{f"encoder.layer.{i}.attention.self.query.weight": (8, 8) for i in range(2)},
    }
    audio = {"audio_branch.conv.weight": (8, 1, 3)}
    ck = manifest("ck", {**text, **audio})
    target = manifest("model", {**{"text_branch." + k: v for k, v in text.items()}, **audio})
    r = diff_manifests(ck, target)
    (s,) = [s for s in r.suggestions if s.kind == "key_map"]
    # not a bare add_prefix: that would move audio_branch.* too, which loads as it is
    assert s.verified and s.suggested == [
        {
            "op": "rename",
            "pattern": r"^(?=(?:embeddings|encoder)(?:\.|$))",
            "replacement": "text_branch.",
        }
    ]
    assert s.data["coverage_by_module"] == [{"module": "text_branch", "before": 0.0, "after": 1.0}]
    assert s.data["coverage_before"] < s.data["coverage_after"] == 1.0
    assert diff_manifests(ck, target, key_map=KeyMap.from_rules(s.suggested)).ok


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."]
)
def test_wrapper_prefixes(prefix):
    keys = {"enc.0.w": (4, 4), "enc.1.w": (4, 4), "head.b": (2,)}
    r = diff_manifests(
        manifest("ck", {prefix + k: v for k, v in keys.items()}), manifest("model", keys)
    )
    assert key_map_to_emit(r) == [{"op": "strip_prefix", "prefix": prefix}]
    assert not [f for f in r.findings if f.kind == "cause"]


def test_lightning_state_dict_nesting(tmp_path):
    from fixtures.models import build_clip

    model = build_clip(**SMALL_CLIP)
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.1.0",
            "hyper_parameters": {"lr": 1e-3},
        },
        path,
    )
    ck = read(str(path))
    assert ck.selected == "state_dict"
    r = diff_manifests(ck, build_target("fixtures.models:build_clip", config=SMALL_CLIP))
    (s,) = [s for s in r.suggestions if s.kind == "key_map"]
    assert s.verified and s.field == "--strip-prefix model."


# --- GPT-2 Conv1D weights against a Linear-based model --------------------------------------------


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(d, 3 * d)
        self.attn.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(d, 4 * d)
        self.mlp.c_proj = nn.Linear(4 * d, d)


def build_linear_gpt(
    d: int = 32, layers: int = 2, vocab: int = 100, positions: int = 16
) -> nn.Module:
    """GPT-2's key names with nn.Linear ([out, in]) where GPT-2 has Conv1D ([in, out])."""
    model = nn.Module()
    model.transformer = nn.Module()
    model.transformer.wte = nn.Embedding(vocab, d)
    model.transformer.wpe = nn.Embedding(positions, d)
    model.transformer.h = nn.ModuleList(_Block(d) for _ in range(layers))
    model.transformer.ln_f = nn.LayerNorm(d)
    return model


def _gpt2_state_dict() -> dict[str, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16)
    torch.manual_seed(0)
    sd = transformers.GPT2LMHeadModel(cfg).state_dict()
    return {k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"}


def test_gpt2_conv1d_into_linear_model(tmp_path):
    """Scenario 5: Conv1D [in, out] vs Linear [out, in]: named, with .t(), and it really loads."""
    sd = _gpt2_state_dict()
    save_file(sd, tmp_path / "gpt2.safetensors")
    target = build_target("tests.diagnosis.test_scenarios:build_linear_gpt")
    r = diff_manifests(read(str(tmp_path / "gpt2.safetensors")), target)
    (t,) = [f for f in r.findings if f.kind == "transposed"]
    assert t.data["transform"] == ".t()"
    assert t.data["square"] == [
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.1.attn.c_proj.weight",
    ]
    (s,) = [s for s in r.suggestions if s.data.get("combined")]
    assert s.verified and s.data["coverage_after"] == 1.0
    # the Python snippet, run on the real tensors, gives a state dict the Linear model takes
    ns: dict = {}
    exec(s.data["python"].split("\n\nmodel.load_state_dict")[0], ns)
    model = build_linear_gpt()
    model.load_state_dict(ns["remap"](sd), strict=False)
    x = torch.randn(3, 32)
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc"):
        w, b = sd[f"transformer.h.0.{name}.weight"], sd[f"transformer.h.0.{name}.bias"]
        layer = model.transformer.h[0].get_submodule(name)
        torch.testing.assert_close(layer(x), x @ w + b)  # Conv1D computes x @ W + b
