"""``make bench``: ckptdiff against the floor and against the tools people use, from one run.

Every row is measured in this one run, on this machine, on the same files: each measurement is
a whole process (interpreter start, imports, reading, printing to /dev/null), timed by wall
clock, with the peak resident memory of that child alone (``ru_maxrss`` from ``wait4``); the
best of N runs. Ratios within the run are what count; absolute numbers move with the machine.

Baselines are the cheapest honest way to get the same answer without ckptdiff:
- safetensors files: ``safe_open(path, "np")`` listing every key's shape (no torch import);
- torch files: ``torch.load(map_location="meta", weights_only=True, mmap=True)``, and the
  ``safe_open`` floor on the same tensors saved as safetensors;
- diffs: the same baselines on both files, then a comparison in Python.

Files (made once, kept in bench/out/): 2 GiB checkpoints (16 float16 tensors) in two versions
that differ in one tensor's shape and one dtype; 20,000- and 100,000-tensor checkpoints as
safetensors, torch zip and an 8-shard index; a 1,000,000-tensor safetensors file; MiniLM.
"""

from __future__ import annotations

import json
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
#: Fewer runs where one run takes seconds.
SLOW_RUNS = max(1, min(RUNS, 2))


@dataclass
class Result:
    seconds: float
    peak_mib: float


def measure(argv: Sequence[str], runs: int = RUNS, env: dict[str, str] | None = None) -> Result:
    """Best wall time and peak RSS of ``argv`` over ``runs`` runs (each must exit 0 or 1)."""
    best_t, best_m = float("inf"), float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        if code not in (0, 1):
            raise SystemExit(f"bench: {' '.join(argv)} exited {code}: {err[-2000:]}")
        best_t = min(best_t, elapsed)
        best_m = min(best_m, usage.ru_maxrss / 1024)
    return Result(best_t, best_m)


# --- the files ---------------------------------------------------------------------------------


def many_keys(n: int) -> list[str]:
    """``blocks.{i // 10}.sub{i % 10}.weight``: n keys with a layer index, as models name them."""
    return [f"blocks.{i // 10}.sub{i % 10}.weight" for i in range(n)]


