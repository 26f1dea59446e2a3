"""The full sweep (``make sweep``): every buildable transformers architecture, mutated, checked
with ``ckptdiff check --emit-config``, judged by transformers alone; prints the figures.

    python -m tests.sweep.run                       # the full sweep
    python -m tests.sweep.run --only qwen2 --only llama
    python -m tests.sweep.run --arch qwen2/Qwen2ForCausalLM --mutation num_hidden_layers=3 \\
        --keep /tmp/case                            # one case, its files kept to rerun by hand

Architectures: every transformers model type whose class builds on meta from a small config,
and the open_clip-style factory ``fixtures.models:build_clip`` (open_clip and timm cannot be
imported beside this torch); one class per model type (its task class where it has one;
``--all-classes`` adds the base models). Cases per architecture: the first mutation of
``--kinds`` kinds (width, width_heads, layers, vocab, intermediate, positions, kv_heads, heads,
image, patch, classes), turning through the kinds from one architecture to the next, plus the
shape-invisible one (rope, dropout); ``--kinds 0`` takes every kind. ``--combos N`` adds N
combinations of one to three mutations drawn by hypothesis with a fixed seed.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.sweep.archs import CLIP_FACTORY, Arch, buildable, cache_path
from tests.sweep.case import PROBLEMS, WRONG_VERIFIED, Outcome, run_case
from tests.sweep.mutate import Mutation, candidates, combine, mutations
from tests.sweep.oracle import BuildError

__all__ = ["Figures", "cases_for", "main", "sweep"]


def first_of_each_kind(pool: list[Mutation]) -> list[Mutation]:
    seen: dict[str, Mutation] = {}
    for m in pool:
        seen.setdefault(m.kind, m)
    return list(seen.values())


def drawn(arch: Arch, n: int, seed: int = 0) -> list[Mutation]:
    """``n`` combinations drawn by hypothesis, the same on every run."""
    if n <= 0 or not candidates(arch.config, arch.class_name):
        return []
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    found: list[Mutation] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutations(arch.config, arch.class_name))
    def collect(m: Mutation) -> None:
        if m not in found:
            found.append(m)

    collect()
    return found[:n]


def one_class_per_type(archs: list[Arch]) -> list[Arch]:
    """The last buildable class of each model type: its task class where it has one (the
    enumeration lists the base model first)."""
    last: dict[str, Arch] = {}
    for a in archs:
        last[a.model_type] = a
    return list(last.values())


def cases_for(
    arch: Arch, index: int = 0, kinds: int = 0, combos: int = 0, every: bool = False
) -> list[Mutation]:
    """The mutations of the ``index``-th architecture: the first of each kind (every mutation
    with ``every``), or with ``kinds`` > 0 that many kinds, turning through the kinds from one
    architecture to the next (so each kind meets a share of all architectures), plus the
    ``invisible`` one; then ``combos`` drawn combinations."""
    pool = candidates(arch.config, arch.class_name)
    singles = pool if every else first_of_each_kind(pool)
    if kinds > 0 and not every:
        visible = [m for m in singles if m.kind != "invisible"]
        chosen = [visible[(index + j) % len(visible)] for j in range(min(kinds, len(visible)))]
        singles = [m for m in singles if m in chosen or m.kind == "invisible"]
    extra = [m for m in drawn(arch, combos) if "+" in m.kind and m not in singles]
    return singles + extra


class Figures:
    """Counts over the outcomes: cases, wrong verified claims, misfits, missed fixes..."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.invalid: list[tuple[str, str, str]] = []  # (arch, mutation, why it does not build)
        self.harness_errors: list[tuple[str, str, str]] = []

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if kind in o.kinds)

    def summary(self) -> dict[str, Any]:
        return {
            "cases": len(self.outcomes),
            "architectures": len({o.arch for o in self.outcomes}),
            "shapes_moved": sum(o.moved for o in self.outcomes),
            "with_verified": sum(bool(o.verified) for o in self.outcomes),
            "wrong_verified": sum(o.wrong_verified for o in self.outcomes),
            "emitted_misfit": self.count("emitted_misfit"),
            "missed_fix": self.count("missed_fix"),
            "undetermined": self.count("undetermined"),
            "false_alarm": self.count("false_alarm"),
            "error": self.count("error"),
            "by_problem": {k: self.count(k) for k in PROBLEMS},
            "invalid_mutations": len(self.invalid),
            "harness_errors": len(self.harness_errors),
        }


