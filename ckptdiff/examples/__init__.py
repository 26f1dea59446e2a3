"""Example models and files for the README's examples and ``make demo``.

- :mod:`ckptdiff.examples.clip`: an open_clip-like CLIP factory,
  ``--model ckptdiff.examples.clip:build_clip``;
- :mod:`ckptdiff.examples.coca`: an open_clip-like CoCa whose forward pass breaks,
  ``--model ckptdiff.examples.coca:CoCa`` (its text tower needs the ``hf`` extra);
- :mod:`ckptdiff.examples.files`: ``python -m ckptdiff.examples [OUT_DIR]`` writes the example
  checkpoints and configs the README uses (default ``examples``).

The models import torch; importing this package does not.
"""