def write_safetensors(path: str, tensors: Sequence[tuple[str, str, Sequence[int]]]) -> None:
    """A safetensors file of ``(key, dtype code, shape)`` entries and zero bytes, laid out as
    ``safetensors`` lays files out (entries by name, compact JSON padded to 8 bytes), written
    without building any tensor, so a million entries take seconds."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, code, shape in sorted(tensors):
        n = sizes[code]
        for d in shape:
            n *= d
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path + ".part", "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        chunk = b"\0" * (1 << 24)
        left = offset
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    os.replace(path + ".part", path)


def write_sharded(folder: str, keys: Sequence[str], shards: int) -> str:
    """An index and ``shards`` safetensors shards holding ``keys`` (4x4 float32 each)."""
    os.makedirs(folder, exist_ok=True)
    per = -(-len(keys) // shards)
    weight_map = {}
    total = 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s * per : (s + 1) * per]
        write_safetensors(os.path.join(folder, name), [(k, "F32", (4, 4)) for k in part])
        weight_map.update(dict.fromkeys(part, name))
        total += 64 * len(part)
    index = os.path.join(folder, "model.safetensors.index.json")
    with open(index, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return index


def paths() -> dict[str, str]:
    names = {
        "big.safetensors": "big.safetensors",
        "big2.safetensors": "big2.safetensors",
        "big.pt": "big.pt",
        "big2.pt": "big2.pt",
        "minilm.safetensors": "minilm.safetensors",
        "minilm_grown.safetensors": "minilm_grown.safetensors",
        "1m.safetensors": "1m.safetensors",
    }
    for n in (20_000, 100_000):
        names[f"{n}.safetensors"] = f"many{n}.safetensors"
        names[f"{n}b.safetensors"] = f"many{n}b.safetensors"
        names[f"{n}.pt"] = f"many{n}.pt"
        names[f"{n}.sharded"] = os.path.join(f"sharded{n}", "model.safetensors.index.json")
    return {k: os.path.join(OUT, v) for k, v in names.items()}


def make_files() -> dict[str, str]:
    """The benchmark files; written by a child process so this one stays small (a child's
    ``ru_maxrss`` starts from its parent's size at fork)."""
    p = paths()
    if not all(os.path.exists(q) for q in p.values()):
        subprocess.run([PY, "-m", "bench.run", "--make-files"], check=True)
    return p


def _write_files() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from ckptdiff.examples.files import minilm_dir

    os.makedirs(OUT, exist_ok=True)
    p = paths()
    big = [(f"layers.{i}.weight", "F16", (8192, 8192)) for i in range(16)]
    if not os.path.exists(p["big.safetensors"]):
        write_safetensors(p["big.safetensors"], big)
    if not os.path.exists(p["big2.safetensors"]):
        # another run of the same model: one layer wider, one in float32
        big2 = list(big)
        big2[3] = ("layers.3.weight", "F16", (8192, 8448))
        big2[7] = ("layers.7.weight", "F32", (8192, 4096))
        write_safetensors(p["big2.safetensors"], big2)
    for name, source in (("big.pt", "big.safetensors"), ("big2.pt", "big2.safetensors")):
        if not os.path.exists(p[name]):
            # torch.ones touches every page: the bytes are real, as in a trained checkpoint
            with open(p[source], "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            header.pop("__metadata__")
            dtypes = {"F16": torch.float16, "F32": torch.float32}
            sd = {
                k: torch.ones(*v["shape"], dtype=dtypes[v["dtype"]])
                for k, v in sorted(header.items(), key=lambda kv: int(kv[0].split(".")[1]))
            }
            torch.save(sd, p[name])
            del sd
    for n in (20_000, 100_000):
        keys = many_keys(n)
        if not os.path.exists(p[f"{n}.safetensors"]):
            write_safetensors(p[f"{n}.safetensors"], [(k, "F32", (4, 4)) for k in keys])
        if not os.path.exists(p[f"{n}b.safetensors"]):
            # the same model after a change: one block wider, one gone, one added
            other = [(k, "F32", (4, 4)) for k in keys[1:]]
            other[0] = (other[0][0], "F32", (4, 5))
            other.append(("head.weight", "F32", (4, 4)))
            write_safetensors(p[f"{n}b.safetensors"], other)
        if not os.path.exists(p[f"{n}.pt"]):
            torch.save({k: torch.zeros(4, 4) for k in keys}, p[f"{n}.pt"])
        if not os.path.exists(p[f"{n}.sharded"]):
            write_sharded(os.path.dirname(p[f"{n}.sharded"]), keys, 8)
    if not os.path.exists(p["1m.safetensors"]):
        write_safetensors(p["1m.safetensors"], [(k, "F32", (1,)) for k in many_keys(1_000_000)])
    if not os.path.exists(p["minilm_grown.safetensors"]):
        minilm = load_file(os.path.join(minilm_dir(), "model.safetensors"))
        save_file(minilm, p["minilm.safetensors"])
        emb = minilm["embeddings.word_embeddings.weight"]
        minilm["embeddings.word_embeddings.weight"] = torch.cat([emb, emb[:5]])
        save_file(minilm, p["minilm_grown.safetensors"])


# --- the baselines -----------------------------------------------------------------------------


def py(code: str, *args: str) -> list[str]:
    return [PY, "-c", code, *args]


#: The floor: safetensors' own Rust reader, through the numpy front end (torch never imported).
SAFE_OPEN_NP = """
import json, os, sys
from safetensors import safe_open
def specs(path):
    if path.endswith(".index.json"):
        folder = os.path.dirname(path)
        with open(path) as f:
            shards = dict.fromkeys(json.load(f)["weight_map"].values())
        out = {}
        for s in shards:
            out.update(specs(os.path.join(folder, s)))
        return out
    with safe_open(path, "np") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                for k in f.keys()}
sides = [specs(p) for p in sys.argv[1:]]
if len(sides) == 1:
    print(len(sides[0]))
else:
    a, b = sides
    print(sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)))
"""

TORCH_META = """
import sys, torch
sides = [torch.load(p, map_location="meta", weights_only=True, mmap=True) for p in sys.argv[1:]]
if len(sides) == 1:
    print(sum(1 for _ in sides[0]))
else:
    a, b = sides
    print(sorted(k for k in a.keys() | b.keys() if k not in a or k not in b
                 or a[k].shape != b[k].shape or a[k].dtype != b[k].dtype))
"""

#: Reading inside one process, after the imports: what "the reading itself" costs.
READ_IN_PROCESS = """
import sys, time
import ckptdiff.cli.inspect_cmd, ckptdiff.render.manifest  # noqa: F401,E401
from ckptdiff.readers import read
from ckptdiff.render.manifest import render_manifest
t = time.perf_counter()
render_manifest(read(sys.argv[1]))
print(time.perf_counter() - t)
"""


@dataclass
class Case:
    name: str
    ours: list[str]
    base_name: str
    base: list[str]
    goal: str
    #: ``(ours, base) -> met?`` or None when the row only informs
    judge: object = None
    runs: int = RUNS


def _ratio_within(limit: float):  # noqa: ANN202
    return lambda a, b: a.seconds <= limit * b.seconds


def cases(p: dict[str, str]) -> list[Case]:
    c = []
    for n, label in ((20_000, "20,000"), (100_000, "100,000")):
        runs = RUNS if n < 100_000 else SLOW_RUNS
        c.append(
            Case(
                f"inspect {label}-tensor .safetensors",
                [CKPTDIFF, "inspect", p[f"{n}.safetensors"]],
                "safe_open(np) listing every shape",
                py(SAFE_OPEN_NP, p[f"{n}.safetensors"]),
                "<= 1.2x the floor",
                _ratio_within(1.2),
                runs,
            )
        )
        c.append(
            Case(
                f"inspect {label}-tensor .safetensors --format json",
                [CKPTDIFF, "inspect", p[f"{n}.safetensors"], "--format", "json"],
                "safe_open(np) listing every shape",
                py(SAFE_OPEN_NP, p[f"{n}.safetensors"]),
                "<= 1.2x the floor",
                _ratio_within(1.2),
                runs,
            )
        )
        c.append(
            Case(
                f"inspect {label}-tensor .pt",
                [CKPTDIFF, "inspect", p[f"{n}.pt"]],
                "safe_open(np), same tensors as .safetensors",
                py(SAFE_OPEN_NP, p[f"{n}.safetensors"]),
                "<= 1.2x the floor",
                _ratio_within(1.2),
                runs,
            )
        )
        c.append(
            Case(
                f"inspect {label}-tensor .pt",
                [CKPTDIFF, "inspect", p[f"{n}.pt"]],
                "torch.load(meta, weights_only, mmap)",
                py(TORCH_META, p[f"{n}.pt"]),
                "",
                None,
                SLOW_RUNS,
            )
        )
        c.append(
            Case(
                f"inspect {label} tensors in 8 shards",
                [CKPTDIFF, "inspect", p[f"{n}.sharded"]],
                "safe_open(np) on each shard",
                py(SAFE_OPEN_NP, p[f"{n}.sharded"]),
                "<= 1.2x the floor",
                _ratio_within(1.2),
                runs,
            )
        )
    c.append(
        Case(
            "inspect 1,000,000-tensor .safetensors",
            [CKPTDIFF, "inspect", p["1m.safetensors"]],
            "safe_open(np) listing every shape",
            py(SAFE_OPEN_NP, p["1m.safetensors"]),
            "< 10 s, memory bounded",
            lambda a, b: a.seconds < 10,
            1,
        )
    )
    c.append(
        Case(
            "inspect 2 GiB .safetensors",
            [CKPTDIFF, "inspect", p["big.safetensors"]],
            "safe_open(np) listing every shape",
            py(SAFE_OPEN_NP, p["big.safetensors"]),
            "<= 1.2x the floor",
            _ratio_within(1.2),
        )
    )
    c.append(
        Case(
            "inspect 2 GiB .pt",
            [CKPTDIFF, "inspect", p["big.pt"]],
            "torch.load(meta, weights_only, mmap)",
            py(TORCH_META, p["big.pt"]),
            "",
            None,
            SLOW_RUNS,
        )
    )
    c.append(
        Case(
            "diff two MiniLM .safetensors (104 tensors)",
            [CKPTDIFF, "diff", p["minilm_grown.safetensors"], p["minilm.safetensors"]],
            "safe_open(np) both, compare",
            py(SAFE_OPEN_NP, p["minilm_grown.safetensors"], p["minilm.safetensors"]),
            "",
            None,
        )
    )
    c.append(
        Case(
            "diff two 20,000-tensor .safetensors",
            [CKPTDIFF, "diff", p["20000b.safetensors"], p["20000.safetensors"]],
            "safe_open(np) both, compare",
            py(SAFE_OPEN_NP, p["20000b.safetensors"], p["20000.safetensors"]),
            "",
            None,
        )
    )
    c.append(
        Case(
            "diff two different 2 GiB .safetensors",
            [CKPTDIFF, "diff", p["big2.safetensors"], p["big.safetensors"]],
            "safe_open(np) both, compare",
            py(SAFE_OPEN_NP, p["big2.safetensors"], p["big.safetensors"]),
            "",
            None,
        )
    )
    c.append(
        Case(
            "diff two different 2 GiB .pt",
            [CKPTDIFF, "diff", p["big2.pt"], p["big.pt"]],
            "torch.load(meta) both, compare",
            py(TORCH_META, p["big2.pt"], p["big.pt"]),
            "",
            None,
            SLOW_RUNS,
        )
    )
    return c


def _row(name: str, a: Result, base_name: str, b: Result, goal: str, met: bool | None) -> list:
    verdict = "" if met is None else ("met" if met else "**not met**")
    return [
        name,
        f"{a.seconds:.3f} s",
        f"{a.peak_mib:.0f} MiB",
        base_name,
        f"{b.seconds:.3f} s",
        f"{b.peak_mib:.0f} MiB",
        f"{a.seconds / b.seconds:.2f}x",
        f"{goal}: {verdict}" if goal else "",
    ]


def startup_rows(p: dict[str, str]) -> list[list[object]]:
    """``--help`` and ``inspect`` of a small file against ``python -c pass`` plus the reading."""
    py0 = measure([PY, "-c", "pass"])
    rows = []
    help_ = measure([CKPTDIFF, "--help"])
    rows.append(
        _row(
            "ckptdiff --help",
            help_,
            "python -c pass",
            py0,
            "<= +0.05 s",
            help_.seconds - py0.seconds <= 0.05,
        )
    )
    small = p["minilm.safetensors"]
    out = subprocess.run(py(READ_IN_PROCESS, small), capture_output=True, text=True, check=True)
    reading = float(out.stdout.strip())
    ins = measure([CKPTDIFF, "inspect", small])
    rows.append(
        _row(
            "inspect MiniLM .safetensors (104 tensors)",
            ins,
            f"python -c pass, + {reading * 1000:.1f} ms reading",
            py0,
            "<= +0.05 s + reading",
            ins.seconds - py0.seconds - reading <= 0.05,
        )
    )
    return rows


def main() -> None:
    load = os.getloadavg()
    print(
        f"ckptdiff bench: best of {RUNS} whole-process runs ({SLOW_RUNS} for multi-second "
        f"ones); files in {OUT}; {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start",
        flush=True,
    )
    p = make_files()
    headers = ["case", "ckptdiff", "peak", "baseline", "time", "peak", "time ratio", "goal"]
    rows = startup_rows(p)
    for case in cases(p):
        a = measure(case.ours, case.runs)
        b = measure(case.base, case.runs)
        met = None if case.judge is None else bool(case.judge(a, b))  # type: ignore[operator]
        rows.append(_row(case.name, a, case.base_name, b, case.goal, met))
        print(f"  {case.name}: {a.seconds:.3f} s vs {b.seconds:.3f} s", file=sys.stderr, flush=True)
    print(tabulate(rows, headers, tablefmt="github"))
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)
    subprocess.run([PY, "-m", "bench.pickle_floor"], check=True)
    subprocess.run([PY, "-m", "bench.check_cache"], check=True)
    subprocess.run([PY, "-m", "bench.targets"], check=True)
    subprocess.run([PY, "-m", "bench.hub"], check=True)
    subprocess.run([PY, "-m", "bench.forward"], check=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--make-files"]:
        _write_files()
    else:
        main()
