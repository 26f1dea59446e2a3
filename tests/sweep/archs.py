"""Every transformers architecture that builds from a small config, found from transformers.

Model types come from ``CONFIG_MAPPING``; each type's classes from the auto mappings (the base
model of ``MODEL_MAPPING_NAMES`` and the first task head of the ordered head mappings). A small
config is the config class's defaults with widths, depths, vocabularies, expert counts and
image sizes shrunk (:func:`tiny_config`); an architecture is kept when its class builds from it
on meta. The list is cached per transformers version (:func:`buildable`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.sweep.oracle import BuildError, Shapes, build_factory_shapes, build_shapes, quiet

__all__ = [
    "Arch",
    "Skipped",
    "architectures",
    "buildable",
    "CLIP_FACTORY",
    "cache_path",
    "classes_of",
    "tiny_config",
]

# the head mappings tried, in order, for a model type's task class
HEAD_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_CTC_MAPPING_NAMES",
    "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
    "MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES",
    "MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES",
    "MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES",
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
)

# config fields shrunk, by name (the values of a small config)
WIDTHS = {
    "hidden_size": 32,
    "d_model": 32,
    "n_embd": 32,
    "n_embed": 32,
    "embed_dim": 32,
    "dim": 32,
    "hidden_dim": 32,
    "width": 32,
    "projection_dim": 16,
    "embedding_size": 32,
    "d_embed": 32,
    "text_embed_dim": 32,
    "vision_embed_dim": 32,
    "projection_size": 16,
}
HEADS = {
    "num_attention_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "num_heads": 4,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "attention_heads": 4,
}
KV_HEADS = {"num_key_value_heads": 2, "n_kv_heads": 2, "num_kv_heads": 2}
HEAD_DIMS = {"head_dim": 8, "d_kv": 8, "attention_head_dim": 8, "kv_channels": 8}
LAYERS = {
    "num_hidden_layers": 2,
    "n_layer": 2,
    "num_layers": 2,
    "n_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_decoder_layers": 2,
    "num_encoder_layers": 2,
    "depth": 2,
}
INTERMEDIATE = {
    "intermediate_size": 64,
    "ffn_dim": 64,
    "d_ff": 64,
    "n_inner": 64,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "ffn_hidden_size": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "dim_feedforward": 64,
    "mlp_dim": 64,
}
EXPERTS = {
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
}
IMAGE = {"image_size": 32, "patch_size": 4}
VOCAB = 128
SMALL = {**WIDTHS, **HEADS, **KV_HEADS, **HEAD_DIMS, **LAYERS, **INTERMEDIATE, **EXPERTS, **IMAGE}
# lists whose length follows the depth; a small config drops them (the class derives them)
DEPTH_LISTS = (
    "layer_types",
    "mlp_layer_types",
    "block_types",
    "layers_block_type",
    "out_features",
    "out_indices",
    "per_layer_config",
    "swiglu_limits",
)
# the small configs tried in turn: all shrunk, depths and counts only, the defaults
LEVELS = ("small", "shallow", "defaults")


@dataclass
class Arch:
    """A buildable architecture: its model type, class and small ``config.json`` dict; or, with
    ``factory`` (``pkg.module:callable``), a Python factory and its keyword arguments."""

    model_type: str
    class_name: str
    config: dict[str, Any]
    n_keys: int = 0
    build_seconds: float = 0.0
    level: str = "small"
    factory: str = ""

    def shapes(self, data: dict[str, Any], timeout: float = 60.0) -> Shapes:
        """The oracle's ``state_dict`` shapes of this architecture built from ``data`` (each
        config built once per process; a config that does not build raises each time)."""
        key = (self.factory or self.class_name, json.dumps(data, default=str))
        if key not in _SHAPES:
            if len(_SHAPES) > 128:  # bounded: a sweep moves on from one architecture
                _SHAPES.clear()
            if self.factory:
                _SHAPES[key] = build_factory_shapes(self.factory, data, timeout)
            else:
                _SHAPES[key] = build_shapes(self.class_name, data, timeout)
        return dict(_SHAPES[key])

    def original(self) -> dict[str, Any]:
        """The config file a user checks against (a transformers config names its class)."""
        if self.factory:
            return dict(self.config)
        return {**self.config, "architectures": [self.class_name]}

    def model_args(self, config_path: str) -> list[str]:
        """``check``'s target options for the config written at ``config_path``."""
        if self.factory:
            return ["--model", self.factory, "--config", config_path]
        return ["--model", f"hf-config:{config_path}"]

    @property
    def name(self) -> str:
        return f"{self.model_type}/{self.class_name}"


_SHAPES: dict[tuple[str, str], Shapes] = {}


@dataclass
class Skipped:
    model_type: str
    class_name: str
    reason: str


@dataclass
class Enumeration:
    transformers_version: str
    archs: list[Arch] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


