"""``ckptdiff forward`` on the command line: output, JSON, exit codes, one-line errors."""

from __future__ import annotations

import json

from ckptdiff.cli import main
from tests.forward_check.conftest import COCA_CONFIG

COCA_ARGS = [
    "--model",
    "fixtures.forward_models:CoCa",
    "--config",
    str(COCA_CONFIG),
    "--arg",
    "vision_cfg.layers=1",
    "--arg",
    "multimodal_cfg.layers=1",
    "--arg",
    "text_cfg.hf_layers=1",
]


def test_ok_exits_0(runner, tiny_bert):
    result = runner.invoke(main, ["forward", "--model", tiny_bert, "--input", "input_ids=2x16"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "Summary: forward ok at batch sizes 1, 2, 8 (shape-only mode)."
    )
    assert "Mode:   shape-only: the model on meta, fake tensors, no weights" in result.stdout


def test_context_mismatch_exits_1(runner):
    result = runner.invoke(
        main,
        [
            "forward",
            *COCA_ARGS,
            "--input",
            "image=2x3x224x224",
            "--input",
            "text=2x77",
            "--batch-sizes",
            "2",
        ],
    )
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "FAILED at batch size 2 (shape-only mode)" in out
    assert "  module  text_decoder.resblocks.0.attn (MultiheadAttention)" in out
    assert "  op      torch.nn.functional.multi_head_attention_forward" in out
    assert "attn_mask [76, 76]" in out
    assert "multimodal_cfg.context_length=76 (confirmed" in out


def test_labels_json(runner, coca_batch):
    result = runner.invoke(
        main,
        [
            "forward",
            *COCA_ARGS,
            "--arg",
            "multimodal_cfg.context_length=77",
            "--batch",
            str(coca_batch),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "ckptdiff.forward/1" and data["ok"] is False
    (run,) = data["runs"]
    assert (run["batch_size"], run["mode"], run["status"]) == (None, "shape-only", "failed")
    assert run["failure"]["op"] == "torch.nn.functional.cross_entropy"
    assert run["failure"]["dims"][0]["dim"] == 49408
    (finding,) = data["ranges"]
    assert (finding["input"], finding["limit"], finding["max_value"]) == ("labels", 49408, 50264)


def test_bad_input_is_one_line_exit_2(runner, tiny_bert):
    result = runner.invoke(main, ["forward", "--model", tiny_bert, "--input", "input_ids=2xq"])
    assert result.exit_code == 2
    assert result.stderr == (
        "ckptdiff: Cannot use --input 'input_ids=2xq': the shape must be "
        "positive integers joined by x (2x77), at most 2147483648 elements.\n"
    )


def test_an_input_the_forward_does_not_take(runner):
    result = runner.invoke(
        main, ["forward", "--model", "fixtures.forward_models:build_owl", "--input", "ids=2x16"]
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "ckptdiff: Cannot run 'fixtures.forward_models:build_owl': its "
        "forward takes no input named 'ids'; it takes input_ids, "
        "attention_mask.\n"
    )


def test_an_input_passed_to_kwargs_is_named(runner, tiny_bert):
    result = runner.invoke(
        main, ["forward", "--model", tiny_bert, "--input", "ids=2x16", "--batch-sizes", "2"]
    )
    assert result.exit_code == 1  # BertModel: "You must specify exactly one of input_ids..."
    assert (
        "Note: ids is not a named parameter of forward (passed to its **kwargs); it takes "
        "input_ids, attention_mask" in result.stdout
    )


def test_a_factory_needs_inputs(runner):
    result = runner.invoke(main, ["forward", "--model", "fixtures.forward_models:build_owl"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "ckptdiff: Cannot run 'fixtures.forward_models:build_owl' without inputs. Name its inputs "
        "with --input NAME=SHAPE"
    )


def test_check_says_the_forward_was_not_run(runner, minilm_dir):
    result = runner.invoke(main, ["check", str(minilm_dir), "--model", f"hf-config:{minilm_dir}"])
    assert result.exit_code == 0
    assert result.stdout.rstrip().endswith(
        "compatible. State dict only; forward not run: see `ckptdiff forward`."
    )


def test_context_mismatch_output_golden(runner, golden):
    result = runner.invoke(
        main,
        [
            "forward",
            *COCA_ARGS,
            "--input",
            "image=2x3x224x224",
            "--input",
            "text=2x77",
            "--batch-sizes",
            "1,2,8",
        ],
    )
    golden("forward_coca_context.txt", result.stdout.replace(str(COCA_CONFIG), "COCA_CONFIG"))


def test_offsets_output_golden(runner, golden):
    result = runner.invoke(
        main,
        [
            "forward",
            "--model",
            "fixtures.forward_models:build_owl",
            "--input",
            "input_ids=2x128",
            "--input",
            "attention_mask=2x128",
        ],
    )
    assert result.exit_code == 1
    golden("forward_owl_offsets.txt", result.stdout)