def limit_memory(gib: float) -> None:
    """Cap this process's address space: a case that would take the machine's memory fails
    with MemoryError (a harness error, reported) instead of waking the OOM killer."""
    import resource

    if gib > 0:
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def sweep_one(task: tuple[Arch, int, int, int, bool]) -> tuple[list[Outcome], list[Any], list[Any]]:
    """Every case of one architecture: ``(outcomes, invalid mutations, harness errors)``."""
    arch, index, kinds, combos, every = task
    outcomes: list[Outcome] = []
    invalid: list[tuple[str, str, str]] = []
    errors: list[tuple[str, str, str]] = []
    for mutation in cases_for(arch, index, kinds, combos, every):
        try:
            outcomes.append(run_case(arch, mutation))
        except BuildError as e:
            invalid.append((arch.name, mutation.label, str(e)))
        except Exception as e:  # the harness itself: reported, never hidden
            errors.append((arch.name, mutation.label, f"{type(e).__name__}: {e}"))
        import torch

        if torch.empty(0).device.type != "cpu":
            errors.append((arch.name, mutation.label, "the default device is left on meta"))
    return outcomes, invalid, errors


ARCH_SECONDS = 1800.0


def _each(iterator: Any, n: int) -> Iterator[Any]:
    """The pool's results in order; a worker that died (its architecture's result never comes)
    ends the sweep with what it has instead of waiting forever."""
    for _ in range(n):
        try:
            yield iterator.next(timeout=ARCH_SECONDS)
        except TimeoutError:
            _log(f"no result in {ARCH_SECONDS:g} s (a worker died?): the sweep stops here")
            return


def sweep(
    archs: Iterable[Arch],
    kinds: int = 0,
    combos: int = 0,
    every: bool = False,
    log: Callable[[str], None] | None = None,
    progress: Callable[[Figures], None] | None = None,
    jobs: int = 1,
    memory_gib: float = 8.0,
) -> Figures:
    """Run every case of ``archs`` (in ``jobs`` processes), logging every 25 architectures."""
    figures = Figures()
    archs = list(archs)
    tasks = [(arch, i, kinds, combos, every) for i, arch in enumerate(archs)]
    start = time.perf_counter()
    pool = None
    if jobs > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(
            jobs, initializer=limit_memory, initargs=(memory_gib,)
        )
        results: Iterable[Any] = _each(pool.imap(sweep_one, tasks), len(tasks))
    else:
        limit_memory(memory_gib)
        results = map(sweep_one, tasks)
    try:
        for i, (outcomes, invalid, errors) in enumerate(results):
            figures.outcomes += outcomes
            figures.invalid += invalid
            figures.harness_errors += errors
            if log and ((i + 1) % 25 == 0 or i + 1 == len(archs)):
                s = figures.summary()
                log(
                    f"[{time.perf_counter() - start:6.0f}s] {i + 1}/{len(archs)} architectures, "
                    f"{s['cases']} cases, {s['wrong_verified']} wrong verified, "
                    f"{s['emitted_misfit']} misfit, {s['missed_fix']} missed"
                )
                if progress:
                    progress(figures)
    finally:
        if pool is not None:
            pool.terminate()
    return figures


