"""Choosing the state dict inside a container, on hand-built trees of tensor records."""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest

from ckptdiff.errors import SelectError
from ckptdiff.readers.containers import (
    MAX_METADATA_STRING,
    find_candidates,
    select_state_dict,
)
from ckptdiff.readers.tensor_specs import specs_from_tensors
from ckptdiff.readers.unpickler.placeholders import placeholder
from ckptdiff.readers.unpickler.records import DTYPES, TensorRef, UnsizedTensor


def t(*shape: int, dtype: str = "float32") -> TensorRef:
    return TensorRef(shape, (1,) * len(shape), 0, DTYPES[dtype], None)


def sd(prefix: str = "") -> dict:
    return {f"{prefix}fc.weight": t(2, 4), f"{prefix}fc.bias": t(2)}


def test_top_level_state_dict_is_used_as_is() -> None:
    s = select_state_dict(sd(), "x.pt")
    assert list(s.tensors) == ["fc.weight", "fc.bias"]
    assert (s.selected, s.candidates, s.metadata, s.findings) == (None, (), {}, [])


def test_all_scalars_is_still_a_state_dict() -> None:
    assert select_state_dict({"step": t(), "scale": t()}, "x.pt").selected is None


@pytest.mark.parametrize(
    ("keys", "chosen"),
    [
        (("model", "model_ema"), "model_ema"),
        (("state_dict", "state_dict_ema"), "state_dict_ema"),
        (("model", "state_dict"), "state_dict"),
        (("module", "model"), "model"),
        (("optimizer_helper", "model_state_dict"), "model_state_dict"),
    ],
)
def test_known_order_picks_and_reports(keys: tuple[str, str], chosen: str) -> None:
    root = {k: sd() for k in keys}
    root["epoch"] = 3
    s = select_state_dict(root, "x.pt")
    assert s.selected == chosen
    assert s.candidates == keys
    (finding,) = s.findings
    assert finding.kind == "container"
    assert finding.severity == "info"
    other = next(k for k in keys if k != chosen)
    assert f"--select {other}" in finding.message
    assert finding.data == {
        "selected": chosen,
        "others": [other],
        "candidate_sizes": {k: {"tensors": 2, "parameters": 10} for k in keys},
    }
    assert s.metadata == {"epoch": 3}


def test_single_nested_candidate_without_finding() -> None:
    s = select_state_dict({"weights_of_run": sd(), "epoch": 1}, "x.pt")
    assert s.selected == "weights_of_run"
    assert s.findings == []


def test_deeper_path_and_select() -> None:
    root = {"model": {"state_dict": sd(), "config": {"width": 4}}, "opt": {"lr": 0.1}}
    s = select_state_dict(root, "x.pt")
    assert s.selected == "model.state_dict"
    assert s.metadata == {"config": {"width": 4}}
    assert select_state_dict(root, "x.pt", select="model.state_dict").tensors == sd()


def test_keys_with_dots_resolve_whole() -> None:
    root = {"ema.v1": sd(), "ema": {"v1": sd("other.")}}
    assert list(select_state_dict(root, "x.pt", select="ema.v1").tensors) == [
        "fc.weight",
        "fc.bias",
    ]


def test_ambiguous_without_known_name() -> None:
    root = {"student": sd(), "teacher": sd()}
    with pytest.raises(
        SelectError,
        match=re.escape(
            "Cannot read 'x.pt' (container): it holds 2 state dicts and none has a usual name: "
            "student, teacher. Pick one with --select (e.g. --select student)."
        ),
    ):
        select_state_dict(root, "x.pt")


def test_unknown_select_lists_candidates() -> None:
    with pytest.raises(
        SelectError,
        match=re.escape(
            "Cannot read 'x.pt' (--select nope): no state dict at 'nope'. Candidates: model."
        ),
    ):
        select_state_dict({"model": sd(), "epoch": 1}, "x.pt", select="nope")


def test_select_on_a_non_container_fails() -> None:
    with pytest.raises(SelectError, match=re.escape("no state dict at 'epoch'")):
        select_state_dict({"model": sd(), "epoch": 1}, "x.pt", select="epoch")


def test_select_on_a_flat_state_dict_explains() -> None:
    with pytest.raises(SelectError, match="the top level is the state dict; omit --select"):
        select_state_dict(sd(), "x.pt", select="model")


def test_nested_dicts_inside_a_state_dict_are_flattened() -> None:
    root = {"head.weight": t(2, 4), "encoder": {"w": t(4), "deeper": {"b": t(1)}}, "v": 3}
    s = select_state_dict(root, "x.pt")
    assert list(s.tensors) == ["head.weight", "encoder.w", "encoder.deeper.b"]
    (finding,) = s.findings
    assert (finding.kind, finding.keys, finding.severity) == ("non_tensor_entry", ("v",), "info")


