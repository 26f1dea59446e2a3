"""Shared helpers: manifests from shape dicts, targets built on meta from the fixture factories."""

from __future__ import annotations

from typing import Any

import pytest

from ckptdiff.types import Manifest, TensorSpec


def manifest(name: str, shapes: dict[str, tuple[int, ...]], **kw: Any) -> Manifest:
    """A manifest of float32 tensors with these shapes."""
    return Manifest(
        name,
        "safetensors",
        {k: TensorSpec(k, tuple(v), "float32") for k, v in shapes.items()},
        **kw,
    )


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    from ckptdiff.diagnosis.verify import clear_cache

    clear_cache()
    yield
