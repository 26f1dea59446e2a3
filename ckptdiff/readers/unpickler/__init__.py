"""A restricted unpickler for torch checkpoints: tensors become specs, nothing is imported or run.

Shared by the torch zip reader, the legacy/plain pickle reader, the DCP reader and the hub: it
works on the bytes of one pickle and never touches a file. One module per job:

- :mod:`~ckptdiff.readers.unpickler.restricted`: :func:`unpickle`, the entry point;
- :mod:`~ckptdiff.readers.unpickler.allowlist`: the exact ``(module, name)`` allow-list, mapping
  torch's rebuild functions, storage types, dtypes, ``torch.Size``... to fakes of ours;
- :mod:`~ckptdiff.readers.unpickler.records`: what the fakes build (:class:`TensorRef`,
  :class:`StorageRef`, :class:`DType`...), immutable;
- :mod:`~ckptdiff.readers.unpickler.placeholders`: every other global becomes a placeholder
  class (a subclass of ``Opaque``) that accepts any arguments and state and runs nothing, and is
  reported as a :class:`~ckptdiff.types.Finding`;
- :mod:`~ckptdiff.readers.unpickler.opcodes`: before the C unpickler runs, one walk over the
  opcodes checks that every length fits in the data and that no memo index is absurd (CPython's
  C unpickler allocates ``8 * 2 * index`` bytes for ``LONG_BINPUT index``);
- :mod:`~ckptdiff.readers.unpickler.deadline`: the time bound of one unpickle;
- :mod:`~ckptdiff.readers.unpickler.witness`: collects the security findings of every pickle
  unpickled during a read, whatever the format reader does with them.

How it stays safe: ``find_class`` never imports anything; ``persistent_load`` accepts only
torch's storage records and returns a ``StorageRef`` (key, dtype, element count): storage bytes
are never read; every object a pickle can reach is immutable (builtin types, our slotted fakes,
placeholder classes with a read-only metaclass), so ``BUILD`` cannot rewire our own code between
files.

This module holds only the limits, read at call time: raise one here if you trust a file.
"""

from __future__ import annotations

__all__ = [
    "MAX_BIG_INTS",
    "MAX_DISTINCT_GLOBALS",
    "MAX_PICKLE_SIZE",
    "MAX_SECONDS",
    "MAX_WALKED_OPCODES",
]

#: Largest pickle (``data.pkl``, or the object pickle of a legacy file) we agree to read.
MAX_PICKLE_SIZE = 1 << 30
#: Distinct globals outside the allow-list reported one by one; the rest share one placeholder.
MAX_DISTINCT_GLOBALS = 10_000
#: Integers beyond 32 bits accepted in one pickle: ints equal modulo 2**61 - 1 hash alike, so
#: a dict of many of them costs quadratic time inside the C unpickler, where no deadline runs.
MAX_BIG_INTS = 5_000
#: Most seconds one pickle may take to scan and unpickle; a file built to be slow is refused
#: instead of hanging the caller.
MAX_SECONDS = 60.0
#: Opcodes walked by :func:`~ckptdiff.readers.unpickler.opcodes.globals_in` before it gives up
#: (a bound on its time).
MAX_WALKED_OPCODES = 2_000_000
