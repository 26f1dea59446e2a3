"""``make security-report``: the hostile corpus through ckptdiff and through torch's weights_only.

Each file is read in a fresh subprocess, with a time limit and an address-space cap, by
``ckptdiff inspect`` and by ``torch.load(path, weights_only=True)``; the canary is checked after
each run. Outcomes:

- ``flagged``: refused or reported as unsafe (ckptdiff exit 3; torch's "Weights only load
  failed" naming a global);
- ``read``: read without complaint (ckptdiff exit 0 or 1; torch returned);
- ``error``: refused as malformed, with a clear error (ckptdiff exit 2; torch raised);
- ``executed``: the canary file appeared;
- ``crashed``: a traceback from ckptdiff, a signal, or running out of memory;
- ``hung``: still running at the time limit.

Usage: ``python -m bench.security [--timeout S] [--memory-gib G] [--bomb-mib M] [--only NAME]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from fixtures.hostile import CANARY, Case, write_corpus

_CHILD = r"""
import atexit, resource, sys
atexit.register(lambda: print(f"\nMAXRSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}",
                              file=sys.stderr))
if sys.argv[1] == "torch":
    import torch
    torch.load(sys.argv[2], weights_only=True, map_location="cpu")
else:
    from ckptdiff.cli import main
    main(["inspect", sys.argv[2]], prog_name="ckptdiff")
"""


@dataclass
class Run:
    """One tool on one file."""

    outcome: str
    seconds: float
    peak_mib: float
    detail: str


def _limits(memory: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_one(tool: str, path: Path, canary: Path, timeout: float, memory: int) -> Run:
    """Read ``path`` with ``tool`` (``ckptdiff`` or ``torch``) in a limited subprocess."""
    if canary.exists():
        canary.unlink()
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, tool, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=lambda: _limits(memory),
            cwd=path.parent,
        )
    except subprocess.TimeoutExpired:
        return Run("hung", time.perf_counter() - start, 0.0, f"still running after {timeout:g} s")
    seconds = time.perf_counter() - start
    err = proc.stderr
    peak = 0.0
    if "MAXRSS " in err:
        peak = int(err.rsplit("MAXRSS ", 1)[1].split()[0]) / 1024
        err = err.rsplit("MAXRSS ", 1)[0]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    detail = lines[-1][:160] if lines else ""
    if canary.exists():
        canary.unlink()
        return Run("executed", seconds, peak, detail)
    if proc.returncode < 0 or "MemoryError" in err:
        return Run("crashed", seconds, peak, detail or f"signal {-proc.returncode}")
    if tool == "ckptdiff":
        if "Traceback" in err:
            return Run("crashed", seconds, peak, detail)
        outcome = {0: "read", 1: "read", 2: "error", 3: "flagged"}.get(proc.returncode, "crashed")
        if outcome == "flagged" and not detail:
            detail = next((ln for ln in proc.stdout.splitlines() if "[security]" in ln), "")
        return Run(outcome, seconds, peak, detail.strip()[:160])
    if proc.returncode == 0:
        return Run("read", seconds, peak, "")
    flagged = "Weights only load failed" in err and "global" in err.lower()  # allow-list refusal
    return Run("flagged" if flagged else "error", seconds, peak, detail)


def main(argv: list[str] | None = None) -> int:
    """Write the corpus, run both readers on it, print the table and totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per file and tool")
    parser.add_argument("--memory-gib", type=float, default=8.0, help="address-space cap")
    parser.add_argument("--bomb-mib", type=int, default=1024, help="zip bomb inflated size")
    parser.add_argument("--only", help="only cases whose name contains this")
    args = parser.parse_args(argv)
    memory = int(args.memory_gib * (1 << 30))
    rows = []
    groups: dict[str, list[tuple[Run, Run | None]]] = {}
    totals: dict[str, Counter[str]] = {"ckptdiff": Counter(), "torch": Counter()}
    payloads: dict[str, Counter[str]] = {"ckptdiff": Counter(), "torch": Counter()}
    with tempfile.TemporaryDirectory(prefix="ckptdiff-hostile-") as tmp:
        pairs = write_corpus(tmp, bomb_size=args.bomb_mib << 20)
        canary = Path(tmp) / CANARY
        for case, path in pairs:
            if args.only and args.only not in case.name:
                continue
            ours = run_one("ckptdiff", path, canary, args.timeout, memory)
            theirs = (
                run_one("torch", path, canary, args.timeout, memory) if case.torch_applies else None
            )
            rows.append(_row(case, ours, theirs))
            groups.setdefault(case.group, []).append((ours, theirs))
            totals["ckptdiff"][ours.outcome] += 1
            if theirs is not None:
                totals["torch"][theirs.outcome] += 1
            if case.group == "payload":
                payloads["ckptdiff"][ours.outcome] += 1
                if theirs is not None:
                    payloads["torch"][theirs.outcome] += 1
            print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(tabulate(rows, headers=["file", "what", "ckptdiff", "torch weights_only"]))
    print()
    print(
        tabulate(_group_rows(groups), headers=["group", "files", "ckptdiff", "torch weights_only"])
    )
    print()
    outcomes = ["flagged", "read", "error", "executed", "crashed", "hung"]
    print(
        tabulate(
            [[tool, sum(c.values()), *(c[o] for o in outcomes)] for tool, c in totals.items()],
            headers=["totals", "files", *outcomes],
        )
    )
    print()
    print(
        tabulate(
            [[tool, sum(c.values()), *(c[o] for o in outcomes)] for tool, c in payloads.items()],
            headers=["payload files", "files", *outcomes],
        )
    )
    return 1 if totals["ckptdiff"]["executed"] or totals["ckptdiff"]["crashed"] else 0


def _group_rows(groups: dict[str, list[tuple[Run, Run | None]]]) -> list[list[object]]:
    """Per corpus group: how each tool answered (``3 flagged, 1 error``)."""

    def summary(runs: list[Run]) -> str:
        counts = Counter(r.outcome for r in runs)
        return ", ".join(f"{n} {o}" for o, n in counts.most_common()) or "n/a (folders)"

    return [
        [
            group,
            len(pairs),
            summary([o for o, _ in pairs]),
            summary([t for _, t in pairs if t is not None]),
        ]
        for group, pairs in groups.items()
    ]


def _cell(run: Run | None) -> str:
    if run is None:
        return "n/a (a folder)"
    mem = f", {run.peak_mib:,.0f} MiB" if run.peak_mib >= 200 else ""
    return f"{run.outcome} ({run.seconds:.1f} s{mem})"


def _row(case: Case, ours: Run, theirs: Run | None) -> list[object]:
    from ckptdiff.terminal import printable

    return [printable(case.name), printable(case.what[:58]), _cell(ours), _cell(theirs)]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
