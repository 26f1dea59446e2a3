"""The saved layout: what ``save_pretrained`` writes, checked against the model that loads it.

transformers 5 renames, merges and splits weights at load time and reverts that on save
(``revert_weight_conversion``): Mllama's ``language_model.model.*``, MoE experts stored one
tensor per expert, legacy names. For every buildable architecture, the model is built on meta,
its state dict passed through what ``save_pretrained`` does to it (tied weights removed, the
conversion reverted), and the result written as a checkpoint. ``from_pretrained`` loads it, so
``ckptdiff check`` must call it compatible.

    python -m tests.sweep.saved            # every model type whose saved layout differs
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.sweep.archs import Arch, buildable
from tests.sweep.case import command_line, run_check
from tests.sweep.ckpt import write_safetensors
from tests.sweep.oracle import BuildError, Shapes, build_model, quiet, shapes_of

__all__ = ["SavedOutcome", "check_saved", "saved_layout"]


def saved_layout(arch: Arch) -> tuple[Shapes, Shapes]:
    """``(module layout, saved layout)`` of ``arch``: the model's ``state_dict()`` and what
    ``save_pretrained`` would write from it (tied weights removed, conversions reverted).

    Raises:
        BuildError: the model does not build, or the reversal fails on meta tensors.
    """
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    model = build_model(arch.class_name, arch.original())
    state = model.state_dict()
    module = shapes_of(model)
    try:
        with quiet():
            state = remove_tied_weights_from_state_dict(state, model)
            saved = revert_weight_conversion(model, dict(state))
    except Exception as e:
        raise BuildError(f"revert: {type(e).__name__}: {e}") from e
    return module, {
        k: (tuple(int(n) for n in t.shape), str(t.dtype).removeprefix("torch."))
        for k, t in saved.items()
    }


def renamed(module: Shapes, saved: Shapes) -> bool:
    """True when the saved layout has keys or shapes the module layout has not."""
    return any(module.get(k) != v for k, v in saved.items())


@dataclass
class SavedOutcome:
    arch: str
    exit_code: int
    ok: bool
    detail: str
    reproduce: str


def check_saved(arch: Arch, saved: Shapes, workdir: str) -> SavedOutcome:
    """``ckptdiff check`` of the saved layout against the architecture's own config."""
    folder = Path(workdir)
    config_path = str(folder / "config.json")
    ckpt = str(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(arch.original(), indent=1), encoding="utf-8")
    write_safetensors(ckpt, saved)
    args = arch.model_args(config_path)
    code, report, stderr = run_check(ckpt, args, str(folder / "emitted.json"))
    repro = command_line(ckpt, args, str(folder / "emitted.json"))
    if report is None:
        return SavedOutcome(arch.name, code, False, f"error: {stderr.strip()[:200]}", repro)
    counts = report.get("counts", {})
    detail = ", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "matched")
    return SavedOutcome(arch.name, code, code == 0 and bool(report.get("ok")), detail, repro)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.sweep.saved",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", action="append", default=[], help="model types to check")
    p.add_argument("--keep", help="keep each case's files under this folder")
    p.add_argument("--results", help="write the outcomes as JSON to this file")
    p.add_argument(
        "--all-classes",
        action="store_true",
        help="the base and the task class of each model type (default: one class)",
    )
    args = p.parse_args(argv)
    from tests.sweep.run import limit_memory, one_class_per_type

    limit_memory(8.0)
    archs = buildable().archs
    if not args.all_classes:
        archs = one_class_per_type(archs)
    if args.only:
        archs = [a for a in archs if a.model_type in set(args.only)]
    outcomes: list[SavedOutcome] = []
    unbuilt: list[tuple[str, str]] = []
    for arch in archs:
        try:
            module, saved = saved_layout(arch)
        except BuildError as e:
            unbuilt.append((arch.name, str(e)[:200]))
            continue
        if not renamed(module, saved):
            continue
        if args.keep:
            folder = Path(args.keep) / arch.name.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            outcomes.append(check_saved(arch, saved, str(folder)))
        else:
            with tempfile.TemporaryDirectory(prefix="ckptdiff-saved-") as tmp:
                outcomes.append(check_saved(arch, saved, tmp))
    passed = [o for o in outcomes if o.ok]
    print(
        f"saved layout: {len(archs)} architectures, {len(outcomes)} save in another layout "
        f"than their modules; check says compatible for {len(passed)}, not for "
        f"{len(outcomes) - len(passed)}; {len(unbuilt)} could not be reverted on meta"
    )
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for o in outcomes:
        if not o.ok:
            groups[o.detail.split(",")[0] if o.detail else f"exit {o.exit_code}"].append(o.arch)
    for label, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print(
            f"  not compatible ({label}): {len(names)}: {', '.join(names[:12])}"
            + (" ..." if len(names) > 12 else "")
        )
    for name, why in unbuilt[:10]:
        print(f"  not reverted: {name}: {why}")
    if args.results:
        data: dict[str, Any] = {
            "outcomes": [o.__dict__ for o in outcomes],
            "unbuilt": unbuilt,
        }
        Path(args.results).write_text(json.dumps(data, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