#: the open_clip-style factory of fixtures/models.py (open_clip and timm cannot be imported
#: here), as a sweep architecture: a small ViT CLIP's keyword arguments
CLIP_FACTORY = Arch(
    "open_clip",
    "build_clip",
    {
        "embed_dim": 32,
        "vision_cfg": {
            "width": 32,
            "layers": 2,
            "heads": 2,
            "patch_size": 8,
            "image_size": 32,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "width": 32,
            "layers": 2,
            "heads": 2,
            "context_length": 16,
            "vocab_size": 128,
            "mlp_ratio": 4.0,
        },
    },
    factory="fixtures.models:build_clip",
)


def classes_of(model_type: str) -> list[str]:
    """The base class and the first task-head class of ``model_type`` (either may be absent)."""
    from transformers.models.auto import modeling_auto

    out: list[str] = []
    for mapping in ("MODEL_MAPPING_NAMES", *HEAD_MAPPINGS):
        names = getattr(modeling_auto, mapping, {}).get(model_type)
        if isinstance(names, (list, tuple)):
            names = names[0] if names else None
        if names and names not in out:
            out.append(names)
            if mapping != "MODEL_MAPPING_NAMES":
                break
    return out


def _shrink(data: dict[str, Any], level: str = "small") -> dict[str, Any]:
    if level == "defaults":
        return data
    small = SMALL if level == "small" else {**LAYERS, **EXPERTS}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            sub = "model_type" in value or key.endswith("config")
            out[key] = _shrink(value, level) if sub else value
        elif key in DEPTH_LISTS and isinstance(value, list):
            continue
        elif isinstance(value, bool) or not isinstance(value, int):
            out[key] = value
        elif key in small and value > small[key]:
            out[key] = small[key]
        elif key == "vocab_size" and value > VOCAB:
            out[key] = VOCAB
        else:
            out[key] = value
    # special tokens inside the shrunk vocabulary
    vocab = out.get("vocab_size")
    if isinstance(vocab, int):
        for key, value in list(out.items()):
            if key.endswith("token_id") and isinstance(value, int) and value >= vocab:
                out[key] = vocab - 1 - (hash(key) % 8)
    return out


def tiny_config(model_type: str, level: str = "small") -> dict[str, Any]:
    """A small ``config.json`` dict of ``model_type`` (the class defaults, shrunk).

    ``level``: ``small`` (widths, depths, vocabulary...), ``shallow`` (depths and expert counts
    only) or ``defaults`` (as the class gives it).
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    with quiet():
        data = CONFIG_MAPPING[model_type]().to_dict()
    data = _shrink(data, level)
    for key in ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype"):
        data.pop(key, None)
    data["model_type"] = model_type
    return data


def probe(model_type: str, class_name: str) -> Arch:
    """The architecture, built once on meta from its small config.

    Raises:
        BuildError: the class does not build from the small config.
    """
    errors: list[str] = []
    for level in LEVELS:
        data = tiny_config(model_type, level)
        data["architectures"] = [class_name]
        start = time.perf_counter()
        try:
            shapes = build_shapes(class_name, data, timeout=60)
        except BuildError as e:
            errors.append(f"{level}: {e}")
            continue
        seconds = time.perf_counter() - start
        break
    else:
        raise BuildError("; ".join(errors))
    if not shapes:
        raise BuildError("no parameters")
    return Arch(model_type, class_name, data, len(shapes), round(seconds, 3), level)


def architectures() -> list[tuple[str, str]]:
    """``(model_type, class name)`` of every model type transformers maps to a model class."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return [(mt, cls) for mt in sorted(CONFIG_MAPPING_NAMES) for cls in classes_of(mt)]


def cache_path() -> Path:
    import transformers

    root = Path(os.environ.get("CKPTDIFF_SWEEP_CACHE", Path(__file__).parents[2] / ".cache"))
    return root / "sweep" / f"archs-transformers-{transformers.__version__}.json"


def buildable(refresh: bool = False, log: Any = None) -> Enumeration:
    """Every architecture that builds small, and every one skipped with why (cached)."""
    import transformers

    path = cache_path()
    if path.is_file() and not refresh:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Enumeration(
            data["transformers_version"],
            [Arch(**a) for a in data["archs"]],
            [Skipped(**s) for s in data["skipped"]],
        )
    result = Enumeration(transformers.__version__)
    pairs = architectures()
    for i, (model_type, class_name) in enumerate(pairs):
        try:
            result.archs.append(probe(model_type, class_name))
        except BuildError as e:
            result.skipped.append(Skipped(model_type, class_name, str(e)))
        except Exception as e:  # a config class that cannot even give its defaults
            result.skipped.append(Skipped(model_type, class_name, f"{type(e).__name__}: {e}"))
        if log and (i + 1) % 50 == 0:
            log(f"probed {i + 1}/{len(pairs)} architectures, {len(result.archs)} build")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "transformers_version": result.transformers_version,
                "archs": [asdict(a) for a in result.archs],
                "skipped": [asdict(s) for s in result.skipped],
            },
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    return result
