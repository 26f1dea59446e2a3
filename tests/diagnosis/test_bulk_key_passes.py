"""The key passes that run over every key of a checkpoint (layer containers, module coverage,
vocabulary tensors, key search) give what the plain key-at-a-time rules give, on keys drawn
from the components real checkpoints use and from hostile ones (line breaks, ``#``, empty
components, leading zeros, 19-digit runs)."""

from __future__ import annotations

import math
import re
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptdiff.diagnosis.compare import module_coverage
from ckptdiff.diagnosis.lint import vocab_tensors
from ckptdiff.naming import (
    DECODER_PROJECTIONS,
    EMBED_NAMES,
    RNN_SUFFIX,
    VOCAB_HEAD_ROWS,
    containers,
    keys_holding,
)
from ckptdiff.sorting import natural_key
from ckptdiff.types import Coverage, Manifest, TensorSpec

# --- the rules a key at a time: the oracles -------------------------------------------------

_LAYER_INDEX = re.compile(r"^[0-9]{1,18}$")
_RNN_LEAF = re.compile(r"^(?:weight|bias)_(?:ih|hh|hr)_l([0-9]{1,9})(_reverse)?$")


def containers_oracle(keys):
    out = defaultdict(set)
    for key in keys:
        parts = key.split(".")
        for i, p in enumerate(parts):
            if _LAYER_INDEX.match(p) and i:
                tmpl = ".".join("#" if _LAYER_INDEX.match(q) else q for q in parts[:i])
                out[tmpl].add(int(p))
        if len(parts) > 1 and (m := _RNN_LEAF.match(parts[-1])):
            base = ".".join("#" if _LAYER_INDEX.match(q) else q for q in parts[:-1])
            out[base + RNN_SUFFIX].add(int(m.group(1)))
    return out


def coverage_oracle(expected, supplied, depth):
    rows = {}
    for spec in expected:
        parts = spec.key.split(".")
        hit = spec.key in supplied
        for n in range(0, min(depth, len(parts) - 1) + 1):
            name = ".".join(parts[:n])
            row = rows.setdefault(name, [0, 0, 0, 0])
            row[0] += math.prod(spec.shape)
            row[2] += 1
            if hit:
                row[1] += math.prod(spec.shape)
                row[3] += 1
    rows.setdefault("", [0, 0, 0, 0])
    ordered = sorted(rows, key=lambda m: (m != "", natural_key(m)))
    return tuple(Coverage(m, *rows[m]) for m in ordered)


def vocab_oracle(m):
    embed = [n for n in EMBED_NAMES if n != "shared"]
    embeds, heads = {}, {}
    for key, t in m.tensors.items():
        parts = key.split(".")
        if len(t.shape) != 2 or key.endswith("bias"):
            continue
        if any(p in embed for p in parts):
            embeds[key] = t.shape[0]
        elif any(p in VOCAB_HEAD_ROWS for p in parts) and parts[-1] == "weight":
            heads[key] = t.shape[0]
        elif "decoder" in key and parts[-1] in DECODER_PROJECTIONS and t.shape[1] >= 2 * t.shape[0]:
            heads[key] = t.shape[1]
    return embeds, heads


# --- keys as checkpoints name them, and as hostile files do ----------------------------------

_COMPONENTS = st.one_of(
    st.sampled_from(
        [
            "model",
            "layers",
            "blocks",
            "h",
            "encoder",
            "decoder",
            "text_decoder",
            "experts",
            "mlp",
            "attn",
            "sub3",
            "conv1",
            "weight",
            "bias",
            "shared",
            "weight_ih_l0",
            "bias_hh_l2_reverse",
            "weight_hr_l11",
            "",
            "#",
            "a#b",
            "x\ny",
            "07",
            "1234567890123456789",
            "123456789012345678",
            "12\n",
            *EMBED_NAMES,
            *VOCAB_HEAD_ROWS,
            *DECODER_PROJECTIONS,
        ]
    ),
    st.integers(0, 40).map(str),
)
_KEY = st.lists(_COMPONENTS, min_size=1, max_size=6).map(".".join)
_SHAPE = st.lists(st.integers(0, 70), min_size=0, max_size=3).map(tuple)


def _manifest(keys_shapes):
    specs = {k: TensorSpec(k, s, "float32") for k, s in keys_shapes}
    return Manifest("m", "safetensors", specs)


@settings(max_examples=400, deadline=None)
@given(st.lists(_KEY, max_size=40))
def test_containers_agree_with_the_rule_a_key_at_a_time(keys):
    got = containers(keys)
    want = containers_oracle(keys)
    assert got == want
    assert list(got) == list(want)  # the same order of first appearance


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_KEY, _SHAPE), max_size=40), st.integers(-1, 4), st.randoms())
def test_module_coverage_agrees_with_the_rule_a_key_at_a_time(keys_shapes, depth, rnd):
    specs = list(_manifest(keys_shapes).tensors.values())
    supplied = {s.key for s in specs if rnd.random() < 0.5}
    assert module_coverage(specs, supplied, depth) == coverage_oracle(specs, supplied, depth)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_KEY, _SHAPE), max_size=40))
def test_vocab_tensors_agree_with_the_rule_a_key_at_a_time(keys_shapes):
    m = _manifest(keys_shapes)
    got = vocab_tensors(m)
    want = vocab_oracle(m)
    assert got == want
    assert [list(d) for d in got] == [list(d) for d in want]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_KEY, max_size=30),
    st.lists(st.sampled_from(["lm_head", ".output\n", "0.", "\n", "a#", "x", "wte"]), max_size=4),
)
def test_keys_holding_is_a_substring_test(keys, words):
    want = [k for k in keys if any(w in k + "\n" for w in words)]
    assert keys_holding(keys, words) == want


def test_a_hundred_thousand_keys_take_the_whole_list_pass():
    keys = [f"model.layers.{i // 10}.experts.{i % 10}.w{i % 3}.weight" for i in range(100_000)]
    got = containers(keys)
    assert got == {"model.layers": set(range(10_000)), "model.layers.#.experts": set(range(10))}