def test_dict_with_a_scalar_next_to_a_state_dict_is_a_container() -> None:
    s = select_state_dict({"model": sd(), "best_acc": t()}, "x.pt")
    assert s.selected == "model"


def test_unsized_tensors_are_left_out_with_a_warning() -> None:
    s = select_state_dict({"w": t(2), "sparse": UnsizedTensor("a sparse tensor")}, "x.pt")
    assert list(s.tensors) == ["w"]
    (finding,) = s.findings
    assert finding.kind == "unsized_tensor" and finding.keys == ("sparse",)


def test_no_state_dict() -> None:
    s = select_state_dict({"config": {"a": 1}}, "x.pt")
    assert s.tensors == {}
    assert s.findings[0].kind == "no_state_dict"
    assert s.metadata == {"config": {"a": 1}}


def test_cycles_and_shared_references_terminate() -> None:
    shared = sd()
    root: dict = {"a": {"inner": shared}, "b": {"inner": shared}}
    root["a"]["self"] = root
    root["loop"] = root
    assert [p for p, *_ in find_candidates(root)] == ["a.inner"]
    cyclic: dict = {"w": t(2)}
    cyclic["me"] = cyclic
    assert list(select_state_dict(cyclic, "x.pt").tensors) == ["w"]


def test_deep_nesting_is_bounded() -> None:
    root: dict = {}
    node = root
    for _ in range(10_000):
        node["next"] = {}
        node = node["next"]
    node["model"] = sd()
    s = select_state_dict(root, "x.pt")
    assert s.tensors == {}
    assert s.findings[0].kind == "no_state_dict"


def test_metadata_is_json_safe_and_truncated() -> None:
    root = {
        "state_dict": sd(),
        "note": "x" * 1000,
        "numbers": list(range(100)),
        "nan": float("nan"),
        "blob": b"\x00" * 10,
        "tensor": t(3),
        "big": 2**70,
        "nested": {"a": {"b": {"c": {"d": 1}}}},
    }
    meta = select_state_dict(root, "x.pt").metadata
    assert len(meta["note"]) == MAX_METADATA_STRING + 3
    assert meta["numbers"][-1] == "... 68 more"
    assert meta["nan"] == "nan"
    assert meta["blob"] == "<10 bytes>"
    assert "tensor" not in meta
    assert meta["big"] == str(2**70)
    assert meta["nested"] == {"a": {"b": {"c": "<dict of 1>"}}}


def test_pickled_module_is_rebuilt_into_a_state_dict() -> None:
    module_cls = placeholder("mypkg.nets", "Net")
    linear_cls = placeholder("torch.nn.modules.linear", "Linear")
    linear = linear_cls()
    linear.__setstate__(
        {
            "_parameters": OrderedDict(weight=t(2, 4), bias=None),
            "_buffers": OrderedDict(),
            "_modules": OrderedDict(),
        }
    )
    net = module_cls()
    net.__setstate__(
        {
            "_parameters": OrderedDict(),
            "_buffers": OrderedDict(steps=t(1, dtype="int64"), cache=t(3)),
            "_non_persistent_buffers_set": {"cache"},
            "_modules": OrderedDict(fc=linear),
            "training": True,
        }
    )
    s = select_state_dict(net, "x.pt")
    assert list(s.tensors) == ["steps", "fc.weight"]
    wrapped = select_state_dict({"model": net, "epoch": 2}, "x.pt")
    assert wrapped.selected == "model" and wrapped.metadata == {"epoch": 2}
    assert list(select_state_dict({"m": net}, "x.pt", select="m.fc").tensors) == ["weight"]


def test_specs_from_tensors() -> None:
    specs = specs_from_tensors({"w": t(2, 3, dtype="bfloat16")}, "a.pt")
    assert specs["w"].to_dict() == {"key": "w", "shape": [2, 3], "dtype": "bfloat16"}
    assert (specs["w"].nbytes, specs["w"].file) == (12, "a.pt")


def test_specs_from_tensors_are_the_specs_the_class_makes() -> None:
    from ckptdiff.types import TensorSpec

    tensors = {"w": t(2, 3, dtype="bfloat16"), "s": t(), "e": t(0, 5), "u": UnsizedTensor("x")}
    specs = specs_from_tensors(tensors, None)
    assert specs == {
        "w": TensorSpec("w", (2, 3), "bfloat16", 12, None),
        "s": TensorSpec("s", (), "float32", 4, None),
        "e": TensorSpec("e", (0, 5), "float32", 0, None),
    }
    assert all(type(s) is TensorSpec for s in specs.values())
    with pytest.raises(AttributeError):
        specs["w"].key = "v"  # type: ignore[misc]
    assert hash(specs["w"]) == hash(TensorSpec("w", (2, 3), "bfloat16", 12, None))
