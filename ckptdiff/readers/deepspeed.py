"""DeepSpeed checkpoints: ``mp_rank_XX_model_states.pt`` and ZeRO-partitioned saves.

A DeepSpeed save is a folder (``<save_dir>/<tag>/``, with ``<save_dir>/latest`` naming the tag)
holding, per model-parallel rank, ``mp_rank_XX_model_states.pt`` (ZeRO stage 0-2) or one
``zero_pp_rank_D_mp_rank_XX_model_states.pt`` per data-parallel rank (stage 3), and the
partitioned optimizer state in ``*zero_pp_rank_D_mp_rank_XX_optim_states.pt``.

Each model-states file is a torch zip of ``{"module": state_dict, "buffer_names",
"param_shapes", "frozen_param_shapes", "optimizer", "ds_config", "ds_version", ...}``. Under
ZeRO-3 the ``module`` parameters are ``torch.Size([0])`` placeholders: their real (global) shapes
are the ``param_shapes`` entries, and their data only exists partitioned across the optimizer
files until DeepSpeed's ``zero_to_fp32.py`` gathers it. The reader reports those logical shapes
and says so, instead of leaving every tensor at ``[0]``.

Only ``data.pkl`` of each file is read; several model-parallel ranks are merged with
:func:`ckptdiff.layouts.parallel.merge_manifests`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.errors import ReadError, SourceNotFoundError, UnsafeCheckpointError
from ckptdiff.layouts.parallel import merge_manifests
from ckptdiff.readers.containers import select_state_dict
from ckptdiff.readers.tensor_specs import specs_from_tensors
from ckptdiff.readers.torch_zip import pickle_security_findings, unpickle_torch_zip
from ckptdiff.types import Finding, Manifest, Severity, TensorSpec

__all__ = [
    "MODEL_STATES",
    "OPTIM_STATES",
    "DeepSpeedStates",
    "find_deepspeed_files",
    "is_deepspeed_folder",
    "read_deepspeed",
    "read_deepspeed_file",
    "read_model_states",
]

#: ``[zero_pp_rank_D_]mp_rank_XX_model_states.pt``
MODEL_STATES = re.compile(r"^(?:zero_pp_rank_([0-9]{1,9})_)?mp_rank_([0-9]{1,9})_model_states\.pt$")
#: ``[bf16_]zero_pp_rank_D_mp_rank_XX_optim_states.pt``
OPTIM_STATES = re.compile(
    r"^(?:bf16_)?zero_pp_rank_([0-9]{1,9})_mp_rank_([0-9]{1,9})_optim_states\.pt$"
)
#: Largest ``latest`` file read (it holds a tag name).
MAX_LATEST_SIZE = 4096
CONSOLIDATE = (
    "gather them with DeepSpeed's zero_to_fp32.py (python zero_to_fp32.py <save_dir> "
    "<out_dir>, or deepspeed.utils.zero_to_fp32.convert_zero_checkpoint_to_fp32_state_dict)"
)


@dataclass
class DeepSpeedStates:
    """One model-states file: the ``module`` tensors and what DeepSpeed recorded next to them.

    Attributes:
        tensors: the module's specs as stored (ZeRO-3 parameters are placeholders).
        param_shapes: parameter name -> global shape (``param_shapes``, ``frozen_param_shapes``).
        buffer_names: names DeepSpeed lists as buffers.
        stage: the ZeRO stage from ``ds_config``, when recorded.
        ds_version: the DeepSpeed version that wrote it.
        dp_world_size, mp_world_size: the data- and model-parallel sizes, when recorded.
        findings: reader findings (globals outside the allow-list, non-tensor entries).
        selected: the state dict used (``module``).
        candidates: state dicts in the file.
    """

    tensors: dict[str, TensorSpec]
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    buffer_names: list[str] = field(default_factory=list)
    stage: int | None = None
    ds_version: str | None = None
    dp_world_size: int | None = None
    mp_world_size: int | None = None
    findings: list[Finding] = field(default_factory=list)
    selected: str | None = None
    candidates: tuple[str, ...] = ()

    @property
    def placeholders(self) -> list[str]:
        """Parameters stored as ZeRO-3 placeholders whose recorded shape is not theirs."""
        return [
            k
            for k, t in self.tensors.items()
            if t.shape in ((0,), (1,)) and self.param_shapes.get(k, t.shape) != t.shape
        ]


def is_deepspeed_folder(path: str) -> bool:
    """A DeepSpeed save folder, or its tag folder."""
    return find_deepspeed_files(path, "") is not None


def find_deepspeed_files(path: str, source: str) -> tuple[str, list[str], list[str]] | None:
    """``(folder, model_states_files, optim_states_files)`` of a DeepSpeed save, or None.

    A folder with a ``latest`` file is the save folder: the tag it names is used.

    Raises:
        UnsafeCheckpointError: ``latest`` names a folder outside the save folder.
    """
    latest = os.path.join(path, "latest")
    folder = path
    if os.path.isfile(latest) and os.path.getsize(latest) <= MAX_LATEST_SIZE:
        with open(latest, encoding="utf-8", errors="replace") as f:
            tag = f.read().strip()
        candidate = os.path.realpath(os.path.join(path, tag))
        root = os.path.realpath(path)
        if tag and os.path.commonpath([root, candidate]) != root:
            raise UnsafeCheckpointError(
                f"Cannot read '{source}' (latest): the tag {tag!r} lies outside the save "
                "folder. Refusing to follow it."
            )
        if tag and os.path.isdir(candidate):
            folder = candidate
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    model = [n for n in names if MODEL_STATES.match(n)]
    optim = [n for n in names if OPTIM_STATES.match(n)]
    if not model:
        return None
    return folder, model, optim


def _shapes(value: Any, out: dict[str, tuple[int, ...]]) -> None:
    """Collect ``name -> shape`` from ``param_shapes`` (a list of dicts, or one dict)."""
    groups = value if isinstance(value, list) else [value]
    for group in groups:
        if not isinstance(group, Mapping):
            continue
        for k, v in group.items():
            if type(k) is str and isinstance(v, tuple) and all(type(d) is int for d in v):
                out[k] = v


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def read_model_states(path: str, source: str, *, select: str | None = None) -> DeepSpeedStates:
    """Read one model-states file: ``module`` specs plus ``param_shapes`` and friends.

    Raises:
        ReadError: not a torch zip, or a malformed pickle.
        SelectError: ``select`` names no state dict.
    """
    name = os.path.basename(path)
    unpickled = unpickle_torch_zip(path, source)
    root = unpickled.root
    selection = select_state_dict(
        root,
        name,
        select=select
        or ("module" if isinstance(root, dict) and isinstance(root.get("module"), dict) else None),
    )
    states = DeepSpeedStates(
        tensors=specs_from_tensors(selection.tensors, name),
        findings=[*unpickled.findings, *selection.findings],
        selected=selection.selected,
        candidates=selection.candidates,
    )
    if not isinstance(root, dict):
        return states
    _shapes(root.get("param_shapes"), states.param_shapes)
    _shapes(root.get("frozen_param_shapes"), states.param_shapes)
    shared = root.get("shared_params")  # tied parameters: {name: the name it shares}
    if isinstance(shared, dict):
        for k, v in shared.items():
            if type(k) is str and v in states.param_shapes and k not in states.param_shapes:
                states.param_shapes[k] = states.param_shapes[v]
    names = root.get("buffer_names")
    states.buffer_names = [n for n in names if type(n) is str] if isinstance(names, list) else []
    config = root.get("ds_config")
    zero = config.get("zero_optimization") if isinstance(config, dict) else None
    states.stage = _int(zero.get("stage")) if isinstance(zero, dict) else None
    version = root.get("ds_version")
    states.ds_version = version if isinstance(version, str) else None
    states.dp_world_size = _int(root.get("dp_world_size"))
    states.mp_world_size = _int(root.get("mp_world_size"))
    return states


def looks_like_deepspeed(path: str) -> bool:
    """A file named like DeepSpeed's model states."""
    return MODEL_STATES.match(os.path.basename(path)) is not None