def print_figures(
    figures: Figures, skipped: list[Any], seconds: float, out: Any = sys.stdout
) -> None:
    s = figures.summary()
    w = out.write
    w(
        f"\nckptdiff sweep: {s['architectures']} architectures, {s['cases']} cases "
        f"({s['shapes_moved']} moved shapes), {seconds:.0f} s\n"
    )
    w(f"  wrong verified claims:          {s['wrong_verified']}\n")
    w(f"  emitted configs that do not fit: {s['emitted_misfit']}\n")
    w(f"  missed fixes:                   {s['missed_fix']}\n")
    w(f"  said undetermined, config fits: {s['undetermined']}\n")
    w(f"  false alarms (fits, not ok):    {s['false_alarm']}\n")
    w(f"  errors from check:              {s['error']}\n")
    w("  by class: " + ", ".join(f"{k} {v}" for k, v in s["by_problem"].items() if v) + "\n")
    w(f"  mutations that do not build (not cases): {s['invalid_mutations']}\n")
    if figures.harness_errors:
        w(f"  harness errors: {len(figures.harness_errors)}\n")
        for arch, label, why in figures.harness_errors[:10]:
            w(f"    {arch} {label}: {why[:200]}\n")
    reasons = collections.Counter(_reason(sk.reason) for sk in skipped)
    w(f"  skipped architectures: {len(skipped)} (no small config builds on meta)\n")
    for reason, n in reasons.most_common():
        w(f"    {n:4d}  {reason}\n")


def _reason(text: str) -> str:
    """The last attempt's reason, shortened to its class of failure."""
    last = text.split("; defaults: ")[-1]
    if "requires the" in last:
        return "needs a library not installed here: " + last.split("requires the ")[1].split()[0]
    return last[:90]


def findings_markdown(figures: Figures, command: str) -> str:
    """The findings grouped by class of bug: architecture, mutation, claim, truth, command."""
    s = figures.summary()
    lines = [
        "# ckptdiff sweep findings",
        "",
        f"From `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{s['cases']} cases over {s['architectures']} architectures; {s['wrong_verified']} "
        f"with a wrong verified claim, {s['emitted_misfit']} emitted configs that do not fit, "
        f"{s['missed_fix']} missed fixes, {s['undetermined']} said undetermined (the config "
        f"fits), {s['false_alarm']} false alarms, {s['error']} errors.",
        "",
        "Reproduce one case (files kept in the folder, the ckptdiff command printed):",
        "`.venv/bin/python -m tests.sweep.run --arch TYPE/Class --mutation path=value --keep DIR`",
        "",
    ]
    for kind, meaning in PROBLEMS.items():
        hits = [o for o in figures.outcomes if kind in o.kinds]
        if not hits:
            continue
        flag = " (wrong verified claim)" if kind in WRONG_VERIFIED else ""
        lines += [f"## {kind}{flag}: {len(hits)} cases", "", meaning + ".", ""]
        by_mutation: dict[str, list[Outcome]] = collections.defaultdict(list)
        for o in hits:
            by_mutation[o.mutation.split("(")[0]].append(o)
        for mkind, group in sorted(by_mutation.items(), key=lambda kv: -len(kv[1])):
            archs = sorted({o.arch for o in group})
            lines.append(f"### mutation `{mkind}`: {len(group)} cases, {len(archs)} architectures")
            lines.append("")
            lines.append(
                "Architectures: " + ", ".join(archs[:40]) + (" ..." if len(archs) > 40 else "")
            )
            lines.append("")
            for o in group[:4]:
                detail = "; ".join(p.detail for p in o.problems if p.kind == kind)
                claimed = (
                    ", ".join(f"{v['kind']} {v['field']}={v['suggested']!r}" for v in o.verified)
                    or "nothing verified"
                )
                lines.append(f"- {o.arch} `{o.mutation}`: claimed {claimed}; {detail}")
                lines.append(f"  - `{_repro(o)}`")
            lines.append("")
    return "\n".join(lines) + "\n"


def _repro(o: Outcome) -> str:
    changes = o.mutation[o.mutation.index("(") + 1 : -1].split(", ")
    args = " ".join(f"--mutation {c}" for c in changes)
    return f".venv/bin/python -m tests.sweep.run --arch {o.arch} {args} --keep /tmp/case"


