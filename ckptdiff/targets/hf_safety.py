"""What a hostile transformers config may ask for, refused before anything is built: sizes
no real model has (layers, positions, any integer field), and a build that would need the
repository's own code (``auto_map``), which ckptdiff never runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ckptdiff.errors import TargetError
from ckptdiff.terminal import printable

__all__ = [
    "MAX_FIELD",
    "MAX_LAYERS",
    "MAX_POSITIONS",
    "check_sizes",
    "refuse_remote_code",
    "remote_code_message",
]

#: Raise with ``CKPTDIFF_MAX_LAYERS``: the most layers (blocks) a config target may declare.
MAX_LAYERS = 1024
#: Raise with ``CKPTDIFF_MAX_POSITIONS``: the most positions (context length) a config target
#: may declare; some models allocate position buffers on the CPU even on ``meta``.
MAX_POSITIONS = 1 << 24
#: Any other integer field of a config beyond this is refused (no model has a dimension this big).
MAX_FIELD = 1 << 40
_LAYER_FIELD = re.compile(
    r"(^|_)(n_?layers?|num_(hidden_)?layers|num_blocks|n_blocks?|depths?|"
    r"num_[a-z_]*layers|[a-z_]*_layers)$"
)
_POSITION_FIELD = re.compile(r"(position|n_ctx|n_positions|seq_len|context_length|max_len)")


def _limit(env: str, default: int) -> int:
    raw = os.environ.get(env, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        return default


def _int_fields(data: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, str, float]]:
    """``(dotted path, field name, value)`` of every integer (or list of integers) in a config."""
    if depth > 20 or not isinstance(data, Mapping):
        return
    for key, value in data.items():
        name = str(key)
        here = f"{path}{name}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield here, name, value
        elif isinstance(value, list) and name.startswith(("depth", "layers")):
            nums = [
                float(min(v, 1 << 60))
                for v in value
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            yield here, name, sum(nums)
        elif isinstance(value, Mapping):
            yield from _int_fields(value, here + ".", depth + 1)


def check_sizes(spec: str, data: Mapping[str, Any]) -> None:
    """Refuse a config whose sizes no real model has, before anything is built.

    100,000 layers take minutes to build even on ``meta``; ``max_position_embeddings=1e9``
    makes some models allocate gigabytes of position buffers on the CPU.

    Raises:
        TargetError: a layer count above ``CKPTDIFF_MAX_LAYERS`` (1024), a position count above
            ``CKPTDIFF_MAX_POSITIONS`` (16,777,216), or any integer field above 2**40.
    """
    layers = _limit("CKPTDIFF_MAX_LAYERS", MAX_LAYERS)
    positions = _limit("CKPTDIFF_MAX_POSITIONS", MAX_POSITIONS)
    for path, name, value in _int_fields(data):
        if value != value or value in (float("inf"), float("-inf")):
            continue  # NaN and inf are the config class's to refuse
        if _LAYER_FIELD.search(name) and value > layers:
            limit, env = layers, "CKPTDIFF_MAX_LAYERS"
        elif _POSITION_FIELD.search(name) and value > positions:
            limit, env = positions, "CKPTDIFF_MAX_POSITIONS"
        elif value > MAX_FIELD:
            raise TargetError(
                f"Cannot build '{spec}': config field '{path}' is {value:.4g}, beyond any real "
                "model's size (2**40). Refusing to build it."
            )
        else:
            continue
        raise TargetError(
            f"Cannot build '{spec}': config field '{path}' is {value:,.0f}, above the limit of "
            f"{limit:,}; refusing to build it. If the model really is that large, raise the "
            f"limit: {env}={int(value)}."
        )


def _code_file(reference: object) -> str:
    """``modeling_x.py`` for an ``auto_map`` entry ``modeling_x.XModel`` (or ``org/repo--...``)."""
    text = reference[0] if isinstance(reference, (list, tuple)) and reference else reference
    text = str(text or "")
    repo, _, ref = text.rpartition("--")
    module = ref.rsplit(".", 1)[0] if "." in ref else ref
    name = f"{module.replace('.', '/')}.py"
    return f"{repo}/{name}" if repo else name


def remote_code_message(spec: str, auto_map: object, auto_class: str | None) -> str:
    """One line: the config needs repository code (naming the file), never run; the way out."""
    entries = auto_map if isinstance(auto_map, Mapping) else {}
    reference = entries.get(auto_class) if auto_class else None
    if reference is None and entries:
        reference = next(iter(entries.values()))
    file = _code_file(reference) if reference is not None else "the repository's own code"
    file = printable(file)[:200]
    return (
        f"Cannot build '{spec}': its config.json needs custom code ({file}, through auto_map), "
        "which ckptdiff never runs. Build the model with your own factory instead: "
        "--model yourpkg.module:build_model."
    )


def refuse_remote_code(spec: str, cls: Any, name: str, config: Any) -> None:
    """Refuse a build that transformers could only do by running the repository's code.

    An Auto class finds the model through ``auto_map`` when the config's class is not in its
    own mapping; transformers would then ask on stdin whether to run that code. ckptdiff never
    asks and never runs it.

    Raises:
        TargetError: the build needs the repository's code.
    """
    auto_map = getattr(config, "auto_map", None)
    if not name.startswith("Auto") or not isinstance(auto_map, Mapping):
        return
    mapping = getattr(cls, "_model_mapping", None)
    try:
        local = mapping is not None and type(config) in mapping.keys()
    except Exception:
        local = False
    if not local and name in auto_map:
        raise TargetError(remote_code_message(spec, auto_map, name))
