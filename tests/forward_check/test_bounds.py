"""Value ranges followed through the ops that build position ids."""

from __future__ import annotations

import torch

from ckptdiff.forward_check.bounds import Bounds


def _run(bounds: Bounds, name: str, fn, *args, **kwargs):
    out = fn(*args, **kwargs)
    bounds.update(name, args, kwargs, out)
    return out


def test_roberta_positions():
    """fairseq's make_positions: (cumsum(ids != pad) * mask).long() + pad."""
    b = Bounds()
    ids = torch.randint(0, 50, (2, 10))  # ids from data: no range known
    mask = _run(b, "torch.Tensor.ne", torch.Tensor.ne, ids, 1)
    mask = _run(b, "torch.Tensor.int", torch.Tensor.int, mask)
    inc = _run(b, "torch.cumsum", torch.cumsum, mask, dim=1)
    inc = _run(b, "torch.Tensor.__mul__", torch.Tensor.__mul__, inc, mask)
    pos = _run(b, "torch.Tensor.__add__", torch.Tensor.__add__, inc.long(), 1)
    assert b.get(ids) is None
    assert b.get(pos) == (1, 11)
    assert int(pos.max()) <= 11  # the real values stay inside


def test_arange_slices_and_clamp():
    b = Bounds()
    pos = _run(b, "torch.arange", torch.arange, 3, 20, 4)
    assert b.get(pos) == (3, 19)
    view = _run(b, "torch.Tensor.__getitem__", torch.Tensor.__getitem__, pos, slice(None))
    assert b.get(view) == (3, 19)
    low = _run(b, "torch.clamp", torch.clamp, pos, max=10)
    assert b.get(low) == (3, 10)
    assert b.get(_run(b, "torch.Tensor.__rsub__", torch.Tensor.__rsub__, pos, 20)) == (1, 17)


def test_unknown_ops_forget_the_range():
    b = Bounds()
    pos = _run(b, "torch.arange", torch.arange, 8)
    out = _run(b, "torch.Tensor.__floordiv__", torch.Tensor.__floordiv__, pos, 2)
    assert b.get(out) is None
