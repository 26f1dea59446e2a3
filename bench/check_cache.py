"""``python -m bench.check_cache`` (part of ``make bench``): a repeated ``check`` of MiniLM
against its transformers config, with the target cache empty and then holding the target.

Each run is a whole process (best of N; peak RSS of that child). The baseline is what loading
needs before any weight moves: importing torch and transformers and building the model on meta.
Goal: the second check under 0.5 s, importing neither torch nor transformers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from tabulate import tabulate

from bench.run import CKPTDIFF, PY, RUNS, SLOW_RUNS, measure
from ckptdiff.examples.files import minilm_dir

BUILD_ON_META = (
    "import sys, torch, transformers\n"
    "config = transformers.AutoConfig.from_pretrained(sys.argv[1])\n"
    "with torch.device('meta'):\n"
    "    model = transformers.AutoModel.from_config(config)\n"
    "print(len(model.state_dict()))"
)

IMPORTS = (
    "import sys, json\nfrom ckptdiff.cli import main\nsys.argv = ['ckptdiff'] + sys.argv[1:]\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "print(json.dumps(['torch' in sys.modules, 'transformers' in sys.modules]), file=sys.stderr)"
)


def main() -> None:
    folder = str(minilm_dir())
    argv = ["check", folder, "--model", f"hf-config:{os.path.join(folder, 'config.json')}"]
    cache = tempfile.mkdtemp(prefix="ckptdiff-bench-cache-")
    env = {k: v for k, v in os.environ.items() if k != "CKPTDIFF_NO_CACHE"}
    env["CKPTDIFF_CACHE_DIR"] = cache
    try:
        cold = measure([CKPTDIFF, *argv, "--no-cache"], SLOW_RUNS, env=env)
        subprocess.run([CKPTDIFF, *argv], env=env, stdout=subprocess.DEVNULL, check=False)
        warm = measure([CKPTDIFF, *argv], RUNS, env=env)
        probe = subprocess.run(
            [PY, "-c", IMPORTS, *argv], env=env, capture_output=True, text=True, check=False
        )
        imported = probe.stderr.strip().splitlines()[-1]
        base = measure([PY, "-c", BUILD_ON_META, folder], SLOW_RUNS)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    rows = [
        [
            "check MiniLM vs hf-config, --no-cache",
            f"{cold.seconds:.3f} s",
            f"{cold.peak_mib:.0f} MiB",
            "",
        ],
        [
            "check MiniLM vs hf-config, target cached",
            f"{warm.seconds:.3f} s",
            f"{warm.peak_mib:.0f} MiB",
            f"< 0.5 s: {'met' if warm.seconds < 0.5 else '**not met**'}; "
            f"torch, transformers imported: {imported}",
        ],
        [
            "baseline: import torch, transformers; AutoModel on meta",
            f"{base.seconds:.3f} s",
            f"{base.peak_mib:.0f} MiB",
            "",
        ],
    ]
    print()
    print(f"Target cache (best of {RUNS} cached runs, {SLOW_RUNS} of the others; {sys.executable})")
    print(tabulate(rows, ["case", "time", "peak", "goal"], tablefmt="github"))


if __name__ == "__main__":
    main()
