"""The three failures a state dict cannot show, each found with its module path, its op and
the settings behind its sizes; each fixed model is "forward ok" at batch sizes 1, 2 and 8."""

from __future__ import annotations

import torch

from ckptdiff.forward_check.api import forward
from tests.forward_check.conftest import COCA_CONFIG, COCA_SHALLOW

COCA = "fixtures.forward_models:CoCa"
OWL = "fixtures.forward_models:build_owl"
COCA_INPUTS = ["image=2x3x224x224", "text=2x77"]


def _fields(failure) -> dict[int, dict[str, object]]:
    return {d.dim: {m.name: m.confirmed for m in d.fields} for d in failure.dims}


# --- a text tower built for 77 tokens beside a decoder built for 76 (open_clip#864) ------------


def test_context_mismatch_names_the_module_the_op_and_both_context_lengths():
    report = forward(COCA, COCA_INPUTS, config=str(COCA_CONFIG), args=COCA_SHALLOW)
    assert not report.ok and report.exit_code == 1
    assert [(r.batch_size, r.mode, r.status) for r in report.runs] == [
        (1, "shape-only", "failed"),
        (2, "shape-only", "failed"),
        (8, "shape-only", "failed"),
    ]
    f = report.runs[1].failure
    assert f.module == "text_decoder.resblocks.0.attn" and f.module_type == "MultiheadAttention"
    assert f.op == "torch.nn.functional.multi_head_attention_forward"
    assert ("attn_mask", (76, 76), "float32") in f.operands
    assert ("query", (77, 2, 768), "float32") in f.operands
    fields = _fields(f)
    # 76: the decoder's context, confirmed by rebuilding with 152
    assert fields[76]["multimodal_cfg.context_length"] is True
    assert "text_decoder.context_length" in fields[76]
    # 77: the text is 77 tokens long, text_cfg.context_length's default (not a size of the model)
    assert fields[77]["text[1]"] is None
    assert fields[77]["text_cfg.context_length"] is False
    text = str(report)
    assert "multimodal_cfg.context_length=76 (confirmed: rebuilt with 152, it follows)" in text
    assert "text_cfg.context_length=77" in text


def test_torch_raises_the_same_error_on_the_real_model():
    """The oracle: the same CoCa on CPU with real tensors fails in the same module."""
    from fixtures.forward_models import CoCa

    model = CoCa(
        **{
            **__import__("json").loads(COCA_CONFIG.read_text()),
            "vision_cfg": {"layers": 1, "width": 768, "patch_size": 32},
            "multimodal_cfg": {"context_length": 76, "width": 768, "heads": 8, "layers": 1},
            "text_cfg": {"hf_model_name": "roberta-base", "hf_layers": 1},
        }
    ).eval()
    report = forward(
        model, {"image": torch.randn(1, 3, 224, 224), "text": torch.randint(3, 1000, (1, 77))}
    )
    assert report.runs[0].failure.module == "text_decoder.resblocks.0.attn"
    try:
        model(torch.randn(1, 3, 224, 224), torch.randint(3, 1000, (1, 77)))
    except RuntimeError as e:
        assert report.runs[0].failure.error == f"RuntimeError: {e}"
    else:
        raise AssertionError("the real model ran")


def test_equal_contexts_run_at_1_2_and_8():
    report = forward(
        COCA,
        COCA_INPUTS,
        config=str(COCA_CONFIG),
        args={**COCA_SHALLOW, "multimodal_cfg.context_length": 77},
    )
    assert report.ok and report.exit_code == 0
    assert [(r.batch_size, r.status) for r in report.runs] == [(1, "ok"), (2, "ok"), (8, "ok")]
    assert str(report).splitlines()[-1] == (
        "Summary: forward ok at batch sizes 1, 2, 8 (shape-only mode)."
    )


# --- labels from RoBERTa's 50265 tokens against a decoder head of 49408 ------------------------


