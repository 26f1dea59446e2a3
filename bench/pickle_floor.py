"""How fast any reader of a torch zip's ``data.pkl`` can be in Python, beside ckptdiff's.

The pickle of a state dict holds every tensor as a handful of opcodes that call back into the
reader twice (a persistent id for its storage, a rebuild function for the tensor). The floor
here is CPython's C unpickler with both callbacks C functions that check nothing (``tuple``,
``BaseException``): what the pickle itself costs. ckptdiff's row is its restricted unpickler
(opcode scan, allow-list, every record checked), timed the same way. Both inside one process,
best of ``BENCH_RUNS``, on the bytes of ``data.pkl`` (read once, outside the timing).
"""

from __future__ import annotations

import gc
import io
import pickle
import time
import zipfile
from collections.abc import Callable

from tabulate import tabulate

from bench.run import RUNS, make_files
from ckptdiff.readers.unpickler.restricted import unpickle


class _NoChecks(pickle.Unpickler):
    """Every global a C function, every persistent id returned as it is: nothing checked."""

    def find_class(self, module: str, name: str) -> object:
        return dict if name == "OrderedDict" else BaseException


def _floor(data: bytes) -> None:
    u = _NoChecks(io.BytesIO(data))
    u.persistent_load = tuple  # type: ignore[assignment]
    u.load()


def _best(fn: Callable[[bytes], object], data: bytes) -> float:
    best = float("inf")
    for _ in range(RUNS):
        gc.disable()  # as both readers run: no cycles among the records
        t = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - t)
        gc.enable()
    return best


def main() -> None:
    p = make_files()
    rows = []
    for n, label in ((20_000, "20,000"), (100_000, "100,000")):
        with zipfile.ZipFile(p[f"{n}.pt"]) as z:
            data = z.read(next(x for x in z.namelist() if x.endswith("/data.pkl")))
        floor = _best(_floor, data)
        ours = _best(lambda d: unpickle(d, "bench.pt"), data)
        rows.append(
            [
                f"{label}-tensor .pt, data.pkl ({len(data) / 1e6:.1f} MB)",
                f"{floor:.3f} s",
                f"{ours:.3f} s",
                f"{ours / floor:.2f}x",
            ]
        )
    print(f"\nUnpickling data.pkl inside a process (best of {RUNS})")
    headers = ["pickle", "C unpickler, C callbacks, no checks", "ckptdiff unpickle", "ratio"]
    print(tabulate(rows, headers, tablefmt="github"))


if __name__ == "__main__":
    main()
