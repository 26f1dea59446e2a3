"""Quantized weights: recognise the scheme and map packed tensors to the weights they stand for.

Each scheme stores a linear layer's ``weight [out, in]`` as packed data plus side tensors:

==================  ==========================================================================
scheme              stored (4-bit unless said)
==================  ==========================================================================
GPTQ                ``qweight`` int32 ``[in*bits/32, out]``, ``qzeros`` int32
                    ``[groups, out*bits/32]``, ``scales`` ``[groups, out]``, ``g_idx`` ``[in]``
AWQ (GEMM)          ``qweight`` int32 ``[in, out*bits/32]``, ``qzeros`` ``[groups, out*bits/32]``,
                    ``scales`` ``[groups, out]``
bitsandbytes 4-bit  ``weight`` uint8 ``[out*in/2, 1]``, ``weight.absmax``, ``weight.quant_map``,
                    ``weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``), nested ``*_absmax``
bitsandbytes 8-bit  ``weight`` int8 ``[out, in]``, ``SCB`` ``[out]``, ``weight_format``
fp8                 ``weight`` float8 ``[out, in]``, ``weight_scale_inv`` (blocks) or
                    ``weight_scale``/``input_scale``
MLX affine          ``weight`` uint32 ``[out, in*bits/32]``, ``scales``/``biases``
                    ``[out, in/group]``
==================  ==========================================================================

:func:`logical_view` turns a manifest into the unquantized model's keys and shapes, so it can be
diffed against a target built without quantization. A bitsandbytes 4-bit weight only records its
element count in its shape (the shape itself is inside the ``quant_state`` tensor's data, which
is never read): it is given the target's shape when the element counts agree.

Torch-free.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ckptdiff.types import Finding, Manifest, TensorSpec

__all__ = ["QuantInfo", "detect_quantization", "logical_view"]

_GPTQ_SIDE = ("qzeros", "scales", "g_idx")
_BNB4_SIDE = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_FP8_SIDE = (
    "weight_scale_inv",
    "weight_scale",
    "input_scale",
    "output_scale",
    "k_scale",
    "v_scale",
)


@dataclass
class QuantInfo:
    """What :func:`detect_quantization` found.

    Attributes:
        scheme: ``gptq``, ``awq``, ``bnb-4bit``, ``bnb-8bit``, ``fp8``, ``mlx`` (None: none).
        bits: bits per weight, when told.
        group_size: quantization group size, when told (-1: one group per row).
        logical: logical weight key -> spec (shape of the unquantized weight).
        side: side-tensor keys the logical view leaves out.
        packed: logical key -> the stored key(s) it comes from.
        unresolved: logical keys whose shape only the target can tell (bnb 4-bit).
    """

    scheme: str | None = None
    bits: int | None = None
    group_size: int | None = None
    logical: dict[str, TensorSpec] = field(default_factory=dict)
    side: list[str] = field(default_factory=list)
    packed: dict[str, str] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``GPTQ 4-bit, group 128``."""
        names = {
            "gptq": "GPTQ",
            "awq": "AWQ",
            "bnb-4bit": "bitsandbytes 4-bit",
            "bnb-8bit": "bitsandbytes 8-bit (LLM.int8)",
            "fp8": "fp8",
            "mlx": "MLX affine",
        }
        out = names.get(self.scheme or "", str(self.scheme))
        if self.bits and self.scheme in ("gptq", "awq", "mlx"):
            out += f" {self.bits}-bit"
        if self.group_size:
            out += ", group " + ("per row" if self.group_size == -1 else str(self.group_size))
        return out


def _parent(key: str, leaf: str) -> str | None:
    suffix = "." + leaf
    return key[: -len(suffix)] if key.endswith(suffix) else None


