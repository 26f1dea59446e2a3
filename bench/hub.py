"""``python -m bench.hub`` (part of ``make bench``): auditing a big repo costs a few headers.

The test suite's hub server (tests/readers/hub/server.py) serves a simulated 8-shard Llama repo of
about 16 GB: real safetensors headers, an index, config.json and tokenizer.json, and tensor data
that is declared but never made (zeros would be generated only for ranges actually asked for).
``ckptdiff audit`` runs as a whole process with ``HF_ENDPOINT`` pointed at the server and an
empty ``HF_HUB_CACHE``, then again with the small files cached. The server's own counters say
what crossed the wire.

Goals: bytes transferred <= 0.001% of the weight bytes; one request per shard plus the small
files (repo info, index, config, tokenizer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from tabulate import tabulate

from tests.readers.hub.repos import synthetic_llama
from tests.readers.hub.server import HubServer

REPO = "bench/llama-16g"
SHARDS = 8
PY = sys.executable
CKPTDIFF = os.path.join(os.path.dirname(PY), "ckptdiff")


def _run(url: str, cache: str) -> tuple[float, dict[str, object], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=url, HF_HUB_CACHE=cache, HF_HOME=os.path.join(cache, "home"))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [CKPTDIFF, "audit", f"hf://{REPO}", "--format", "json", "--stats"],
        capture_output=True,
        text=True,
        env=env,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench.hub: ckptdiff audit exited {proc.returncode}: {proc.stderr}")
    return elapsed, json.loads(proc.stdout), proc.stderr.strip()


def main() -> None:
    files, weight_bytes = synthetic_llama(SHARDS)
    server = HubServer()
    url = server.start()
    server.add_repo(REPO, files)
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    small = sorted(n for n in files if not n.endswith(".safetensors"))
    print(
        f"ckptdiff bench (hub): audit of hf://{REPO}, {SHARDS} shards, "
        f"{weight_bytes / 1e9:.1f} GB of bfloat16 weights, served on {url}",
        flush=True,
    )
    rows = []
    try:
        with tempfile.TemporaryDirectory() as cache:
            for label in ("cold cache", "warm cache (small files cached)"):
                server.reset()
                seconds, report, stats = _run(url, cache)
                requests = server.requests(REPO)
                sent = server.bytes(REPO)
                header_bytes = sum(server.bytes(REPO, s) for s in shards)
                per_shard = max(server.requests(REPO, s) for s in shards)
                small_requests = requests - sum(server.requests(REPO, s) for s in shards)
                rows.append(
                    [
                        label,
                        f"{sent:,} B",
                        f"{100 * sent / weight_bytes:.5f}%",
                        f"{100 * header_bytes / weight_bytes:.5f}%",
                        requests,
                        f"{per_shard} per shard + {small_requests}",
                        f"{seconds:.2f} s",
                        "consistent" if report["ok"] else "findings",
                    ]
                )
                print(f"  {label}: {stats}", flush=True)
    finally:
        server.stop()
    headers = [
        "run",
        "bytes sent",
        "of weights",
        "from weights files",
        "requests",
        "breakdown",
        "wall time",
        "verdict",
    ]
    print(tabulate(rows, headers, tablefmt="github"))
    cold = rows[0]
    share = float(str(cold[2]).rstrip("%"))
    weights_share = float(str(cold[3]).rstrip("%"))
    per = int(str(cold[5]).split()[0])
    print(
        f"goals: bytes <= 0.001% of weights: from the weights files {cold[3]} "
        f"({'met' if weights_share <= 0.001 else 'MISSED'}); all files {cold[2]} "
        f"({'met' if share <= 0.001 else 'MISSED'}: the small files, fetched whole once, "
        f"are {', '.join(small)}); one request per shard: "
        f"{'met' if per <= 1 else 'MISSED'} ({cold[5]})"
    )


if __name__ == "__main__":
    main()
