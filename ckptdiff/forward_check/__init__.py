"""Run a target's forward pass without its weights, and say where it breaks.

(Named ``forward_check`` so that ``ckptdiff.forward`` stays the function.)

``ckptdiff.forward(model, inputs)`` and ``ckptdiff forward --model TARGET``:

- :mod:`~ckptdiff.forward_check.inputs`: named shapes, dtypes and known values; synthesized tensors;
- :mod:`~ckptdiff.forward_check.batch`: a saved collated batch, read safely;
- :mod:`~ckptdiff.forward_check.trace`: module paths, the failing op, inputs reaching tables;
- :mod:`~ckptdiff.forward_check.run`: one pass in shape-only mode (fake tensors) or data mode;
- :mod:`~ckptdiff.forward_check.shrink`: the smaller model data mode builds;
- :mod:`~ckptdiff.forward_check.attribute`: the config fields behind a failing dimension;
- :mod:`~ckptdiff.forward_check.ranges`: ids and labels against embedding rows and classes;
- :mod:`~ckptdiff.forward_check.report` / :mod:`~ckptdiff.forward_check.render`: the result.

Importing this package does not import torch; :func:`forward` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckptdiff.forward_check.report import ForwardReport

if TYPE_CHECKING:
    from ckptdiff.forward_check.api import forward

__all__ = ["ForwardReport", "forward"]


def __getattr__(name: str) -> Any:
    if name == "forward":
        from ckptdiff.forward_check.api import forward

        return forward
    raise AttributeError(f"module 'ckptdiff.forward_check' has no attribute {name!r}")
