"""Target builds on meta vs on CPU: time and peak memory, each build a whole child process.

Run by ``make bench`` after the reader benchmark. Each child imports torch and the model code
first, then times one build (the import time, the same on both sides, is left out); peak memory
is the child's ``ru_maxrss``, so the difference between the sides is the weights.

A full Llama-3-8B CPU build needs ~16 GB and about a minute: the CPU baseline uses the same
config with 4 layers (2.0 B parameters, said in the table); the meta build is full size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tabulate import tabulate

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

CHILD = r"""
import json, sys, time
kind, arg, device = sys.argv[1], sys.argv[2], sys.argv[3]
import torch  # imports are paid before the clock starts, on both sides
if kind == "hf":
    import transformers.models.llama.modeling_llama  # noqa: F401
else:
    import fixtures.models  # noqa: F401
import ckptdiff.targets.meta, ckptdiff.targets.hf  # noqa: F401,E401
if device == "meta":
    from ckptdiff.targets import build_target
    t0 = time.perf_counter()
    build = (lambda: build_target(arg)) if kind == "hf" else (
        lambda: build_target("fixtures.models:build_clip", config=arg))
    n = build().parameter_count
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    build()
else:
    t0 = time.perf_counter()
    if kind == "hf":
        from transformers import AutoConfig, AutoModelForCausalLM
        cfg = AutoConfig.from_pretrained(arg)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    else:
        from fixtures.models import build_clip
        model = build_clip(**json.load(open(arg)))
    n = sum(p.numel() for p in model.state_dict().values())
    first = time.perf_counter() - t0
print(json.dumps({"seconds": time.perf_counter() - t0, "first": first, "parameters": n}))
"""


def child(kind: str, arg: str, device: str) -> tuple[float, float, int, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, arg, device],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"bench.targets: {kind} {device} failed: {err[-2000:]}")
    data = json.loads(out.decode().strip().splitlines()[-1])
    return data["seconds"], usage.ru_maxrss / 1024, data["parameters"], data["first"]


def main() -> None:
    out = os.path.join(os.path.dirname(__file__), "out")
    os.makedirs(os.path.join(out, "llama3-8b"), exist_ok=True)
    os.makedirs(os.path.join(out, "llama3-8b-4l"), exist_ok=True)
    with open(os.path.join(out, "llama3-8b", "config.json"), "w") as f:
        json.dump(LLAMA3_8B, f)
    with open(os.path.join(out, "llama3-8b-4l", "config.json"), "w") as f:
        json.dump({**LLAMA3_8B, "num_hidden_layers": 4}, f)
    vit = os.path.join(
        os.path.dirname(os.path.dirname(__file__)),
        "fixtures",
        "configs",
        "open_clip",
        "ViT-L-14.json",
    )
    cases = [
        (
            "Llama-3-8B config (transformers)",
            "hf",
            os.path.join(out, "llama3-8b"),
            os.path.join(out, "llama3-8b-4l"),
            "< 1 s",
        ),
        ("ViT-L/14 factory (open_clip-style)", "factory", vit, vit, "< 0.3 s"),
    ]
    rows = []
    for name, kind, meta_arg, cpu_arg, goal in cases:
        mt = min((child(kind, meta_arg, "meta") for _ in range(3)), key=lambda r: r[0])
        ct = child(kind, cpu_arg, "cpu")
        rows.append(
            [
                name,
                f"{mt[2] / 1e9:.2f} B",
                f"{mt[0]:.3f} s",
                f"{mt[3]:.3f} s",
                f"{mt[1]:.0f} MiB",
                f"{ct[2] / 1e9:.2f} B",
                f"{ct[0]:.2f} s",
                f"{ct[1]:.0f} MiB",
                goal,
            ]
        )
    print()
    print("Target builds (build time inside the process; peak = whole process). 'first meta'")
    print("includes torch's one-time import of its meta kernels on the first meta op.")
    print(
        tabulate(
            rows,
            [
                "target",
                "params",
                "meta build",
                "first meta",
                "meta peak",
                "CPU params",
                "CPU build",
                "CPU peak",
                "goal (meta)",
            ],
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
