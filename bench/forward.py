"""``python -m bench.forward`` (part of ``make bench``): ``ckptdiff forward`` on a Llama-3-8B
config, in shape-only mode and in data mode (the shrunk model), as whole processes.

There is no baseline to run: the real model in float32 takes 32 GiB of weights before its first
batch, more than these machines have. Goals: shape-only mode's peak memory below 1 GiB (no
weight bytes at all) and data mode's below 2 GiB at batch sizes 1, 2 and 8 of 2048 tokens.
"""

from __future__ import annotations

import os
import sys

from tabulate import tabulate

from bench.run import CKPTDIFF, measure

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "fixtures", "configs", "forward", "llama-3-8b.json"
)
RUNS = min(int(os.environ.get("BENCH_RUNS", "5")), 2)
GOALS = {"shape-only": 1024, "data": 2048}


def main() -> None:
    rows = []
    for mode, goal in GOALS.items():
        argv = [
            CKPTDIFF,
            "forward",
            "--model",
            f"hf-config:{CONFIG}",
            "--input",
            "input_ids=2x2048",
            "--input",
            "attention_mask=2x2048",
            "--mode",
            mode,
        ]
        r = measure(argv, RUNS)
        verdict = "met" if r.peak_mib < goal else "**not met**"
        rows.append(
            [
                f"forward Llama-3-8B, {mode}, batch 1, 2, 8 x 2048 tokens",
                f"{r.seconds:.1f} s",
                f"{r.peak_mib:.0f} MiB",
                f"< {goal} MiB: {verdict}",
            ]
        )
    print(f"\nckptdiff forward: best of {RUNS} whole-process runs", flush=True)
    print(tabulate(rows, ["case", "time", "peak", "goal"], tablefmt="github"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