def _parse_mutation(items: list[str]) -> Mutation:
    changes = []
    for item in items:
        path, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.strip("'\"")
        changes.append((path, value))
    return combine([Mutation("given", tuple(changes))])


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.sweep.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", action="append", default=[], help="model types to sweep")
    p.add_argument("--arch", help="one architecture, TYPE/Class")
    p.add_argument("--mutation", action="append", default=[], help="path=value (with --arch)")
    p.add_argument("--keep", help="with --arch: the folder to keep the case's files in")
    p.add_argument("--combos", type=int, default=0, help="drawn combinations per architecture")
    p.add_argument(
        "--kinds",
        type=int,
        default=1,
        help="mutation kinds per architecture, turning from one to the next, plus "
        "the shape-invisible one (0: every kind)",
    )
    p.add_argument("--every", action="store_true", help="every mutation, not one per kind")
    p.add_argument("--jobs", type=int, default=1, help="processes (the machine is shared)")
    p.add_argument(
        "--memory-gib",
        type=float,
        default=8.0,
        help="address-space cap of each sweeping process (0: none)",
    )
    p.add_argument("--stride", type=int, default=1, help="every Nth architecture only")
    p.add_argument(
        "--all-classes",
        action="store_true",
        help="the base and the task class of each model type (default: one class "
        "per model type, the task class where there is one)",
    )
    p.add_argument("--refresh", action="store_true", help="re-probe the buildable architectures")
    p.add_argument("--findings", help="write the findings grouped by class to this markdown file")
    p.add_argument("--results", help="write every outcome as JSON to this file")
    p.add_argument("--notes", help="markdown put at the end of the findings file")
    args = p.parse_args(argv)
    # a terminated sweep takes its worker processes with it (the pool's finally)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    enumeration = buildable(refresh=args.refresh, log=_log)
    archs = enumeration.archs
    if args.arch == CLIP_FACTORY.name:
        archs = [*archs, CLIP_FACTORY]
    if args.arch:
        arch = next((a for a in archs if a.name == args.arch), None)
        if arch is None:
            print(f"no buildable architecture {args.arch} (see {cache_path()})", file=sys.stderr)
            return 2
        mutation_list = (
            [_parse_mutation(args.mutation)]
            if args.mutation
            else cases_for(arch, 0, 0, args.combos, args.every)
        )
        for m in mutation_list:
            outcome = run_case(arch, m, args.keep)
            print(json.dumps(outcome.to_dict(), indent=1, default=str))
        return 0
    if args.only:
        archs = [a for a in archs if a.model_type in set(args.only)]
    if not args.all_classes:
        archs = one_class_per_type(archs)
    if not args.only or CLIP_FACTORY.model_type in args.only:
        archs = [*archs, CLIP_FACTORY]
    archs = archs[:: max(args.stride, 1)]
    command = "python -m tests.sweep.run " + " ".join(argv if argv is not None else sys.argv[1:])

    def save(figures: Figures, done: bool = False) -> None:
        if args.findings:
            text = findings_markdown(figures, command.strip())
            if not done:
                note = f"(in progress: {len(figures.outcomes)} cases so far)"
                text = text.replace("\n\n", f"\n\n{note}\n\n", 1)
            if args.notes and Path(args.notes).is_file():
                text += "\n" + Path(args.notes).read_text(encoding="utf-8")
            Path(args.findings).write_text(text, encoding="utf-8")
        if args.results:
            Path(args.results).write_text(
                json.dumps(
                    {
                        "summary": figures.summary(),
                        "outcomes": [o.to_dict() for o in figures.outcomes],
                        "invalid": figures.invalid,
                        "harness_errors": figures.harness_errors,
                    },
                    indent=1,
                    default=str,
                ),
                encoding="utf-8",
            )

    start = time.perf_counter()
    figures = sweep(
        archs,
        args.kinds,
        args.combos,
        args.every,
        log=_log,
        progress=save,
        jobs=args.jobs,
        memory_gib=args.memory_gib,
    )
    seconds = time.perf_counter() - start
    print_figures(figures, enumeration.skipped, seconds)
    save(figures, done=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