def _param_shapes_from_optim(
    folder: str, optim: list[str], source: str
) -> dict[str, tuple[int, ...]]:
    """``param_shapes`` recorded in a rank-0 optimizer file (some versions put them there)."""
    out: dict[str, tuple[int, ...]] = {}
    first = next((n for n in optim if OPTIM_STATES.match(n).group(1) == "0"), None)  # type: ignore[union-attr]
    if first is None:
        return out
    try:
        root = unpickle_torch_zip(os.path.join(folder, first), source).root
    except ReadError:
        return out
    for holder in (root, root.get("optimizer_state_dict") if isinstance(root, dict) else None):
        if isinstance(holder, dict):
            _shapes(holder.get("param_shapes"), out)
            _shapes(holder.get("ds_shape"), out)
    return out


def _logical(states: DeepSpeedStates) -> dict[str, TensorSpec]:
    """The state dict zero_to_fp32.py would write: placeholders get their global shapes."""
    out: dict[str, TensorSpec] = {}
    placeholders = set(states.placeholders)
    for key, spec in states.tensors.items():
        if key in placeholders:
            shape = states.param_shapes[key]
            n = 1
            for d in shape:
                n *= d
            out[key] = TensorSpec(key, shape, "float32", 4 * n, spec.file)
        else:
            out[key] = spec
    return out


