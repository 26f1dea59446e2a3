"""Key alignment beyond prefixes: renames, fused vs split q/k/v, transposed weights."""

from __future__ import annotations

import re

import pytest

from ckptdiff.diagnosis.alignment import align, key_map_to_emit
from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.diagnose import diff_manifests
from ckptdiff.diagnosis.tensor_ops import find_fused_qkv, find_transposed
from ckptdiff.diagnosis.transforms import find_renames
from ckptdiff.keymap import KeyMap

from .conftest import manifest


def test_gamma_beta_become_weight_bias():
    ck = manifest(
        "c", {"blocks.0.norm.gamma": (8,), "blocks.0.norm.beta": (8,), "blocks.0.fc.weight": (8, 8)}
    )
    tg = manifest(
        "t",
        {"blocks.0.norm.weight": (8,), "blocks.0.norm.bias": (8,), "blocks.0.fc.weight": (8, 8)},
    )
    r = diff_manifests(ck, tg)
    (s,) = [s for s in r.suggestions if s.data.get("combined")]
    assert s.verified and s.data["coverage_before"] < 1 and s.data["coverage_after"] == 1
    assert {(x["pattern"], x["replacement"]) for x in s.suggested} == {
        (r"(?P<pre>^|\.)gamma(?=\.|$)", r"\g<pre>weight"),
        (r"(?P<pre>^|\.)beta(?=\.|$)", r"\g<pre>bias"),
    }
    assert diff_manifests(ck, tg, key_map=KeyMap.from_rules(s.suggested)).ok
    assert {f.kind for f in r.findings} == {"key_rename"}


def test_consistent_rename_across_layers_with_indices():
    ck = {f"enc.layers.{i}.layer_norm1.weight": (4,) for i in range(3)}
    tg = {f"enc.layers.{i}.ln_1.weight": (4,) for i in range(3)}
    (t,) = find_renames(ck, tg)
    assert t.data == {"from": "layer_norm1", "to": "ln_1", "known": False, "similarity": 0.8}
    assert len(t.pairs) == 3
    km = KeyMap.from_rules(t.rules)
    assert [km.apply(k) for k in ck] == list(tg)


def test_a_single_unknown_rename_is_not_proposed():
    assert find_renames({"a.foo.weight": (4,)}, {"a.bar.weight": (4,)}) == []


def test_rename_needs_the_same_shape_and_layer_index():
    assert (
        find_renames({"l.0.a.w": (4,), "l.1.a.w": (4,)}, {"l.1.b.w": (4,), "l.2.b.w": (5,)}) == []
    )


def _hf_attn(layers: int, d: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        for n in "qkv":
            out[f"encoder.layers.{i}.self_attn.{n}_proj.weight"] = (d, d)
            out[f"encoder.layers.{i}.self_attn.{n}_proj.bias"] = (d,)
        out[f"encoder.layers.{i}.self_attn.out_proj.weight"] = (d, d)
    return out


def _fused_attn(layers: int, d: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        out[f"encoder.layers.{i}.self_attn.in_proj_weight"] = (3 * d, d)
        out[f"encoder.layers.{i}.self_attn.in_proj_bias"] = (3 * d,)
        out[f"encoder.layers.{i}.self_attn.out_proj.weight"] = (d, d)
    return out


def test_fused_checkpoint_split_target_gives_a_split_rule():
    ck, tg = manifest("c", _fused_attn(2, 8)), manifest("t", _hf_attn(2, 8))
    al = align(ck, tg)
    assert al.verified and al.after.ok
    kinds = [t.kind for t in al.transforms]
    assert kinds == ["split", "split"]  # weights and biases
    rule = al.transforms[0].rules[0]
    assert rule["op"] == "split" and rule["dim"] == 0 and len(rule["into"]) == 3
    assert "split into 3 along dim 0" in al.transforms[0].message


def test_split_checkpoint_fused_target_gives_a_concat_rule():
    al = align(manifest("c", _hf_attn(2, 8)), manifest("t", _fused_attn(2, 8)))
    assert al.after.ok and {t.kind for t in al.transforms} == {"concat"}
    assert "concatenate along dim 0" in al.transforms[0].message


@pytest.mark.parametrize(
    "fused, names",
    [
        ("qkv", ("q", "k", "v")),
        ("query_key_value", ("query", "key", "value")),
    ],
)
def test_other_fused_names(fused, names):
    ck = {f"h.{i}.attn.{fused}.weight": (12, 4) for i in range(2)}
    tg = {f"h.{i}.attn.{n}.weight": (4, 4) for i in range(2) for n in names}
    (t,) = find_fused_qkv(ck, tg)
    assert t.kind == "split" and len(t.pairs) == 2


def test_gqa_split_has_sizes():
    ck = {"l.0.attn.qkv.weight": (16, 8)}
    tg = {"l.0.attn.q.weight": (8, 8), "l.0.attn.k.weight": (4, 8), "l.0.attn.v.weight": (4, 8)}
    (t,) = find_fused_qkv(ck, tg)
    assert t.rules[0]["sizes"] == [8, 4, 4]
    after = KeyMap.from_rules(t.rules).apply_to_manifest(manifest("c", ck))
    assert {k: v.shape for k, v in after.tensors.items()} == tg


def test_transposed_conv1d_names_square_keys_too():
    t = find_transposed(
        [("h.0.mlp.c_fc.weight", (8, 32), (32, 8)), ("h.0.mlp.c_proj.weight", (32, 8), (8, 32))],
        {"h.0.attn.c_proj.weight": (8, 8), "h.0.ln_1.weight": (8,)},
    )
    assert t is not None and t.rules[0]["op"] == "transpose"
    assert t.data["square"] == ["h.0.attn.c_proj.weight"]
    assert re.search(t.rules[0]["pattern"], "h.3.attn.c_proj.weight")


def test_key_map_to_emit_prefers_the_combined_map():
    ck = manifest("c", {"module.n.gamma": (4,), "module.n.beta": (4,)})
    tg = manifest("t", {"n.weight": (4,), "n.bias": (4,)})
    rules = key_map_to_emit(diff_manifests(ck, tg))
    assert {"op": "strip_prefix", "prefix": "module."} in rules
    assert compare(KeyMap.from_rules(rules).apply_to_manifest(ck), tg).ok


def test_snippet_with_transforms_runs_on_real_tensors():
    torch = pytest.importorskip("torch")
    km = KeyMap.from_rules(
        [
            {"op": "strip_prefix", "prefix": "module."},
            {"op": "transpose", "pattern": r"c_fc\.weight$"},
            {
                "op": "split",
                "pattern": r"in_proj_weight$",
                "into": ["q.weight", "k.weight", "v.weight"],
                "dim": 0,
            },
        ]
    )
    code = km.python_snippet()
    assert "def remap(state_dict)" in code and ".t()" in code and "chunk(3, dim=0)" in code
    ns: dict = {}
    exec(code.split("\n\nmodel.load_state_dict")[0], ns)
    sd = {
        "module.c_fc.weight": torch.arange(6.0).reshape(2, 3),
        "module.in_proj_weight": torch.arange(12.0).reshape(6, 2),
    }
    out = ns["remap"](sd)
    assert out["c_fc.weight"].shape == (3, 2)
    assert torch.equal(out["k.weight"], sd["module.in_proj_weight"][2:4])
