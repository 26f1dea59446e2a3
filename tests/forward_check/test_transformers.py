"""Real transformers models, in both modes; data mode's shrunk model."""

from __future__ import annotations

import pytest
import torch

from ckptdiff.forward_check import api
from ckptdiff.forward_check.api import forward
from tests.forward_check.conftest import write_config


@pytest.mark.parametrize("mode", ["shape-only", "data"])
def test_bert_runs_at_1_2_and_8(tiny_bert, mode):
    report = forward(
        tiny_bert, ["input_ids=2x16", "attention_mask=2x16", "token_type_ids=2x16"], mode=mode
    )
    assert report.ok, str(report)
    assert [(r.batch_size, r.mode, r.status) for r in report.runs] == [
        (1, mode, "ok"),
        (2, mode, "ok"),
        (8, mode, "ok"),
    ]


def test_minilm_default_inputs(minilm_dir):
    report = forward(f"hf-config:{minilm_dir}")
    assert report.ok and report.inputs == ("input_ids=Bx128:int64",)


def test_gpt2_labels_past_the_vocabulary(tiny_gpt2):
    ids = torch.randint(0, 1000, (2, 16))
    labels = ids.clone()
    labels[1, 3] = 1500
    report = forward(tiny_gpt2, {"input_ids": ids, "labels": labels})
    assert [r.batch_size for r in report.runs] == [None]  # tensors run at their own size
    (finding,) = report.ranges
    assert (
        finding.input,
        finding.kind,
        finding.limit,
        finding.max_value,
        finding.out_of_range,
    ) == ("labels", "loss", 1000, 1500, 1)
    assert {m.name: m.confirmed for m in finding.fields} == {"vocab_size": True}
    assert ("input_ids", "embedding", "transformer.wte", 1000) in report.ranges_checked


def test_gpt2_ids_past_the_embedding_fail_in_data_mode(tiny_gpt2):
    ids = torch.full((1, 4), 1200)
    report = forward(tiny_gpt2, {"input_ids": ids}, mode="data")
    (run,) = report.runs
    assert run.failure.module == "transformer.wte" and run.failure.module_type == "Embedding"
    assert run.failure.op == "torch.nn.functional.embedding"
    assert (
        report.ranges[0]
        .describe()
        .startswith(
            "input_ids values reach 1200 (min 1200; 4 out of range) past the 1000 rows of "
            "transformer.wte"
        )
    )


def test_data_mode_shrinks_a_large_model(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "FULL_SIZE_BUDGET", 1 << 20)
    target = write_config(
        tmp_path,
        "llama",
        {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "vocab_size": 4096,
            "max_position_embeddings": 64,
        },
    )
    report = forward(target, ["input_ids=2x32", "attention_mask=2x32"], mode="data")
    assert report.ok, str(report)
    shrunk = {k: (a, b) for k, a, b in report.shrunk}
    assert shrunk["hidden_size"] == (256, 32) and shrunk["num_hidden_layers"] == (4, 2)
    assert shrunk["vocab_size"] == (4096, 512)  # 16 would leave head_dim 2: 8 is used
    assert shrunk["head_dim"] == (32, 4)
    assert "max_position_embeddings" not in shrunk and "num_attention_heads" not in shrunk
    assert "hidden_size 256 -> 32" in str(report)


def test_a_meta_instance_cannot_run_in_data_mode():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    report = forward(model, {"input": (2, 4)}, mode="data", batch_sizes=[1])
    (run,) = report.runs
    assert run.status == "not run" and "on meta" in run.note
    assert report.exit_code == 2
    assert forward(model, {"input": (2, 4)}).ok  # shape-only needs no values


def test_clip_gets_text_and_image_by_default(tmp_path):
    target = write_config(
        tmp_path,
        "clip",
        {
            "model_type": "clip",
            "architectures": ["CLIPModel"],
            "projection_dim": 32,
            "text_config": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "vocab_size": 1000,
                "max_position_embeddings": 77,
            },
            "vision_config": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 64,
                "patch_size": 16,
            },
        },
    )
    report = forward(target)
    assert report.inputs == ("input_ids=Bx77:int64", "pixel_values=Bx3x64x64:float32")
    assert report.ok, str(report)


def test_positions_past_the_table_fail_in_shape_only_mode(tiny_gpt2):
    """Position ids are torch.arange(length): known without data, judged without weights."""
    report = forward(tiny_gpt2, ["input_ids=2x100"], batch_sizes=[2])
    (run,) = report.runs
    assert (run.mode, run.status) == ("shape-only", "failed")
    assert (run.failure.module, run.failure.op) == (
        "transformer.wpe",
        "torch.nn.functional.embedding",
    )
    assert run.failure.error.startswith(
        "IndexError: index out of range in self: the values reach 99 (from 0) against 64 rows"
    )
    assert {m.name: m.confirmed for m in run.failure.dims[0].fields}["n_positions"] is True
    assert forward(tiny_gpt2, ["input_ids=2x64"], batch_sizes=[2]).ok
