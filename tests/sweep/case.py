"""One sweep case: mutate, write the checkpoint, run ``ckptdiff check`` as a user would, judge.

The judge uses transformers alone (:mod:`tests.sweep.oracle`), never ckptdiff:

- whenever anything is marked verified, the emitted config (``--emit-config``, applied as
  ``--config`` applies it: merged into the original ``config.json``) must rebuild a model
  whose ``state_dict`` keys and shapes equal the checkpoint's exactly;
- every verified config value must equal the truth: the mutated config's value of that
  field, read from the config object transformers builds (aliases such as ``n_embd`` /
  ``hidden_size`` resolve there);
- a field whose value shapes cannot tell (every other value that builds gives the same
  shapes: heads with a free head_dim, rope, dropout) is never verified;
- a checkpoint whose shapes did not move must be called compatible, with nothing verified;
- a checkpoint whose shapes moved has a fix (the mutation itself): one must be verified.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.sweep.archs import Arch
from tests.sweep.ckpt import write_safetensors
from tests.sweep.mutate import Mutation, apply
from tests.sweep.oracle import (
    BuildError,
    Shapes,
    build_config,
    build_model,
    deep_merge,
    get_path,
    quiet,
    set_path,
    shapes_of,
)

__all__ = [
    "PROBLEMS",
    "Case",
    "Outcome",
    "Problem",
    "is_verified",
    "judge",
    "make_case",
    "run_case",
    "run_check",
]

CHECK_SECONDS = float(os.environ.get("CKPTDIFF_SWEEP_CHECK_SECONDS", "60"))

# the classes of wrong answers, as the figures name them
PROBLEMS = {
    "wrong_value": "a verified config value differs from the truth",
    "wrong_call": "a verified call does not rebuild the checkpoint's shapes when made",
    "invisible_verified": "a field shapes cannot tell was marked verified",
    "verified_without_change": "something was verified on a checkpoint that already fits",
    "verified_key_map": "a key map was verified although no key was renamed",
    "unknown_field": "a verified field the config does not have",
    "emitted_misfit": "the emitted config does not rebuild the checkpoint's keys and shapes",
    "missed_fix": "the shapes moved, a fix exists, nothing was verified",
    "undetermined": "nothing verified: check said the shapes cannot tell the value (another "
    "value fits as well) and the config it emitted fits",
    "false_alarm": "the shapes did not move, check did not say compatible",
    "error": "check failed on a valid checkpoint and config",
    "timeout": "check took longer than the case's limit",
}
WRONG_VERIFIED = (
    "wrong_value",
    "wrong_call",
    "invisible_verified",
    "verified_without_change",
    "verified_key_map",
    "unknown_field",
)


class CaseTimeout(BaseException):
    """``check`` ran past the case's time limit (a BaseException: nothing may swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread after ``seconds``."""
    if seconds <= 0:
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Problem:
    kind: str
    detail: str


@dataclass
class Outcome:
    """What happened in one case, and what the judge found wrong with it."""

    arch: str
    mutation: str
    moved: bool
    exit_code: int | None = None
    verified: list[dict[str, Any]] = field(default_factory=list)
    emitted: bool = False
    problems: list[Problem] = field(default_factory=list)
    reproduce: str = ""
    seconds: float = 0.0

    @property
    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    @property
    def wrong_verified(self) -> bool:
        return bool(self.kinds & set(WRONG_VERIFIED))

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "mutation": self.mutation,
            "moved": self.moved,
            "exit_code": self.exit_code,
            "verified": self.verified,
            "emitted": self.emitted,
            "problems": [{"kind": p.kind, "detail": p.detail} for p in self.problems],
            "reproduce": self.reproduce,
            "seconds": round(self.seconds, 2),
        }


def is_verified(suggestion: dict[str, Any]) -> bool:
    """``status == "verified"`` where the report has a status, else ``verified is True``."""
    if "status" in suggestion:
        return suggestion["status"] == "verified"
    return suggestion.get("verified") is True


