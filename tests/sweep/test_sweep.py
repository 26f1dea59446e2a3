"""The sweep's fast sample: real transformers architectures, mutated, checked, judged.

Each case writes a real safetensors checkpoint from a mutated model built on meta, runs
``ckptdiff check CKPT --model hf-config:ORIGINAL --emit-config OUT --format json`` through the
command's entry point, and judges the answer with transformers alone (tests/sweep/case.py):
no wrong verified value, no verified field that shapes cannot tell, an emitted config that
rebuilds the checkpoint exactly, a verified fix whenever shapes moved, "compatible" whenever
they did not. The full sweep over every buildable architecture is ``make sweep``.

The sample holds the architectures and mutation kinds that pass today. Known failures of
these architectures stay out of it and are listed, by class, in the README's sweep section
(Qwen2's ``kv_heads`` and ``heads`` mutations: no fix verified).
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.sweep.archs import CLIP_FACTORY, Arch, probe
from tests.sweep.case import Case, judge, make_case, run_case
from tests.sweep.ckpt import write_safetensors
from tests.sweep.mutate import Mutation, candidates, combine
from tests.sweep.run import first_of_each_kind

# architecture -> the mutation kinds of the sample
SAMPLE: dict[tuple[str, str], tuple[str, ...]] = {
    ("bert", "BertModel"): (
        "width",
        "width_heads",
        "layers",
        "vocab",
        "intermediate",
        "positions",
        "heads",
        "invisible",
    ),
    ("gpt2", "GPT2LMHeadModel"): ("width", "width_heads", "layers", "vocab", "positions", "heads"),
    ("llama", "LlamaForCausalLM"): (
        "width",
        "layers",
        "vocab",
        "intermediate",
        "kv_heads",
        "invisible",
    ),
    ("qwen2", "Qwen2ForCausalLM"): ("width_heads", "layers", "vocab"),
    ("t5", "T5ForConditionalGeneration"): ("width", "vocab"),
    ("vit", "ViTForImageClassification"): (
        "width",
        "layers",
        "image",
        "patch",
        "classes",
        "heads",
        "invisible",
    ),
    ("open_clip", "build_clip"): (
        "width",
        "width_heads",
        "layers",
        "image",
        "patch",
        "positions",
        "heads",
        "vocab",
    ),
}

_ARCHS: dict[tuple[str, str], Arch] = {}


def arch(model_type: str, class_name: str) -> Arch:
    key = (model_type, class_name)
    if key == (CLIP_FACTORY.model_type, CLIP_FACTORY.class_name):
        return CLIP_FACTORY
    if key not in _ARCHS:
        _ARCHS[key] = probe(model_type, class_name)
    return _ARCHS[key]


def sample_mutations(a: Arch, kinds: tuple[str, ...]) -> list[Mutation]:
    """The first mutation of each of ``kinds`` (as the full sweep takes them)."""
    return first_of_each_kind([m for m in candidates(a.config, a.class_name) if m.kind in kinds])


SINGLES = [
    pytest.param(key, m, id=f"{key[1]}-{m.label}")
    for key, kinds in SAMPLE.items()
    for m in sample_mutations(arch(*key), kinds)
]


def describe(outcome) -> str:  # type: ignore[no-untyped-def]
    return json.dumps(outcome.to_dict(), indent=1, default=str)


@pytest.mark.parametrize(("key", "mutation"), SINGLES)
def test_single_mutation(key: tuple[str, str], mutation: Mutation) -> None:
    outcome = run_case(arch(*key), mutation)
    assert not outcome.problems, describe(outcome)
    if outcome.moved:
        assert outcome.verified, describe(outcome)


@settings(
    max_examples=6,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(st.data())
def test_combined_mutations(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(SAMPLE)), label="architecture")
    a = arch(*key)
    pool = [m for m in sample_mutations(a, SAMPLE[key]) if m.kind != "invisible"]
    parts = data.draw(
        st.lists(st.sampled_from(pool), min_size=2, max_size=3, unique=True), label="mutations"
    )
    paths = [p for m in parts for p, _ in m.changes]
    if len(paths) != len(set(paths)):
        return
    outcome = run_case(a, combine(parts))
    assert not outcome.problems, describe(outcome)


# --- the judge itself can fail: wrong answers of every class are caught ----------------------


@pytest.fixture(scope="module")
def widened() -> Case:
    a = arch("llama", "LlamaForCausalLM")
    return make_case(a, Mutation("width", (("hidden_size", 48),)))


def verified(field: str, value: object) -> dict[str, object]:
    return {"kind": "config", "field": field, "current": None, "suggested": value, "verified": True}


def test_judge_accepts_the_truth(widened: Case) -> None:
    report = {"suggestions": [verified("hidden_size", 48)]}
    outcome = judge(widened, 1, report, {"hidden_size": 48})
    assert outcome.problems == []


def test_judge_catches_a_wrong_value_and_a_misfit(widened: Case) -> None:
    report = {"suggestions": [verified("hidden_size", 64)]}
    outcome = judge(widened, 1, report, {"hidden_size": 64})
    assert outcome.kinds == {"wrong_value", "emitted_misfit"}


def test_judge_catches_a_verified_field_shapes_cannot_tell(widened: Case) -> None:
    # rope_theta at its true value, but no shape could have told it
    theta = widened.truth.get("rope_theta") or widened.truth["rope_parameters"]["rope_theta"]
    path = "rope_theta" if "rope_theta" in widened.truth else "rope_parameters.rope_theta"
    report = {"suggestions": [verified("hidden_size", 48), verified(path, theta)]}
    outcome = judge(widened, 1, report, {"hidden_size": 48})
    assert outcome.kinds == {"invisible_verified"}


def test_judge_catches_a_missed_fix_and_a_status_word(widened: Case) -> None:
    unverified = {**verified("hidden_size", 48), "verified": False, "status": "partial"}
    assert judge(widened, 1, {"suggestions": [unverified]}, None).kinds == {"missed_fix"}
    report = {"suggestions": [{**verified("hidden_size", 48), "status": "verified"}]}
    assert judge(widened, 1, report, None).kinds == {"emitted_misfit"}


def test_judge_counts_an_honest_undetermined_apart_from_a_missed_fix(widened: Case) -> None:
    told = {**verified("hidden_size", 48), "verified": False, "status": "undetermined"}
    report = {"suggestions": [told]}
    assert judge(widened, 1, report, {"hidden_size": 48}).kinds == {"undetermined"}
    # an undetermined config that does not fit is no excuse
    assert judge(widened, 1, report, {"hidden_size": 64}).kinds == {"emitted_misfit", "missed_fix"}
    assert judge(widened, 1, report, None).kinds == {"missed_fix"}


def test_judge_catches_claims_on_a_checkpoint_that_fits() -> None:
    a = arch("bert", "BertModel")
    case = make_case(a, Mutation("invisible", (("hidden_dropout_prob", 0.25),), visible=False))
    assert not judge(case, 0, {"suggestions": []}, None).problems
    outcome = judge(case, 1, {"suggestions": [verified("hidden_dropout_prob", 0.25)]}, None)
    assert outcome.kinds == {"false_alarm", "verified_without_change"}


def test_written_checkpoint_is_read_by_safetensors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors import safe_open

    shapes = {"a.weight": ((3, 4), "float32"), "b": ((5,), "bfloat16"), "c": ((), "int64")}
    path = tmp_path / "m.safetensors"
    write_safetensors(path, shapes)
    with safe_open(str(path), "pt") as f:
        got = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    assert got == {"a.weight": ((3, 4), "F32"), "b": ((5,), "BF16"), "c": ((), "I64")}
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert path.stat().st_size == 8 + n + 3 * 4 * 4 + 5 * 2 + 8