def _quant_config(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    cfg = metadata.get("quantization_config") or metadata.get("quantization") or {}
    return cfg if isinstance(cfg, Mapping) else {}


def detect_quantization(m: Manifest, config: Mapping[str, Any] | None = None) -> QuantInfo:
    """Recognise a quantization scheme from a manifest's key names and shapes.

    Args:
        m: the checkpoint's manifest.
        config: ``quantization_config`` (transformers) or ``quantization`` (MLX) settings,
            when known (``bits``, ``group_size``).

    Example:
        >>> from ckptdiff.types import TensorSpec as T
        >>> specs = {"l.qweight": T("l.qweight", (8, 64), "int32"),
        ...          "l.qzeros": T("l.qzeros", (1, 8), "int32"),
        ...          "l.scales": T("l.scales", (1, 64), "float16"),
        ...          "l.g_idx": T("l.g_idx", (64,), "int32")}
        >>> q = detect_quantization(Manifest("x", "safetensors", specs))
        >>> q.scheme, q.logical["l.weight"].shape
        ('gptq', (64, 64))
    """
    cfg = dict(config or {})
    t = m.tensors
    # every key end looked for below, looked for first in all keys at once (one scan each)
    joined = "\n".join(t) + "\n"

    def ends(*suffixes: str) -> bool:
        return any(s + "\n" in joined for s in suffixes) and any(k.endswith(suffixes) for k in t)

    if ends(".qweight"):
        return _gptq_awq(t, cfg)
    if (
        ".quant_state.bitsandbytes__" in joined
        and any(".quant_state.bitsandbytes__" in k for k in t)
        or ends(".absmax")
        and any(k.endswith(".absmax") and _parent(k, "absmax") in t for k in t)
    ):
        return _bnb4(t)
    if ends(".SCB"):
        return _simple(t, "bnb-8bit", ("SCB", "weight_format"))
    if ends(".weight_scale_inv", ".weight_scale") and any(
        v.dtype.startswith("float8") for v in t.values()
    ):
        return _simple(t, "fp8", _FP8_SIDE)
    if ends(".biases") and ends(".scales"):
        return _mlx(t, cfg)
    return QuantInfo()


def _gptq_awq(t: Mapping[str, TensorSpec], cfg: dict[str, Any]) -> QuantInfo:
    info = QuantInfo()
    schemes: Counter[str] = Counter()
    bits_seen: Counter[int] = Counter()
    groups: Counter[int] = Counter()
    for key, q in t.items():
        parent = _parent(key, "qweight")
        if parent is None or len(q.shape) != 2:
            continue
        scales = t.get(parent + ".scales")
        qzeros = t.get(parent + ".qzeros")
        if scales is None or len(scales.shape) != 2:
            continue
        out = scales.shape[1]
        bits = int(cfg.get("bits") or cfg.get("w_bit") or 0)
        if q.shape[1] == out:  # GPTQ: [in*bits/32, out]
            scheme = "gptq"
            if not bits and qzeros is not None and out:
                bits = qzeros.shape[1] * 32 // out
            bits = bits or 4
            in_ = q.shape[0] * 32 // bits
        else:  # AWQ: [in, out*bits/32]
            scheme = "awq"
            if not bits and out:
                bits = q.shape[1] * 32 // out
            bits = bits or 4
            in_ = q.shape[0]
        schemes[scheme] += 1
        bits_seen[bits] += 1
        groups[-1 if scales.shape[0] == 1 else in_ // max(scales.shape[0], 1)] += 1
        info.logical[parent + ".weight"] = TensorSpec(
            parent + ".weight", (out, in_), scales.dtype, None, q.file
        )
        info.packed[parent + ".weight"] = key
        info.side += [parent + "." + s for s in _GPTQ_SIDE if parent + "." + s in t]
    info.scheme = schemes.most_common(1)[0][0] if schemes else "gptq"
    info.bits = bits_seen.most_common(1)[0][0] if bits_seen else None
    info.group_size = (
        int(cfg["group_size"])
        if "group_size" in cfg
        else (groups.most_common(1)[0][0] if groups else None)
    )
    return _rest(t, info)


def _bnb4(t: Mapping[str, TensorSpec]) -> QuantInfo:
    info = QuantInfo(scheme="bnb-4bit", bits=4)
    parents = {k.split(".quant_state.")[0] for k in t if ".quant_state.bitsandbytes__" in k}
    parents |= {p for k in t if (p := _parent(k, "absmax")) is not None and p in t}
    for p in sorted(parents):
        w = t.get(p)
        if w is None:
            continue
        numel = w.numel * 2 if w.dtype == "uint8" else w.numel
        info.logical[p] = TensorSpec(p, (numel,), "bfloat16", None, w.file)
        info.packed[p] = p
        info.unresolved.append(p)
        info.side += [k for k in t if k.startswith(p + ".") and k != p]
    return _rest(t, info)


def _simple(t: Mapping[str, TensorSpec], scheme: str, side: tuple[str, ...]) -> QuantInfo:
    info = QuantInfo(scheme=scheme, bits=8)
    for key in t:
        parent, _, leaf = key.rpartition(".")
        if leaf in side or key.endswith(".weight.weight_format"):
            info.side.append(key)
            w = t.get(parent + ".weight")
            if w is not None and parent + ".weight" not in info.logical:
                info.logical[w.key] = w
                info.packed[w.key] = w.key
    return _rest(t, info)


def _mlx(t: Mapping[str, TensorSpec], cfg: dict[str, Any]) -> QuantInfo:
    info = QuantInfo(scheme="mlx")
    bits = int(cfg.get("bits") or 4)
    info.bits = bits
    group = int(cfg["group_size"]) if "group_size" in cfg else None
    groups: Counter[int] = Counter()
    for key, s in t.items():
        parent = _parent(key, "scales")
        if parent is None or parent + ".biases" not in t:
            continue
        w = t.get(parent + ".weight")
        if w is None or len(w.shape) != 2 or len(s.shape) != 2:
            continue
        in_ = w.shape[1] * 32 // bits
        groups[in_ // max(s.shape[1], 1)] += 1
        info.logical[w.key] = TensorSpec(w.key, (w.shape[0], in_), s.dtype, None, w.file)
        info.packed[w.key] = w.key
        info.side += [key, parent + ".biases"]
    info.group_size = group or (groups.most_common(1)[0][0] if groups else None)
    return _rest(t, info)


def _rest(t: Mapping[str, TensorSpec], info: QuantInfo) -> QuantInfo:
    """Keep every stored tensor that is neither packed nor a side tensor, in file order."""
    taken = set(info.side) | set(info.packed.values())
    ordered: dict[str, TensorSpec] = {}
    for key, spec in t.items():
        if key in taken:
            for logical, stored in info.packed.items():
                if stored == key:
                    ordered[logical] = info.logical[logical]
            continue
        ordered[key] = spec
    for logical, spec in info.logical.items():
        ordered.setdefault(logical, spec)
    info.logical = ordered
    return info


def logical_view(m: Manifest, target: Manifest | None = None) -> Manifest:
    """The manifest of the unquantized weights a quantized checkpoint stands for.

    Packed weights get their logical ``[out, in]`` shapes (a bitsandbytes 4-bit weight takes
    the target's shape when the element counts agree), side tensors are left out, and a
    ``quantized`` finding says what was done. A manifest with no quantization is returned as
    it is.

    Args:
        m: the checkpoint's manifest.
        target: the target, to resolve shapes the checkpoint does not record.
    """
    info = detect_quantization(m, _quant_config(m.metadata))
    if info.scheme is None:
        return m
    tensors = dict(info.logical)
    unresolved = []
    for key in info.unresolved:
        want = target.tensors.get(key) if target is not None else None
        have = tensors[key]
        if want is not None and want.numel == have.numel:
            tensors[key] = replace(have, shape=want.shape, dtype=want.dtype)
        else:
            unresolved.append(key)
    n = len(info.packed)
    msg = (
        f"quantized checkpoint ({info.label}): {n} packed weight{'' if n == 1 else 's'} "
        f"compared at their unquantized shapes, {len(info.side)} side tensors "
        "(scales, zeros, absmax...) left out. Loading it into an unquantized model needs the "
        "quantization library (a quantization_config) or dequantized weights"
    )
    if unresolved:
        msg += (
            f"; {len(unresolved)} bitsandbytes 4-bit weights have no target weight of the "
            "same element count, so only their element count is known"
        )
    finding = Finding(
        "quantized",
        msg,
        tuple(list(info.packed.values())[:20]),
        "warning",
        {
            "scheme": info.scheme,
            "bits": info.bits,
            "group_size": info.group_size,
            "packed": n,
            "side_tensors": len(info.side),
        },
    )
    return replace(
        m,
        tensors=tensors,
        findings=(*m.findings, finding),
        metadata={
            **m.metadata,
            "layout": info.scheme,
            "quantization": {
                "scheme": info.scheme,
                "bits": info.bits,
                "group_size": info.group_size,
            },
        },
    )


def quant_finding(m: Manifest) -> Finding | None:
    """The ``layout`` finding ``inspect`` shows for a quantized checkpoint, or None."""
    info = detect_quantization(m, _quant_config(m.metadata))
    if info.scheme is None:
        return None
    examples = []
    for logical, stored in list(info.packed.items())[:2]:
        shape = "x".join(map(str, info.logical[logical].shape))
        have = m.tensors[stored]
        to = (
            f"{logical} [{shape}]"
            if logical not in info.unresolved
            else f"{math.prod(info.logical[logical].shape):,} elements"
        )
        examples.append(f"{stored} {list(have.shape)} {have.dtype} -> {to}")
    return Finding(
        "layout",
        f"quantized weights: {info.label}; {len(info.packed)} packed weights and "
        f"{len(info.side)} side tensors (e.g. {'; '.join(examples)}). check and diff compare "
        "them at their unquantized shapes",
        tuple(list(info.packed.values())[:20]),
        "info",
        {"layout": info.scheme, "bits": info.bits, "group_size": info.group_size},
    )
