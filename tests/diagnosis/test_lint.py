"""Consistency lint: a model that disagrees with itself, even when every key loads."""

from __future__ import annotations

import json

from ckptdiff.diagnosis.diagnose import diff_manifests
from ckptdiff.diagnosis.lint import lint, lint_config, read_tokenizer_size
from ckptdiff.render.report import render_report_table

from .conftest import manifest

COCA_CONFIG = {
    "embed_dim": 512,
    "text_cfg": {
        "hf_model_name": "roberta-base",
        "width": 768,
        "context_length": 77,
        "vocab_size": 49408,
    },
    "multimodal_cfg": {"context_length": 76, "width": 768, "heads": 8, "layers": 12},
}


def test_text_context_77_vs_decoder_76_names_both_fields():
    """Scenario 3 (open_clip#864)."""
    (f,) = lint_config(COCA_CONFIG)
    assert f.kind == "inconsistent"
    assert f.keys == ("text_cfg.context_length", "multimodal_cfg.context_length")
    assert f.data["values"] == {"text_cfg.context_length": 77, "multimodal_cfg.context_length": 76}
    assert "77" in f.message and "76" in f.message


def test_roberta_tower_vs_decoder_head_classes_in_a_report_that_loads():
    shapes = {
        "text.transformer.embeddings.word_embeddings.weight": (50265, 768),
        "text_decoder.text_projection": (768, 49408),
        "text_decoder.ln_final.weight": (768,),
    }
    ck = manifest("ck", shapes)
    target = manifest("model", shapes, config=COCA_CONFIG)
    r = diff_manifests(ck, target)
    assert r.ok  # every key loads...
    found = [f for f in r.findings if f.kind == "inconsistent"]
    vocab = [f for f in found if f.data["what"] == "vocab"]
    # both sides share it: said once, for the checkpoint, with the target named
    assert [f.data["side"] for f in vocab] == ["checkpoint"] and vocab[0].data["target_too"]
    assert vocab[0].data["values"] == {
        "text.transformer.embeddings.word_embeddings.weight": 50265,
        "text_decoder.text_projection": 49408,
    }
    assert any(f.data["what"] == "context_length" for f in found)
    assert json.loads(r.to_json())["findings"][0]["kind"] == "inconsistent"


def test_config_vocab_vs_rows_and_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text(
        json.dumps(
            {
                "model": {"vocab": {f"t{i}": i for i in range(32000)}},
                "added_tokens": [{"id": 32000 + i, "content": f"<x{i}>"} for i in range(5)],
            }
        )
    )
    size = read_tokenizer_size(str(tmp_path))
    assert size == 32005
    ck = manifest("ck", {"model.embed_tokens.weight": (32000, 8), "lm_head.weight": (32000, 8)})
    found = lint(ck, {"vocab_size": 32001}, tokenizer_size=size)
    by_what = {f.data["what"]: f for f in found}
    assert by_what["vocab_size"].data["values"] == {
        "vocab_size": 32001,
        "model.embed_tokens.weight": 32000,
    }
    assert by_what["tokenizer"].severity == "error"
    assert "resize_token_embeddings(32005)" in by_what["tokenizer"].message


def test_nested_and_top_level_vocab_disagree():
    (f,) = lint_config({"vocab_size": 128256, "text_config": {"vocab_size": 128261}})
    assert f.keys == ("vocab_size", "text_config.vocab_size")


def test_mllama_offset_is_by_design():
    ck = manifest(
        "ck",
        {
            "language_model.model.embed_tokens.weight": (128264, 16),
            "language_model.lm_head.weight": (128256, 16),
        },
    )
    assert lint(ck, {"model_type": "mllama", "text_config": {"vocab_size": 128256}}) == []
    assert lint(ck, {"model_type": "llama"})  # elsewhere the same shapes disagree


def test_consistent_model_has_no_findings():
    ck = manifest("ck", {"model.embed_tokens.weight": (100, 8), "lm_head.weight": (100, 8)})
    assert lint(ck, {"vocab_size": 100, "text_config": {"vocab_size": 100}}) == []


def _mllama_like(embed, head):
    return manifest(
        "m",
        {
            "model.language_model.embed_tokens.weight": (embed, 8),
            "model.language_model.layers.1.cross_attn_attn_gate": (1,),
            "lm_head.weight": (head, 8),
        },
    )


def test_vocab_warning_is_silent_on_a_by_design_offset_and_said_once_when_true():
    """mllama's embedding has 8 rows more than its head by design: no warning when two
    unchanged files are diffed; a real disagreement on both sides is told once."""
    r = diff_manifests(_mllama_like(1008, 1000), _mllama_like(1008, 1000))
    assert not [f for f in r.findings if f.kind == "inconsistent"]
    shapes = {"embeddings.word_embeddings.weight": (1000, 8), "lm_head.weight": (990, 8)}
    r = diff_manifests(manifest("a", shapes), manifest("b", shapes))
    (f,) = [f for f in r.findings if f.kind == "inconsistent"]
    assert f.data["side"] == "checkpoint" and f.message.endswith("same disagreement.")
    rendered = render_report_table(r)
    assert rendered.count("disagrees with itself") == 1