def _describe(states: DeepSpeedStates, folder_files: tuple[int, int, int]) -> tuple[str, str]:
    """``(layout, message)`` for one DeepSpeed save."""
    model_files, optim_files, mp = folder_files
    stage = states.stage
    placeholders = states.placeholders
    if placeholders:
        stage = 3
    dp = states.dp_world_size or max(optim_files // max(mp, 1), 1)
    version = f" {states.ds_version}" if states.ds_version else ""
    where = f"stage {stage}" if stage is not None else "stage unknown"
    head = (
        f"DeepSpeed{version} checkpoint (ZeRO {where}, {dp} data-parallel rank"
        f"{'' if dp == 1 else 's'}" + (f", {mp} model-parallel ranks" if mp > 1 else "") + ")"
    )
    if placeholders:
        missing = [
            k
            for k, t in states.tensors.items()
            if t.shape in ((0,), (1,)) and k not in states.param_shapes
        ]
        msg = (
            f"{head}: {len(placeholders)} of the module's {len(states.tensors)} tensors are "
            "ZeRO-3 placeholders of shape [0]; listed with the global shapes DeepSpeed "
            "recorded in param_shapes (as float32, as zero_to_fp32.py writes them). The "
            f"weights exist only partitioned across {optim_files} optimizer-state file"
            f"{'' if optim_files == 1 else 's'}: {CONSOLIDATE}"
        )
        if missing:
            msg += f"; {len(missing)} placeholders have no recorded shape"
        return "deepspeed-zero3", msg
    if stage == 3 or (not states.param_shapes and _zero3_without_shapes(states)):
        return "deepspeed-zero3", (
            f"{head}: the module's parameters are ZeRO-3 placeholders and the file records no "
            f"param_shapes, so their real shapes cannot be told: {CONSOLIDATE}"
        )
    layout = f"deepspeed-zero{stage}" if stage is not None else "deepspeed"
    extra = (
        f"; the fp32 master weights and optimizer state are partitioned across "
        f"{optim_files} optimizer-state files ({CONSOLIDATE} for an fp32 state dict)"
        if optim_files
        else ""
    )
    return layout, f"{head}: full weights in the model states' 'module'{extra}"


def _zero3_without_shapes(states: DeepSpeedStates) -> bool:
    empty = [k for k, t in states.tensors.items() if t.shape == (0,)]
    return len(empty) >= 1 and len(empty) * 2 >= len(states.tensors)


def _manifest(
    states: DeepSpeedStates,
    source: str,
    files: tuple[str, ...],
    counts: tuple[int, int, int],
    format_: str = "deepspeed",
) -> Manifest:
    layout, message = _describe(states, counts)
    severity: Severity = "warning" if layout == "deepspeed-zero3" else "info"
    if layout == "deepspeed-zero3" and not states.placeholders:
        severity = "error"
    finding = Finding(
        "layout",
        message,
        tuple(states.placeholders[:20]),
        severity,
        {
            "layout": layout,
            "zero_stage": 3 if layout.endswith("zero3") else states.stage,
            "consolidate": "zero_to_fp32.py",
        },
    )
    return Manifest(
        source=source,
        format=format_,
        tensors=_logical(states),
        files=files,
        metadata={
            "layout": layout,
            "zero_stage": states.stage,
            "ds_version": states.ds_version,
            "dp_world_size": states.dp_world_size,
            "mp_world_size": states.mp_world_size,
            "buffer_names": states.buffer_names[:32],
            "placeholders": len(states.placeholders),
        },
        findings=(finding, *states.findings),
        selected=states.selected,
        candidates=states.candidates,
    )


def read_deepspeed_file(path: str, source: str, *, select: str | None = None) -> Manifest:
    """Read one ``*model_states.pt`` file (the other files of its folder are counted)."""
    folder = os.path.dirname(os.path.abspath(path))
    states = read_model_states(path, source, select=select)
    optim = [n for n in os.listdir(folder) if OPTIM_STATES.match(n)]
    if not states.param_shapes and optim:
        states.param_shapes = _param_shapes_from_optim(folder, sorted(optim), source)
    return _manifest(states, source, (path,), (1, len(optim), 1))


def _with_skipped_findings(
    manifest: Manifest, folder: str, skipped: list[str], source: str
) -> Manifest:
    """``manifest`` with the security findings of the files not read for tensors (the other
    data-parallel ranks' model states, the optimizer states)."""
    extra = [
        dataclasses.replace(f, message=f"{name}: {f.message}")
        for name in skipped
        for f in pickle_security_findings(os.path.join(folder, name), source)
    ]
    if not extra:
        return manifest
    return dataclasses.replace(manifest, findings=(*manifest.findings, *extra))


def read_deepspeed(path: str, source: str, *, select: str | None = None) -> Manifest:
    """Read a DeepSpeed save folder: the model states of every model-parallel rank.

    Args:
        path: the save folder (with ``latest``) or a tag folder.
        source: the source string as the user gave it.
        select: the state dict inside the model states (default ``module``).

    Returns:
        A ``deepspeed`` manifest with logical shapes (ZeRO-3 placeholders resolved from
        ``param_shapes``, model-parallel ranks merged) and a ``layout`` finding.

    Raises:
        SourceNotFoundError: no model-states file.
        ReadError, SelectError: as :func:`read_model_states`.

    Example:
        >>> m = read_deepspeed("checkpoints/", "checkpoints/")  # doctest: +SKIP
        >>> m.metadata["layout"]  # doctest: +SKIP
        'deepspeed-zero3'
    """
    found = find_deepspeed_files(path, source)
    if found is None:
        raise SourceNotFoundError(
            f"Cannot read '{source}' (DeepSpeed folder): no *mp_rank_XX_model_states.pt file."
        )
    folder, model, optim = found
    by_mp: dict[int, str] = {}
    for n in model:
        m = MODEL_STATES.match(n)
        if m is None:
            continue
        dp, mp = int(m.group(1) or 0), int(m.group(2))
        if mp not in by_mp or dp == 0:
            by_mp[mp] = n
    ranks = [by_mp[k] for k in sorted(by_mp)]
    states = [read_model_states(os.path.join(folder, n), source, select=select) for n in ranks]
    if not states[0].param_shapes and optim:
        states[0].param_shapes = _param_shapes_from_optim(folder, optim, source)
    files = tuple(os.path.join(folder, n) for n in ranks)
    manifest = _manifest(states[0], source, files, (len(model), len(optim), len(ranks)))
    manifest = _with_skipped_findings(
        manifest, folder, [n for n in (*model, *optim) if n not in ranks], source
    )
    if len(ranks) == 1:
        return manifest
    others = [
        _manifest(s, source, (f,), (1, 0, 1)) for s, f in zip(states[1:], files[1:], strict=True)
    ]
    return merge_manifests(
        [manifest, *others],
        source,
        format_="deepspeed",
        rank_files=[os.path.basename(f) for f in files],
    )
