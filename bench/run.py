"""``make bench``: ckptdiff against the tools people use today, as ratios from one run.

Each measurement is a whole process (interpreter start, imports, reading, printing), timed by
wall clock and measured for peak resident memory (``ru_maxrss`` of that child alone), the best
of N runs. Baselines run in the same session on the same files, so the ratios are what counts;
absolute numbers move with the machine.

Files (made once, kept in bench/out/):
- big.safetensors / big.pt: >= 2 GB in 16 tensors (float16), the cost-vs-bytes case;
- many.pt / many.safetensors: 20,000 small tensors, the per-tensor-overhead case.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tabulate import tabulate

OUT = os.path.join(os.path.dirname(__file__), "out")
PY = sys.executable
CKPTDIFF = os.path.join(os.path.dirname(PY), "ckptdiff")
RUNS = int(os.environ.get("BENCH_RUNS", "5"))


@dataclass
class Result:
    seconds: float
    peak_mib: float


def measure(argv: Sequence[str], runs: int = RUNS) -> Result:
    """Best wall time and peak RSS of ``argv`` over ``runs`` runs (each must exit 0 or 1)."""
    best_t, best_m = float("inf"), float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 1):
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"bench: {' '.join(argv)} exited {code}: {err}")
        if proc.stderr:
            proc.stderr.close()
        best_t = min(best_t, elapsed)
        best_m = min(best_m, usage.ru_maxrss / 1024)
    return Result(best_t, best_m)


NAMES = (
    "big.safetensors",
    "big.pt",
    "many.pt",
    "many.safetensors",
    "many2.safetensors",
    "minilm.safetensors",
    "minilm_grown.safetensors",
)


def make_files() -> dict[str, str]:
    """The benchmark files; written by a child process so this one stays small (a child's
    ``ru_maxrss`` starts from its parent's size at fork)."""
    paths = {n: os.path.join(OUT, n) for n in NAMES}
    if not all(os.path.exists(p) for p in paths.values()):
        subprocess.run([PY, "-m", "bench.run", "--make-files"], check=True)
    return paths


def _write_files() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from fixtures.examples import minilm_dir

    os.makedirs(OUT, exist_ok=True)
    paths = {n: os.path.join(OUT, n) for n in NAMES}
    if not all(os.path.exists(p) for p in paths.values()):
        # 16 x 8192 x 8192 float16 = 2 GiB; torch.ones touches every page so the bytes are real
        big = {f"layers.{i}.weight": torch.ones(8192, 8192, dtype=torch.float16) for i in range(16)}
        save_file(big, paths["big.safetensors"])
        torch.save(big, paths["big.pt"])
        del big
        many = {f"blocks.{i // 10}.sub{i % 10}.weight": torch.zeros(4, 4) for i in range(20_000)}
        torch.save(many, paths["many.pt"])
        save_file(many, paths["many.safetensors"])
        many2 = dict(many)
        many2["blocks.0.sub0.weight"] = torch.zeros(4, 5)
        save_file(many2, paths["many2.safetensors"])
        minilm = load_file(os.path.join(minilm_dir(), "model.safetensors"))
        save_file(minilm, paths["minilm.safetensors"])
        emb = minilm["embeddings.word_embeddings.weight"]
        minilm["embeddings.word_embeddings.weight"] = torch.cat([emb, emb[:5]])
        save_file(minilm, paths["minilm_grown.safetensors"])


def py(code: str) -> list[str]:
    return [PY, "-c", code]


TORCH_META = (
    "import sys, torch; sd = torch.load(sys.argv[1], map_location='meta', "
    "weights_only=True, mmap=True); print(sum(1 for _ in sd))"
)
SAFE_OPEN = (
    "import sys; from safetensors import safe_open\n"
    "with safe_open(sys.argv[1], 'pt') as f:\n"
    "    print(sum(len(f.get_slice(k).get_shape()) for k in f.keys()))"
)
TORCH_META_DIFF = (
    "import sys, torch\n"
    "a = torch.load(sys.argv[1], map_location='meta', weights_only=True, mmap=True)\n"
    "b = torch.load(sys.argv[2], map_location='meta', weights_only=True, mmap=True)\n"
    "print(sorted(k for k in a.keys() | b.keys() if k not in a or k not in b "
    "or a[k].shape != b[k].shape))"
)
SAFE_OPEN_DIFF = (
    "import sys; from safetensors import safe_open\n"
    "def specs(p):\n"
    "    with safe_open(p, 'pt') as f:\n"
    "        return {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) "
    "for k in f.keys()}\n"
    "a, b = specs(sys.argv[1]), specs(sys.argv[2])\n"
    "print(sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)))"
)


def reader_rows(p: dict[str, str]) -> list[list[object]]:
    rows = []
    cases = [
        (
            "inspect 2 GiB .pt",
            [CKPTDIFF, "inspect", p["big.pt"]],
            "torch.load(meta, weights_only, mmap)",
            py(TORCH_META) + [p["big.pt"]],
            "15x faster, < 100 MiB",
        ),
        (
            "inspect 2 GiB .safetensors",
            [CKPTDIFF, "inspect", p["big.safetensors"]],
            "safetensors safe_open",
            py(SAFE_OPEN) + [p["big.safetensors"]],
            "cost independent of bytes",
        ),
        (
            "inspect 20,000-tensor .pt",
            [CKPTDIFF, "inspect", p["many.pt"]],
            "torch.load(meta, weights_only, mmap)",
            py(TORCH_META) + [p["many.pt"]],
            "< 0.3 s",
        ),
        (
            "diff two MiniLM .safetensors (104 tensors)",
            [CKPTDIFF, "diff", p["minilm_grown.safetensors"], p["minilm.safetensors"]],
            "safe_open, both files, compare",
            py(SAFE_OPEN_DIFF) + [p["minilm_grown.safetensors"], p["minilm.safetensors"]],
            "< 0.15 s",
        ),
        (
            "diff two 20,000-tensor .safetensors",
            [CKPTDIFF, "diff", p["many.safetensors"], p["many2.safetensors"]],
            "safe_open, both files, compare",
            py(SAFE_OPEN_DIFF) + [p["many.safetensors"], p["many2.safetensors"]],
            "per-tensor cost (explains too)",
        ),
        (
            "diff two 2 GiB .pt",
            [CKPTDIFF, "diff", p["big.pt"], p["big.pt"]],
            "torch.load(meta) x2, compare",
            py(TORCH_META_DIFF) + [p["big.pt"], p["big.pt"]],
            "",
        ),
    ]
    for name, ours, base_name, base, goal in cases:
        a = measure(ours)
        b = measure(base)
        rows.append(
            [
                name,
                f"{a.seconds:.3f} s",
                f"{a.peak_mib:.0f} MiB",
                base_name,
                f"{b.seconds:.3f} s",
                f"{b.peak_mib:.0f} MiB",
                f"{b.seconds / a.seconds:.1f}x",
                f"{b.peak_mib / a.peak_mib:.1f}x",
                goal,
            ]
        )
    return rows


def startup_rows() -> list[list[object]]:
    t = measure([CKPTDIFF, "--help"])
    py0 = measure([PY, "-c", "pass"])
    return [
        [
            "ckptdiff --help",
            f"{t.seconds:.3f} s",
            f"{t.peak_mib:.0f} MiB",
            "python -c pass",
            f"{py0.seconds:.3f} s",
            f"{py0.peak_mib:.0f} MiB",
            "",
            "",
            "fast",
        ]
    ]


def main() -> None:
    print(f"ckptdiff bench: best of {RUNS} whole-process runs; files in {OUT}", flush=True)
    paths = make_files()
    sizes = {n: os.path.getsize(q) / 2**30 for n, q in paths.items()}
    print(", ".join(f"{n} {s:.2f} GiB" for n, s in sizes.items()), flush=True)
    headers = [
        "case",
        "ckptdiff",
        "peak",
        "baseline",
        "time",
        "peak",
        "speed-up",
        "memory ratio",
        "goal",
    ]
    rows = startup_rows() + reader_rows(paths)
    print(tabulate(rows, headers, tablefmt="github"))
    extra = os.path.join(os.path.dirname(__file__), "targets.py")
    if os.path.exists(extra):
        subprocess.run([PY, "-m", "bench.targets"], check=True)
    subprocess.run([PY, "-m", "bench.hub"], check=True)
    subprocess.run([PY, "-m", "bench.forward"], check=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--make-files"]:
        _write_files()
    else:
        main()
