"""Every transformers architecture whose saved layout differs from its module layout loads.

``save_pretrained`` writes many models in their original layout (``revert_weight_conversion``:
vision-language models under ``language_model.model.*``, MoE experts one tensor each, legacy
names) and ``from_pretrained`` converts them back on the way in. For every model class of the
auto mappings that builds from its default config (made small: two layers), the saved layout
is produced on meta with transformers' own ``revert_weight_conversion``; wherever it differs
from the model's state dict, ``ckptdiff.check(model, saved)`` must call it compatible.
"""

from __future__ import annotations

import logging
import warnings

import pytest

from ckptdiff import check
from ckptdiff.targets.hf import _sub_config_for
from ckptdiff.targets.meta import on_meta
from ckptdiff.types import Manifest, TensorSpec

transformers = pytest.importorskip("transformers")

#: Saved layouts the real loader itself does not read back (checked against from_pretrained
#: in test_loading_info_oracle.py::test_shieldgemma2_round_trip_fails_in_transformers_too).
LOADER_FAILS = {("shieldgemma2", "Gemma3ForConditionalGeneration")}
_DEPTH = (
    "num_hidden_layers",
    "num_layers",
    "n_layer",
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
    "num_encoder_layers",
)


def _classes() -> list[tuple[str, str]]:
    from transformers.models.auto import modeling_auto

    out: set[tuple[str, str]] = set()
    for attr in dir(modeling_auto):
        if attr.startswith("MODEL") and attr.endswith("_MAPPING_NAMES"):
            for model_type, names in getattr(modeling_auto, attr).items():
                for name in names if isinstance(names, (tuple, list)) else (names,):
                    out.add((model_type, name))
    return sorted(out)


def _small(config):
    for name in _DEPTH:
        value = getattr(config, name, None)
        if type(value) is int and value > 2:
            layer_types = getattr(config, "layer_types", None)
            try:
                setattr(config, name, 2)
                if name == "num_hidden_layers" and isinstance(layer_types, list):
                    config.layer_types = layer_types[:2]
            except Exception:
                setattr(config, name, value)
    for sub in getattr(config, "sub_configs", None) or {}:
        value = getattr(config, sub, None)
        if isinstance(value, transformers.PretrainedConfig):
            _small(value)
    return config


def _saved(model) -> Manifest | None:
    """The layout save_pretrained writes for ``model``, or None when it is the module layout."""
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    saved = revert_weight_conversion(model, dict(state))
    if saved.keys() == state.keys() and all(saved[k].shape == state[k].shape for k in state):
        return None
    tensors = {
        k: TensorSpec(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in saved.items()
    }
    return Manifest("saved", "safetensors", tensors)


def _build(model_type: str, name: str):
    """The model on meta, or None when it does not build here."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = getattr(transformers, name, None)
    if cls is None or model_type not in CONFIG_MAPPING:
        return None
    try:
        config = _small(CONFIG_MAPPING[model_type]())
        with on_meta(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls._from_config(_sub_config_for(cls, config))
    except Exception:  # needs an optional library, or the default config does not build
        return None


def test_every_saved_layout_is_compatible():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.disable(logging.WARNING)
    differ, failures = [], []
    try:
        for model_type, name in _classes():
            model = _build(model_type, name)
            saved = _saved(model) if model is not None else None
            if saved is None:
                continue
            differ.append(name)
            report = check(model, saved)
            if report.ok == ((model_type, name) in LOADER_FAILS):
                failures.append(
                    f"{model_type}/{name}: missing {[t.key for t in report.missing][:3]}"
                    f" unexpected {[t.key for t in report.unexpected][:3]}"
                    f" mismatched {[m.key for m in report.mismatched][:3]}"
                )
    finally:
        logging.disable(logging.NOTSET)
    print(f"{len(differ)} architectures save a layout other than their module layout")
    assert not failures, "\n".join(failures)
    assert len(differ) >= 300  # the sweep is not vacuous (369 with transformers 5.25)
