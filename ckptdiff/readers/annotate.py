"""The layout of a manifest an ordinary reader returned: which training stack wrote the file.

A PEFT adapter file (``adapter_config.json`` next to it, or adapter keys), a DeepSpeed
model-states file (re-read with the DeepSpeed reader) or quantized weights get their layout
named and a ``layout`` finding; any other manifest is returned unchanged.
"""

from __future__ import annotations

import dataclasses
import os

from ckptdiff.layouts import layout_of, with_folder_config
from ckptdiff.layouts.quant import quant_finding
from ckptdiff.readers.peft import (
    ADAPTER_FILES,
    annotate_adapter,
    looks_like_adapter,
    read_adapter_config,
)
from ckptdiff.types import Manifest

__all__ = ["annotate"]


def annotate(m: Manifest) -> Manifest:
    """Name the layout of a manifest an ordinary reader returned (unchanged when plain).

    Raises:
        ReadError: ``adapter_config.json`` is malformed, or the DeepSpeed re-read fails.
    """
    if layout_of(m) is not None or not m.files:
        return m
    path = m.files[0]
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path) in ADAPTER_FILES or looks_like_adapter(m):
        config = read_adapter_config(folder, m.source)
        if config is not None or looks_like_adapter(m):
            return annotate_adapter(m, config)
    if m.format == "torch-zip":
        from ckptdiff.readers import deepspeed  # loaded with the unpickler: only torch zips pay

        if deepspeed.looks_like_deepspeed(path) and m.selected == "module":
            return deepspeed.read_deepspeed_file(path, m.source, select=m.selected)
    finding = quant_finding(with_folder_config(m, folder))
    if finding is not None:
        metadata = {**m.metadata, "layout": finding.data["layout"]}
        return dataclasses.replace(m, metadata=metadata, findings=(finding, *m.findings))
    return m
