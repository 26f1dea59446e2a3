"""The restricted unpickler, on hand-built pickles: what it resolves, refuses and never runs."""

from __future__ import annotations

import builtins
import json
import pickle
import re
import time
from collections import OrderedDict

import pytest

from ckptdiff.errors import ReadError
from ckptdiff.readers import unpickler as unpickler_module
from ckptdiff.readers.containers import select_state_dict
from ckptdiff.readers.unpickler.allowlist import ALLOWED_GLOBALS
from ckptdiff.readers.unpickler.opcodes import scan_pickle
from ckptdiff.readers.unpickler.placeholders import Opaque
from ckptdiff.readers.unpickler.records import DTYPES, DType, PickleDataError, StorageRef, TensorRef
from ckptdiff.readers.unpickler.restricted import unpickle


class G:
    """A global, for :func:`enc`."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


def enc(obj: object) -> bytes:
    """Pickle opcodes (protocol 2) for small values, tuples and globals."""
    if obj is None:
        return b"N"
    if obj is True or obj is False:
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"\x8a" + bytes([8]) + obj.to_bytes(8, "little", signed=True)
    if isinstance(obj, str):
        raw = obj.encode()
        return b"X" + len(raw).to_bytes(4, "little") + raw
    if isinstance(obj, tuple):
        return b"(" + b"".join(enc(o) for o in obj) + b"t"
    if isinstance(obj, G):
        return f"c{obj.module}\n{obj.name}\n".encode()
    raise TypeError(obj)


def call(fn: G, *args: object) -> bytes:
    return enc(fn) + enc(args) + b"R"


def pid(*items: object) -> bytes:
    return enc(items) + b"Q"


def storage(key: str = "0", numel: int = 6, kind: str = "FloatStorage") -> bytes:
    return pid("storage", G("torch", kind), key, "cpu", numel)


def tensor(size: tuple, stride: tuple, offset: int = 0, numel: int = 6) -> bytes:
    return (
        enc(G("torch._utils", "_rebuild_tensor_v2"))
        + b"("
        + storage(numel=numel)
        + enc(offset)
        + enc(size)
        + enc(stride)
        + enc(False)
        + call(G("collections", "OrderedDict"))
        + b"tR"
    )


def load(body: bytes, form: str = "zip"):
    return unpickle(b"\x80\x02" + body + b".", "x.pt", storage_form=form)


# --- the allow-list ------------------------------------------------------------------------------


def test_allowed_globals_are_fakes_not_the_real_objects() -> None:
    fake = load(enc(G("torch._utils", "_rebuild_tensor_v2"))).root
    assert fake is ALLOWED_GLOBALS[("torch._utils", "_rebuild_tensor_v2")]
    assert type(fake).__module__ == "ckptdiff.readers.unpickler.allowlist"
    dtype = load(enc(G("torch", "bfloat16"))).root
    assert isinstance(dtype, DType) and dtype.name == "bfloat16"
    assert load(call(G("collections", "OrderedDict"))).root == OrderedDict()
    assert load(call(G("torch", "Size"), (2, 3))).root == (2, 3)
    assert load(call(G("torch", "device"), "cuda", 0)).root == "cuda:0"


def test_a_tensor_becomes_a_record() -> None:
    result = load(tensor((2, 3), (3, 1)))
    assert isinstance(result.root, TensorRef)
    assert (result.root.shape, result.root.stride, result.root.dtype.name) == (
        (2, 3),
        (3, 1),
        "float32",
    )
    assert result.storages == {"0": StorageRef("0", DTYPES["float32"], 6, "cpu", "0")}
    assert result.findings == []


def test_protocol_2_bytes_sets_and_complex_round_trip() -> None:
    value = {
        "b": b"\x00\xffab",
        "e": b"",
        "ba": bytearray(b"xy"),
        "s": {1, 2},
        "f": frozenset({3}),
        "c": 1 + 2j,
        "sl": slice(1, 5, 2),
    }
    assert unpickle(pickle.dumps(value, protocol=2), "x.pt").root == value


def test_codecs_encode_refuses_other_codecs() -> None:
    with pytest.raises(ReadError, match="codec 'zlib_codec'"):
        load(call(G("_codecs", "encode"), "abc", "zlib_codec"))


def test_bytes_from_a_huge_count_is_refused() -> None:
    with pytest.raises(ReadError, match=re.escape("bytes() size")):
        load(call(G("builtins", "bytes"), 10**12))


# --- globals outside the allow-list --------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "qualified"),
    [
        ("posix", "system", "posix.system"),
        ("os", "path.join", "os.path.join"),
        ("__builtin__", "getattr", "builtins.getattr"),
        ("__builtin__", "eval", "builtins.eval"),
        ("copy_reg", "_reconstructor", "copyreg._reconstructor"),
        ("commands", "getoutput", "subprocess.getoutput"),
        ("torch.nn.modules.linear", "Linear", "torch.nn.modules.linear.Linear"),
        ("module_that_does_not_exist", "x", "module_that_does_not_exist.x"),
    ],
)
def test_forbidden_globals_are_placeholders_and_findings(
    module: str, name: str, qualified: str, monkeypatch
) -> None:
    real_import = builtins.__import__
    imported = []

    def spy(target, *args, **kwargs):
        imported.append(target)
        return real_import(target, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    result = load(call(G(module, name), "touch CANARY"))
    imported_while_loading = list(imported)
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert imported_while_loading == []
    assert isinstance(result.root, Opaque)
    assert result.root.args == ("touch CANARY",)
    (finding,) = result.findings
    assert finding.kind == "unsafe_global" and finding.severity == "security"
    assert finding.keys == (qualified,)
    mod, _, nm = qualified.partition(".") if name.count(".") else qualified.rpartition(".")
    assert finding.data == {"module": mod, "name": nm}
    assert finding.message.startswith(f"global '{qualified}' is not on the allow-list: ")


def test_python2_builtin_set_maps_to_the_allowed_set() -> None:
    assert load(enc(G("__builtin__", "set"))).root is set


def test_stack_global_is_checked_the_same_way() -> None:
    body = enc("posix") + enc("system") + b"\x93" + enc(("echo",)) + b"R"
    result = unpickle(b"\x80\x04" + body + b".", "x.pt")
    assert [f.keys for f in result.findings] == [("posix.system",)]


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("argparse", "Namespace"),
        ("pathlib", "PosixPath"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.dtypes", "Float64DType"),
        ("omegaconf.dictconfig", "DictConfig"),
        ("datetime", "datetime"),
    ],
)
def test_benign_data_types_are_info(module: str, name: str) -> None:
    (finding,) = load(call(G(module, name))).findings
    assert (finding.kind, finding.severity, finding.keys) == (
        "non_tensor_object",
        "info",
        (f"{module}.{name}",),
    )


class Plain:
    def __init__(self) -> None:
        self.a = 1


class WithKwargs:
    def __getnewargs_ex__(self):
        return (1,), {"k": 2}

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)


class Items(list):
    pass


class Mapping_(dict):
    pass


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_placeholders_take_every_construction_opcode(protocol: int) -> None:
    items = Items([1, 2])
    mapping = Mapping_(a=1)
    value = {"plain": Plain(), "kw": WithKwargs(), "items": items, "mapping": mapping}
    if protocol < 2:
        del value["kw"]  # needs NEWOBJ_EX (protocol 4) or copyreg.__newobj_ex__
    result = unpickle(pickle.dumps(value, protocol=protocol), "x.pt")
    root = result.root
    assert root["plain"].state == {"a": 1}
    if protocol >= 2:
        assert root["items"].listitems == [1, 2]
        assert root["mapping"].items == [("a", 1)]
    else:  # copyreg._reconstructor(cls, base, state)
        assert root["items"].args[2] == [1, 2]
        assert root["mapping"].args[2] == {"a": 1}
    if protocol >= 4:
        assert root["kw"].args == (1,) and root["kw"].kwargs == {"k": 2}
    flagged = {f.keys[0] for f in result.findings if f.severity == "security"}
    assert f"{__name__}.Plain" in flagged and f"{__name__}.Items" in flagged


def test_inst_and_obj_opcodes() -> None:
    inst = unpickle(b"(S'x'\nimymod\nCls\n.", "x.pt")
    assert inst.root.args == ("x",) and inst.findings[0].keys == ("mymod.Cls",)
    obj = unpickle(b"(cmymod\nCls\nS'y'\no.", "x.pt")
    assert obj.root.args == ("y",)


def test_calling_a_placeholder_result_runs_nothing() -> None:
    body = call(G("builtins", "getattr"), "os", "system") + enc(("ls",)) + b"R"
    result = load(body)
    assert isinstance(result.root, Opaque) and result.root.args == ("ls",)


# --- nothing a pickle reaches can be altered -----------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        G("torch._utils", "_rebuild_tensor_v2"),
        G("torch", "float32"),
        G("torch", "FloatStorage"),
        G("collections", "OrderedDict"),
        G("builtins", "set"),
        G("mymod", "Cls"),
    ],
)
def test_build_cannot_modify_shared_objects(target: G) -> None:
    for state in ((None, {"name": "int8"}), {"name": "int8"}):
        body = (
            enc(target)
            + (
                b"(N}" + enc("name") + enc("int8") + b"st"
                if isinstance(state, tuple)
                else b"}" + enc("name") + enc("int8") + b"s"
            )
            + b"b"
        )
        with pytest.raises(ReadError):
            load(body)
    assert DTYPES["float32"].name == "float32"
    assert ALLOWED_GLOBALS[("torch", "FloatStorage")].name == "FloatStorage"


def test_build_on_a_placeholder_instance_is_recorded() -> None:
    body = call(G("mymod", "Cls")) + b"}" + enc("k") + enc(1) + b"sb"
    assert load(body).root.state == {"k": 1}


# --- storages and tensors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        b"X\x01\x00\x00\x000Q",  # a string persistent id
        pid("storage", G("torch", "FloatStorage"), "0", "cpu", 4, None),  # the legacy form
        pid("storage", G("collections", "OrderedDict"), "0", "cpu", 4),
        pid("storage", G("torch", "FloatStorage"), 0, "cpu", 4),
        pid("storage", G("torch", "FloatStorage"), "0", "cpu", -1),
        pid("storage", G("torch", "FloatStorage"), "0", "cpu", True),
        pid("module", G("torch", "FloatStorage"), "0", "cpu"),
        b"P0\n",
    ],
)
def test_only_torch_storage_records_are_accepted(record: bytes) -> None:
    with pytest.raises(ReadError, match=re.escape("Cannot read 'x.pt' (data.pkl): ")):
        load(record)


def test_legacy_storage_views() -> None:
    view = pid("storage", G("torch", "FloatStorage"), "root", "cpu", 10, ("v", 2, 5))
    result = load(view, "legacy")
    assert (result.root.key, result.root.numel, result.root.root) == ("v", 5, "root")
    assert list(result.storages) == ["root"]
    outside = pid("storage", G("torch", "FloatStorage"), "root", "cpu", 10, ("v", 8, 5))
    with pytest.raises(ReadError, match="covers elements 8..13 of storage 'root'"):
        load(outside, "legacy")


def test_the_same_storage_with_two_sizes_is_refused() -> None:
    body = b"(" + storage(numel=6) + storage(numel=7) + b"t"
    with pytest.raises(ReadError, match="declared as 24 bytes and as 28 bytes"):
        load(body)


@pytest.mark.parametrize(
    ("size", "stride", "offset", "needed"),
    [((2, 4), (4, 1), 0, 8), ((7,), (1,), 0, 7), ((2, 3), (3, 1), 1, 7), ((3, 3), (1, 3), 0, 9)],
)
def test_tensor_extent_must_fit_its_storage(size, stride, offset, needed) -> None:
    with pytest.raises(ReadError, match=f"needs {needed} elements but its storage '0' holds 6"):
        load(tensor(size, stride, offset))


def test_tensor_extent_edge_cases_fit() -> None:
    assert load(tensor((2, 3), (3, 1))).root.shape == (2, 3)
    assert load(tensor((3, 2), (1, 3))).root.shape == (3, 2)  # transposed
    assert load(tensor((4, 6), (0, 1))).root.shape == (4, 6)  # expanded
    assert load(tensor((), (), 5)).root.shape == ()
    assert load(tensor((0, 9), (9, 1), 0, numel=0)).root.shape == (0, 9)


def test_bad_tensor_geometry() -> None:
    with pytest.raises(ReadError, match="do not fit together"):
        load(tensor((2, 3), (1,)))
    with pytest.raises(ReadError, match="non-negative integers"):
        load(tensor((2, -3), (3, 1)))


# --- hostile structure ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x80\x02Nr\xff\xff\xff\x7f.", b"Np99999999999999\n."])
def test_absurd_memo_index_is_refused_quickly(data: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(ReadError, match="memo index"):
        unpickle(data, "x.pt")
    assert time.perf_counter() - start < 1.0


def test_size_cap(monkeypatch) -> None:
    monkeypatch.setattr(unpickler_module, "MAX_PICKLE_SIZE", 10)
    with pytest.raises(ReadError, match=re.escape("over the 10-byte limit")):
        unpickle(pickle.dumps(list(range(10))), "x.pt")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x02",
        b"\x80\x02.",
        b"\x80\x02K\x01K\x02R.",
        b"\x80\x02\xfe.",
        b"\x80\x02X\xff\xff\xff\x7fabc.",
        b"\x80\x02(\x85.",
        b"\x80\x02j\x05\x00\x00\x00.",
    ],
)
def test_structural_problems_are_read_errors(data: bytes) -> None:
    with pytest.raises(ReadError) as info:
        unpickle(data, "x.pt")
    message = str(info.value)
    assert message.startswith("Cannot read 'x.pt' (data.pkl): ")
    assert "\n" not in message


def test_deep_nesting_unpickles_and_is_walked_safely() -> None:
    n = 100_000
    tuples = unpickle(b"\x80\x02" + b"(" * n + b"t" * n + b".", "x.pt").root
    dicts = unpickle(b"\x80\x02" + (b"}" + enc("k")) * n + b"}" + b"s" * n + b".", "x.pt").root
    for root in (tuples, dicts, {"a": dicts, "b": tuples}):
        selection = select_state_dict(root, "x.pt")
        assert selection.tensors == {}
        json.dumps(selection.metadata)


def test_errors_are_chained() -> None:
    with pytest.raises(ReadError) as info:
        unpickle(b"\x80\x02K\x01K\x02R.", "x.pt")
    assert info.value.__cause__ is not None


def test_scan_finds_the_end_of_each_pickle() -> None:
    first, second = pickle.dumps({"a": [1, 2.5, "x"]}, protocol=2), pickle.dumps(7, protocol=4)
    assert scan_pickle(first + second) == len(first)
    assert scan_pickle(first + second, len(first)) == len(first) + len(second)
    assert scan_pickle(first[:-1]) is None
    with pytest.raises(PickleDataError, match="unknown pickle opcode 0xfe"):
        scan_pickle(b"\x80\x02\xfe.")


def test_scan_takes_texts_of_every_length_and_stops_inside_a_cut_one() -> None:
    # texts shorter than the scan's fast path, at its edge and past it
    for length in (0, 1, 2, 127, 128, 129, 300):
        text = "k" * length
        data = (
            b"\x80\x02X"
            + len(text).to_bytes(4, "little")
            + text.encode()
            + b"r"
            + (1000).to_bytes(4, "little")
            + b"X\x05\x00\x00\x00\xff\xfe\x00\n\x2e0."
        )
        assert scan_pickle(data) == len(data)
        for cut in range(len(data)):
            assert scan_pickle(data[:cut]) is None, (length, cut)
    with pytest.raises(PickleDataError, match="memo index"):
        scan_pickle(b"\x80\x02}r" + (1 << 24).to_bytes(4, "little") + bytes(70000) + b".")


def test_distinct_globals_are_capped(monkeypatch) -> None:
    monkeypatch.setattr(unpickler_module, "MAX_DISTINCT_GLOBALS", 3)
    body = b"(" + b"".join(call(G("mod", f"f{i}")) for i in range(6)) + b"t"
    findings = load(body).findings
    assert [f.keys[0] for f in findings] == [
        "mod.f0",
        "mod.f1",
        "mod.f2",
        "<more globals>.<not listed>",
    ]


def test_global_names_are_printable_in_findings() -> None:
    body = enc("os\nx") + enc("y" * 1000) + b"\x93"
    (finding,) = unpickle(b"\x80\x04" + body + b".", "x.pt").findings
    assert "\n" not in finding.message and len(finding.keys[0]) < 420
    assert finding.data["module"] == "os\\nx"