def test_labels_past_the_decoder_vocabulary_from_a_saved_batch(coca_batch):
    report = forward(
        COCA,
        batch=coca_batch,
        config=str(COCA_CONFIG),
        args={**COCA_SHALLOW, "multimodal_cfg.context_length": 77},
    )
    assert report.exit_code == 1
    (run,) = report.runs  # shapes fit; the batch's values do not, and shape-only mode knows them
    assert (run.mode, run.status) == ("shape-only", "failed")
    assert run.failure.op == "torch.nn.functional.cross_entropy"
    assert run.failure.error.startswith(
        "IndexError: target out of bounds: the values reach 50264 (from 0) against 49408 classes"
    )
    assert {m.name: m.confirmed for m in run.failure.dims[0].fields}["text_cfg.vocab_size"]
    (finding,) = report.ranges
    assert (finding.input, finding.kind, finding.limit, finding.max_value) == (
        "labels",
        "loss",
        49408,
        50264,
    )
    assert finding.producer == "text_decoder"
    fields = {m.name: m.confirmed for m in finding.fields}
    assert fields["text_cfg.vocab_size"] is True  # the decoder's vocabulary comes from here
    assert fields["multimodal_cfg.vocab_size"] is False
    assert "text.config.vocab_size" in fields  # the 50265 the ids come from
    # the ids themselves fit the RoBERTa embedding
    assert (
        "text",
        "embedding",
        "text.transformer.embeddings.word_embeddings",
        50265,
    ) in report.ranges_checked


def test_labels_past_the_vocabulary_fail_in_data_mode_too(coca_batch):
    """Data mode runs the values: torch's own cross_entropy is the oracle."""
    report = forward(
        COCA,
        batch=coca_batch,
        config=str(COCA_CONFIG),
        mode="data",
        args={**COCA_SHALLOW, "multimodal_cfg.context_length": 77},
    )
    (run,) = report.runs
    assert (run.mode, run.status) == ("data", "failed")
    assert run.failure.op == "torch.nn.functional.cross_entropy"
    assert run.failure.error == "IndexError: Target 50264 is out of bounds."


# --- media offsets built per sample and concatenated (ms-swift#1969) ---------------------------


def test_offsets_that_break_above_batch_size_1_fall_back_to_data_mode():
    report = forward(OWL, ["input_ids=2x128", "attention_mask=2x128"])
    assert [(r.batch_size, r.mode, r.status) for r in report.runs] == [
        (1, "data", "ok"),
        (2, "data", "failed"),
        (8, "data", "failed"),
    ]
    assert "shape-only mode stopped at torch.Tensor.__int__ in media_offsets" in report.runs[0].note
    f = report.runs[1].failure
    assert (f.module, f.module_type, f.op) == ("media_offsets", "MediaOffsets", "torch.cat")
    assert [s for _n, s, _d in f.operands] == [(1, 128, 2), (1, 127, 2)]
    assert {d.dim for d in f.dims} == {128, 127}
    assert "Expected size 128 but got size 127" in f.error


def test_padded_offsets_run_at_1_2_and_8():
    report = forward(
        OWL, ["input_ids=2x128", "attention_mask=2x128"], args={"pad_media_offset": True}
    )
    assert report.ok
    assert [(r.batch_size, r.mode, r.status) for r in report.runs] == [
        (1, "data", "ok"),
        (2, "data", "ok"),
        (8, "data", "ok"),
    ]


def test_shape_only_mode_says_it_cannot_decide():
    report = forward(
        OWL, ["input_ids=2x16", "attention_mask=2x16"], mode="shape-only", batch_sizes=[2]
    )
    (run,) = report.runs
    assert run.status == "not run" and "--mode data" in run.note
    assert report.exit_code == 2


def test_code_fake_tensors_cannot_run_falls_back_to_data_mode():
    report = forward("fixtures.forward_models:NumpyPositions", ["input_ids=2x8"], batch_sizes=[2])
    (run,) = report.runs
    assert (run.mode, run.status) == ("data", "ok"), str(report)
    assert run.note.startswith("shape-only mode stopped at torch.Tensor.numpy in ")