def run_check(
    ckpt: str, model_args: list[str], emit_path: str
) -> tuple[int, dict[str, Any] | None, str]:
    """``ckptdiff check CKPT --model hf-config:CONFIG --emit-config OUT --format json`` (or
    ``--model pkg.module:factory --config CONFIG``), run through the installed command's entry
    point in this process.

    Returns:
        ``(exit code, the JSON report or None, stderr text)``.
    """
    from click.testing import CliRunner

    from ckptdiff.cli import main

    args = ["check", ckpt, *model_args, "--emit-config", emit_path, "--format", "json"]
    # every case's config is new: ckptdiff's target cache would only fill up with them
    env = {"CKPTDIFF_NO_CACHE": "1"}
    result = CliRunner(env=env).invoke(main, args, catch_exceptions=True)
    stderr = result.stderr if result.stderr_bytes is not None else ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 2, None, f"{type(result.exception).__name__}: {result.exception}"
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    return result.exit_code, report, stderr


def command_line(ckpt: str, model_args: list[str], emit_path: str) -> str:
    return shlex.join(
        ["ckptdiff", "check", ckpt, *model_args, "--emit-config", emit_path, "--format", "json"]
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return bool(a == b)


def _invisible(arch: Arch, truth: dict[str, Any], path: str, value: Any, shapes: Shapes) -> bool:
    """True when no other value of ``path`` that builds moves a shape of ``truth``'s model."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        others: list[Any] = [v for v in (value // 2, value * 2, value + 1, value - 1) if v > 0]
    else:
        others = [value * 2 + 0.1, value / 2]
    built = 0
    for other in dict.fromkeys(others):
        data = deep_merge(truth, {})
        set_path(data, path, other)
        try:
            moved = arch.shapes(data, timeout=30) != shapes
        except BuildError:
            continue
        if moved:
            return False
        built += 1
    return built > 0


def _shape_diff(a: Shapes, b: Shapes, limit: int = 3) -> str:
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    differ = sorted(k for k in set(a) & set(b) if a[k][0] != b[k][0])
    parts = []
    if differ:
        parts.append(
            f"{len(differ)} differ in shape ("
            + ", ".join(f"{k} {list(a[k][0])} vs {list(b[k][0])}" for k in differ[:limit])
            + ")"
        )
    if only_a:
        parts.append(f"{len(only_a)} missing ({', '.join(only_a[:limit])})")
    if only_b:
        parts.append(f"{len(only_b)} extra ({', '.join(only_b[:limit])})")
    return "; ".join(parts) or "same keys and shapes, other dtypes"


def run_case(arch: Arch, mutation: Mutation, workdir: str | None = None) -> Outcome:
    """Run one case in ``workdir`` (a fresh temporary folder when None, removed after).

    Raises:
        BuildError: the mutated config does not build (not a valid case).
    """
    case = make_case(arch, mutation)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="ckptdiff-sweep-") as tmp:
            return _run(case, tmp)
    os.makedirs(workdir, exist_ok=True)
    return _run(case, workdir)


def make_case(arch: Arch, mutation: Mutation) -> Case:
    """The original and mutated configs and their shapes (BuildError: not a valid case)."""
    original = arch.original()
    truth = apply(original, mutation)
    truth_shapes = arch.shapes(truth)
    original_shapes = arch.shapes(original)
    return Case(arch, mutation, original, truth, original_shapes, truth_shapes)


def _run(case: Case, workdir: str) -> Outcome:
    folder = Path(workdir)
    config_path = str(folder / "config.json")
    ckpt = str(folder / "model.safetensors")
    emit_path = str(folder / "emitted.json")
    (folder / "config.json").write_text(json.dumps(case.original, indent=1), encoding="utf-8")
    (folder / "truth.json").write_text(json.dumps(case.truth, indent=1), encoding="utf-8")
    write_safetensors(ckpt, case.truth_shapes)
    if os.path.exists(emit_path):
        os.remove(emit_path)
    model_args = case.arch.model_args(config_path)
    start = time.perf_counter()
    try:
        with deadline(CHECK_SECONDS):
            code, report, stderr = run_check(ckpt, model_args, emit_path)
    except CaseTimeout as e:
        out = Outcome(
            case.arch.name, case.mutation.label, case.truth_shapes != case.original_shapes
        )
        out.problems.append(Problem("timeout", str(e)))
        out.reproduce = command_line(ckpt, model_args, emit_path)
        out.seconds = time.perf_counter() - start
        return out
    seconds = time.perf_counter() - start
    emitted: Any = None
    if os.path.exists(emit_path):
        try:
            emitted = json.loads(Path(emit_path).read_text(encoding="utf-8"))
        except ValueError as e:
            emitted = f"not JSON: {e}"
    out = judge(case, code, report, emitted, stderr)
    out.reproduce = command_line(ckpt, model_args, emit_path)
    out.seconds = seconds
    return out


@dataclass
class Case:
    """A case before ckptdiff sees it: the configs and the oracle's shapes of both."""

    arch: Arch
    mutation: Mutation
    original: dict[str, Any]
    truth: dict[str, Any]
    original_shapes: Shapes
    truth_shapes: Shapes


def judge(
    case: Case, code: int, report: dict[str, Any] | None, emitted: Any, stderr: str = ""
) -> Outcome:
    """The judge's verdict on what ``check`` answered (exit code, JSON report, emitted config:
    the parsed JSON, None when none was written, a string when it was not JSON)."""
    out = Outcome(case.arch.name, case.mutation.label, case.truth_shapes != case.original_shapes)
    out.exit_code = code
    if report is None:
        out.problems.append(Problem("error", f"exit {code}: {stderr.strip()[:300]}"))
        return out
    suggestions = [s for s in report.get("suggestions", []) if is_verified(s)]
    out.verified = [
        {k: s.get(k) for k in ("kind", "field", "current", "suggested")} for s in suggestions
    ]
    out.emitted = emitted is not None
    if not out.moved:
        if code != 0:
            out.problems.append(Problem("false_alarm", f"exit {code}, ok={report.get('ok')}"))
        if suggestions:
            out.problems.append(
                Problem("verified_without_change", "; ".join(_label(s) for s in suggestions))
            )
        return out
    if not suggestions:
        told = [
            s
            for s in report.get("suggestions", [])
            if s.get("kind") == "config" and s.get("status") == "undetermined"
        ]
        if told and isinstance(emitted, dict):
            _judge_emitted(case, told, emitted, out)
            if not out.problems:
                shown = "; ".join(_label(s) for s in told)
                out.problems.append(
                    Problem("undetermined", f"said {shown}; truth {case.mutation.label}")
                )
                return out
        out.problems.append(Problem("missed_fix", f"exit {code}; truth {case.mutation.label}"))
        return out
    _judge_values(case, suggestions, out)
    _judge_emitted(case, suggestions, emitted, out)
    return out


def _label(s: dict[str, Any]) -> str:
    return f"{s.get('kind')} {s.get('field')}={s.get('suggested')!r}"


def _judge_values(case: Case, suggestions: list[dict[str, Any]], out: Outcome) -> None:
    truth_config: Any = case.truth if case.arch.factory else build_config(case.truth)
    for s in suggestions:
        kind, path, value = s.get("kind"), str(s.get("field")), s.get("suggested")
        if kind == "key_map":
            out.problems.append(Problem("verified_key_map", _label(s)))
            continue
        if kind == "call":
            _judge_call(case, s, suggestions, out)
            continue
        if kind != "config":
            continue
        try:
            expected = get_path(truth_config, path)
        except (KeyError, AttributeError):
            out.problems.append(Problem("unknown_field", _label(s)))
            continue
        if expected is None:
            continue  # a derived field made explicit: the emitted config decides
        if not _same(value, expected):
            out.problems.append(
                Problem("wrong_value", f"{path}: verified {value!r}, truth {expected!r}")
            )
        elif _invisible(case.arch, case.truth, path, expected, case.truth_shapes):
            out.problems.append(
                Problem("invisible_verified", f"{path}={value!r}: no shape tells this value")
            )


# the largest model a call is made on (in real, zeroed CPU memory)
CALL_BYTES = 256 * 2**20


def _nbytes(shapes: Shapes) -> int:
    import math

    from tests.sweep.ckpt import SAFETENSORS_DTYPES

    return sum(
        math.prod(shape) * SAFETENSORS_DTYPES.get(dtype, ("", 8))[1]
        for shape, dtype in shapes.values()
    )


_RESIZE = re.compile(r"resize_token_embeddings\((\d+)\)")


def _judge_call(case: Case, s: dict[str, Any], others: list[dict[str, Any]], out: Outcome) -> None:
    """A verified ``model.resize_token_embeddings(N)``: made on the model built with the other
    verified config fixes (the vocabulary fields left as they were), every tensor it resizes
    must then have the checkpoint's shape."""
    text = str(s.get("suggested"))
    match = _RESIZE.search(text)
    if not match:
        return  # a call this judge cannot make: not judged
    if case.arch.factory:
        why = f"{text}: the factory's model has no such method"
        out.problems.append(Problem("wrong_call", why))
        return
    if _nbytes(case.original_shapes) > CALL_BYTES:
        return  # the call needs the model in memory: not judged on a model this large
    import torch

    base = deep_merge(case.original, {})
    for other in others:
        path = str(other.get("field"))
        if other.get("kind") == "config" and not path.endswith("vocab_size"):
            set_path(base, path, other.get("suggested"))
    try:
        model = build_model(case.arch.class_name, base)
        before = shapes_of(model)
        # the call reads the old table (mean and covariance of its rows): real, zeroed memory,
        # tiny for these configs
        model.to_empty(device="cpu")
        # an explicit CPU device: a device mode left behind in this process (a case stopped by
        # its time limit inside a ``with torch.device("meta")``) must not move the call
        with quiet(), torch.no_grad(), torch.device("cpu"):
            for tensor in (*model.parameters(), *model.buffers()):
                tensor.zero_()
            model.resize_token_embeddings(int(match.group(1)))
    except Exception as e:
        out.problems.append(Problem("wrong_call", f"{text}: fails: {type(e).__name__}: {e}"))
        return
    resized = shapes_of(model)
    touched = sorted(k for k in resized if resized[k] != before.get(k))
    wrong = [k for k in touched if resized[k] != case.truth_shapes.get(k)]
    if wrong or not touched:
        got = {k: resized[k] for k in wrong}
        want = {k: case.truth_shapes[k] for k in wrong if k in case.truth_shapes}
        diff = _shape_diff(got, want) if wrong else "resizes nothing"
        out.problems.append(Problem("wrong_call", f"{text}: then {diff}"))


def _judge_emitted(
    case: Case, suggestions: list[dict[str, Any]], emitted: Any, out: Outcome
) -> None:
    if emitted is None:
        if any(s.get("kind") == "config" for s in suggestions):
            out.problems.append(Problem("emitted_misfit", "config fixes verified, none emitted"))
        return
    if not isinstance(emitted, dict):
        out.problems.append(Problem("emitted_misfit", f"not a JSON object: {str(emitted)[:100]}"))
        return
    try:
        rebuilt = case.arch.shapes(deep_merge(case.original, emitted))
    except BuildError as e:
        out.problems.append(Problem("emitted_misfit", f"does not build: {e}"))
        return
    if rebuilt != case.truth_shapes:
        diff = _shape_diff(rebuilt, case.truth_shapes)
        out.problems.append(Problem("emitted_misfit", "rebuilt vs checkpoint: " + diff))
