"""Building on meta: whatever the factory does, no weight memory, no init, nothing left patched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ckptdiff.targets import build_target
from ckptdiff.targets.meta import INIT_FUNCTIONS, on_meta
from fixtures.models import build_clip, build_llama, build_with_init_on_cpu
from fixtures.tiny import TINY_CLIP

ROOT = Path(__file__).resolve().parents[2]


def all_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]


def test_plain_meta_device_is_not_enough_for_open_clip_style_factories():
    # build_clip ends with .to("cpu") as open_clip's create_model does
    with pytest.raises(NotImplementedError), torch.device("meta"):
        build_clip(**TINY_CLIP)


def test_open_clip_style_factory_builds_on_meta():
    with on_meta():
        model = build_clip(**TINY_CLIP)
    assert {t.device.type for _, t in all_tensors(model)} == {"meta"}


@pytest.mark.parametrize("device", ["cpu", "cuda", torch.device("cuda:1"), "mps"])
def test_moves_to_any_device_keep_meta(device):
    with on_meta():
        model = build_with_init_on_cpu(device=device)
    assert {t.device.type for _, t in all_tensors(model)} == {"meta"}
    assert model.head.weight.dtype == torch.float16  # .half() is kept: it is what loading casts to


def test_module_cuda_cpu_and_dtype_casts_on_meta():
    with on_meta():
        model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        model.cuda()
        model = model.to("cuda:0", torch.bfloat16).cpu().float().half()
        model.to(torch.device("cpu"), dtype=torch.float64, non_blocking=True)
        extra = torch.empty(3).cpu().cuda().to("cpu").pin_memory()
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert extra.device.type == "meta"


def test_tensors_created_on_cpu_explicitly_become_meta():
    with on_meta():
        a = torch.zeros(1000, 1000, device="cpu")
        b = torch.empty(10, device=torch.device("cpu")).cpu()
        c = torch.randn(5, 5, device="cuda")
        d = torch.full((3,), 2.0, device="cpu")
        e = torch.zeros_like(torch.ones(2, device="cpu"), device="cpu")
    assert {t.device.type for t in (a, b, c, d, e)} == {"meta"}


def test_value_tensors_stay_readable_while_building():
    # timm's drop-path schedule reads values: [x.item() for x in torch.linspace(0, p, depth)]
    with on_meta():
        model = build_with_init_on_cpu(depth=4)
    assert model.drop_rates == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])


def test_mixing_cpu_values_into_meta_tensors():
    # sinusoidal position tables: a meta buffer filled from CPU arithmetic
    class Sinusoid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            pe = torch.zeros(10, 4)
            position = torch.arange(0, 10).unsqueeze(1)
            div = torch.exp(torch.arange(0, 4, 2) * -0.5)
            pe[:, 0::2] = torch.sin(position * div)
            self.register_buffer("pe", pe + torch.arange(4))

    with on_meta():
        model = Sinusoid()
    assert model.pe.device.type == "meta"
    assert model.pe.shape == (10, 4)


def test_buffers_and_parameters_registered_from_real_tensors_move_to_meta():
    shared = nn.Parameter(torch.ones(3))  # made outside the build: real

    class UsesReal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = shared
            self.b = shared
            self.register_buffer("steps", torch.arange(5), persistent=False)

    with on_meta():
        model = UsesReal()
    assert model.a.device.type == "meta" and model.steps.device.type == "meta"
    assert model.a is model.b  # one meta tensor per real one: ties survive
    assert shared.device.type == "cpu"  # the caller's tensor is untouched


def test_ties_survive_meta_build():
    with on_meta():
        model = build_llama(
            vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32
        )
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_init_functions_do_not_run_and_are_restored(monkeypatch):
    calls = []

    def spy(tensor, *args, **kwargs):
        calls.append(tuple(tensor.shape))
        return tensor

    monkeypatch.setattr(nn.init, "normal_", spy)
    with on_meta():
        build_llama(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
        assert nn.init.normal_ is not spy
    assert calls == []
    assert nn.init.normal_ is spy  # restored on exit
    build_llama(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    assert calls  # the same factory on CPU does call it: the spy works


def test_everything_is_restored_when_the_factory_raises():
    before = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}
    register = nn.Module.register_parameter
    with pytest.raises(RuntimeError, match="boom"), on_meta():
        raise RuntimeError("boom")
    assert {name: getattr(nn.init, name) for name in INIT_FUNCTIONS} == before
    assert nn.Module.register_parameter is register
    assert torch.zeros(1).device.type == "cpu"
    assert torch.get_default_device().type == "cpu"


def test_default_device_reads_meta_inside():
    # transformers and others ask torch which device they are built on
    with on_meta():
        assert torch.get_default_device().type == "meta"


PEAK_SCRIPT = """
import json, resource, sys
import torch
from ckptdiff.targets import build_target
import fixtures.models  # noqa: F401  (import cost outside the measurement)
size = json.loads(sys.argv[1])
build_target("fixtures.models:build_llama", args={"vocab_size": 64, "hidden_size": 64,
             "num_layers": 1, "num_heads": 4, "intermediate_size": 128})  # warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = build_target("fixtures.models:build_llama", args=size)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"params": m.parameter_count, "peak_growth_kb": after - before}))
"""


def _peak_growth(size: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, json.dumps(size)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_peak_memory_does_not_grow_with_parameter_count():
    small = _peak_growth(
        {
            "vocab_size": 1000,
            "hidden_size": 128,
            "num_layers": 2,
            "num_heads": 4,
            "intermediate_size": 256,
        }
    )
    # Llama-3-8B sized: 8.0e9 parameters, 32 GB in float32 if they were allocated
    huge = _peak_growth(
        {
            "vocab_size": 128256,
            "hidden_size": 4096,
            "num_layers": 32,
            "num_heads": 32,
            "num_kv_heads": 8,
            "intermediate_size": 14336,
            "tie_word_embeddings": False,
        }
    )
    assert huge["params"] > 8_000_000_000 > 1000 * small["params"]
    assert huge["peak_growth_kb"] - small["peak_growth_kb"] < 64 * 1024  # < 64 MB for 32 GB


def test_vit_l14_preset_builds_on_meta_with_real_shapes():
    from fixtures.models import VIT_L_14_336

    m = build_target("fixtures.models:build_clip", args=VIT_L_14_336)
    assert m.tensors["visual.positional_embedding"].shape == (577, 1024)
    assert m.tensors["visual.conv1.weight"].shape == (1024, 3, 14, 14)
    assert m.tensors["visual.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
    assert m.tensors["text_projection"].shape == (768, 768)
