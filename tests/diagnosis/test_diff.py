"""The differ on manifests: classification, tying, buffers, prefixes, coverage, JSON."""

from __future__ import annotations

import json

import pytest

from ckptdiff.diagnosis.compare import compare
from ckptdiff.diagnosis.diagnose import diff_manifests
from ckptdiff.keymap import KeyMap
from ckptdiff.sorting import natural_key
from ckptdiff.types import Manifest, TensorSpec


def M(name: str, keys: dict[str, tuple], fmt: str = "safetensors", **kw) -> Manifest:
    tensors = {}
    for k, v in keys.items():
        shape, dtype = (v, "float32") if not (len(v) == 2 and isinstance(v[1], str)) else v
        tensors[k] = TensorSpec(k, tuple(shape), dtype)
    return Manifest(name, fmt, tensors, **kw)


def test_classifies_every_key():
    a = M("a", {"w": (4, 4), "b": ((4,), "float16"), "old": (1,), "layers.1.x": (8,)})
    b = M("b", {"w": (4, 8), "b": (4,), "new": (1,), "layers.1.x": (8,)})
    r = compare(a, b)
    assert [m.key for m in r.mismatched] == ["w"]
    assert (r.mismatched[0].checkpoint_shape, r.mismatched[0].target_shape) == ((4, 4), (4, 8))
    assert [t.key for t in r.missing] == ["new"]
    assert [t.key for t in r.unexpected] == ["old"]
    assert [d.key for d in r.dtype_changes] == ["b"]
    assert r.matched == ("b", "layers.1.x")
    assert not r.ok and r.exit_code == 1


def test_identical_is_ok():
    a = M("a", {"w": (2,)})
    r = diff_manifests(a, a)
    assert r.ok and r.exit_code == 0 and r.findings == () and r.suggestions == ()


def test_natural_sort():
    keys = ["l.10.w", "l.2.w", "l.1.w"]
    assert sorted(keys, key=natural_key) == ["l.1.w", "l.2.w", "l.10.w"]
    r = compare(M("a", {}), M("b", {k: (1,) for k in keys}))
    assert [t.key for t in r.missing] == ["l.1.w", "l.2.w", "l.10.w"]


def test_tied_target_key_absent_from_checkpoint_is_not_missing():
    target = M(
        "t",
        {"embed.weight": (10, 4), "lm_head.weight": (10, 4)},
        tied=(("embed.weight", "lm_head.weight"),),
    )
    r = compare(M("c", {"embed.weight": (10, 4)}), target)
    assert r.ok and r.tied == ("lm_head.weight",)


def test_checkpoint_aliases_count_as_present():
    ck = M("c", {"a.weight": (3,)}, aliases={"b.weight": "a.weight"})
    r = compare(ck, M("t", {"a.weight": (3,), "b.weight": (3,)}))
    assert r.ok and set(r.matched) == {"a.weight", "b.weight"}


def test_buffers_and_ignore_patterns():
    target = M(
        "t",
        {"w": (2,), "running_mean": (2,), "extra.bias": (2,)},
        buffers=frozenset({"running_mean"}),
        non_persistent=frozenset({"position_ids"}),
        metadata={"ignore_missing": [r"^extra\."], "ignore_unexpected": [r"attn\.masked_bias$"]},
    )
    ck = M("c", {"w": (2,), "position_ids": ((1, 512), "int64"), "h.attn.masked_bias": (1,)})
    r = compare(ck, target)
    assert [t.key for t in r.buffers_missing] == ["running_mean"]
    assert {t.key for t in r.ignored} == {"position_ids", "h.attn.masked_bias", "extra.bias"}
    assert r.unexpected == () and r.missing == ()
    assert not r.ok  # a missing persistent buffer keeps its built value: worth a look


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "model."])
def test_wrapper_prefix_is_named_with_the_option_that_fixes_it(prefix):
    keys = {"enc.0.w": (4, 4), "enc.1.w": (4, 4), "head.b": (2,)}
    ck = M("c", {prefix + k: v for k, v in keys.items()})
    r = diff_manifests(ck, M("t", keys))
    (f,) = r.findings
    assert f.kind == "wrapper_prefix"
    assert f.data["option"] == f"--strip-prefix {prefix}"
    assert f.data["coverage_before"] == 0 and f.data["coverage_after"] == 1
    (s,) = r.suggestions
    assert s.kind == "key_map" and s.verified
    fixed = diff_manifests(ck, M("t", keys), key_map=KeyMap.from_rules(s.suggested))
    assert fixed.ok and fixed.key_map == ({"op": "strip_prefix", "prefix": prefix},)


def test_target_side_wrapper_gives_add_prefix():
    keys = {"enc.0.w": (4,), "enc.1.w": (4,)}
    r = diff_manifests(M("c", keys), M("t", {"module." + k: v for k, v in keys.items()}))
    assert r.findings[0].data["option"] == "--add-prefix module."


def test_branch_prefix_is_found_and_coverage_moves():
    text = {"embeddings.word.weight": (50, 8), "encoder.0.w": (8, 8), "encoder.1.w": (8, 8)}
    audio = {"audio_branch.conv.weight": (8, 1, 3)}
    target = M("t", {**{"text_branch." + k: v for k, v in text.items()}, **audio})
    r = diff_manifests(M("c", {**text, **audio}), target)
    (f,) = r.findings
    # --add-prefix would move audio_branch.* too: the option printed is a rename of the text
    # keys only, and pasted back it gives the verified result
    assert f.kind == "key_prefix" and f.data["option"].startswith("--rename ")
    (s,) = r.suggestions
    assert s.field == f.data["option"] and s.status == "verified"
    pasted = KeyMap.from_option_string(s.field)
    assert pasted.to_list() == s.suggested
    assert diff_manifests(M("c", {**text, **audio}), target, key_map=pasted).ok
    cov = {c.module: c for c in r.coverage}
    assert cov["text_branch"].supplied == 0 and cov["audio_branch"].share == 1.0


def test_strip_and_add_prefix_is_printed_as_the_rename_it_is():
    """RoBERTa weights into a CLAP-like model: '--strip-prefix roberta. --add-prefix
    text_model.' pasted back would add the prefix to every key; the printed option is the
    rename, and pasting it loads the text branch."""
    text = {"embeddings.word.weight": (50, 8), "encoder.0.w": (8, 8), "pooler.w": (8, 8)}
    ck = M("c", {**{"roberta." + k: v for k, v in text.items()}, "lm_head.dense.w": (8, 8)})
    target = M("t", {**{"text_model." + k: v for k, v in text.items()}, "audio.w": (4,)})
    r = diff_manifests(ck, target)
    (s,) = [s for s in r.suggestions if s.kind == "key_map"]
    assert s.field == "--rename '^roberta\\.=>text_model.'" and s.status == "verified"
    after = diff_manifests(ck, target, key_map=KeyMap.from_option_string(s.field))
    assert [t.key for t in after.unexpected] == ["lm_head.dense.w"]
    assert [t.key for t in after.missing] == ["audio.w"] and len(after.matched) == 3


def test_prefix_with_shape_differences_is_still_the_right_map():
    ck = M("c", {"module.a": (3,), "module.b": (5,)})
    r = diff_manifests(ck, M("t", {"a": (3,), "b": (6,)}))
    (s,) = r.suggestions
    assert s.status == "partial" and s.still_differ == ("b",)
    assert "1 of them then differ in shape" in r.findings[0].message


def test_no_spurious_prefix_rule_from_leaf_names():
    r = diff_manifests(
        M("c", {"a.weight": (1,), "x.y.weight": (1,)}), M("t", {"b.weight": (1,), "z.weight": (2,)})
    )
    assert r.findings == () and r.suggestions == ()


def test_key_map_collision_is_reported():
    ck = M("c", {"module.w": (1,), "w": (1,)})
    r = diff_manifests(
        ck, M("t", {"w": (1,)}), key_map=KeyMap.from_options(strip_prefix=["module."])
    )
    assert any(f.kind == "key_map_collision" for f in r.findings)


def test_coverage_rows():
    target = M(
        "t",
        {
            "visual.conv.weight": (10,),
            "visual.blocks.0.w": (30,),
            "text.emb": (60,),
            "logit_scale": (),
        },
    )
    r = compare(M("c", {"visual.conv.weight": (10,), "visual.blocks.0.w": (30,)}), target, depth=2)
    cov = {c.module: (c.supplied, c.expected) for c in r.coverage}
    assert cov == {
        "": (40, 101),
        "visual": (40, 40),
        "visual.conv": (10, 10),
        "visual.blocks": (30, 30),
        "text": (0, 60),
    }
    assert r.coverage[0].module == ""


def test_json_contract():
    r = diff_manifests(
        M("a", {"w": (2, 3), "u": (1,)}), M("b", {"w": (3, 2), "m": ((4,), "int64")})
    )
    d = json.loads(r.to_json())
    assert d["schema"] == "ckptdiff.report/2" and d["ok"] is False
    assert d["missing"] == [{"key": "m", "shape": [4], "dtype": "int64"}]
    assert d["unexpected"] == [{"key": "u", "shape": [1], "dtype": "float32"}]
    assert d["mismatched"][0]["checkpoint_shape"] == [2, 3]
    assert d["mismatched"][0]["target_shape"] == [3, 2]
    for field in ("dtype_changes", "coverage", "findings", "suggestions"):
        assert isinstance(d[field], list)


def test_keymap_rules_and_snippet():
    km = KeyMap.from_options(
        strip_prefix=["module."], rename=[r"\.gamma$=>.weight"], add_prefix=["net."]
    )
    assert km.apply("module.ln.gamma") == "net.ln.weight"
    ns: dict = {}
    exec(km.python_snippet().split("\nstate_dict =")[0], ns)  # the snippet's remap function
    assert ns["remap"]("module.ln.gamma") == "net.ln.weight"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"op": "nope"}, "has op 'nope'"),
        ({"op": "rename", "pattern": "("}, "is not a valid regular expression"),
        ({"op": "strip_prefix"}, "needs a non-empty 'prefix'"),
    ],
)
def test_keymap_errors(bad, message):
    from ckptdiff.errors import UsageError

    with pytest.raises(UsageError, match=message):
        KeyMap.from_rules([bad])
