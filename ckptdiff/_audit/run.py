"""The audit of one repo, and of several concurrently.

A repo's weights are read lazily (over the hub: headers by range requests), its own
``config.json`` is built on meta by transformers and the weights are checked against it
(:func:`ckptdiff.check`); then the repo-level rules (:mod:`ckptdiff._audit.rules`) add findings.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from ckptdiff._audit.repos import HubRepo, open_repo
from ckptdiff._audit.result import AuditResult
from ckptdiff._audit.rules import (
    dtype_findings,
    format_findings,
    no_config_finding,
    other_format,
    tokenizer_findings,
    unreferenced_findings,
)
from ckptdiff.errors import CkptDiffError, ReadError, TargetError, UsageError
from ckptdiff.types import Finding, Manifest, Report

__all__ = ["audit", "audit_many"]

#: Building targets patches torch globally for the build: one build at a time.
_BUILD_LOCK = threading.Lock()


def audit(
    source: str,
    *,
    auto_class: str | None = None,
    allow_download: bool | None = None,
    depth: int = 2,
) -> AuditResult:
    """Audit one repo: its weights against its own config, and against each other.

    Args:
        source: ``hf://org/repo[@revision][/subfolder]``, a hub URL, or a local folder in the
            Hugging Face layout.
        auto_class: the transformers class to build (default: the config's
            ``architectures[0]``).
        allow_download: download whole files when range requests cannot be used (None: from
            ``CKPTDIFF_ALLOW_DOWNLOAD``).
        depth: module depth of the coverage rows.

    Returns:
        The :class:`AuditResult` (``.ok``, ``.exit_code``, ``.to_dict()``).

    Raises:
        CkptDiffError: the repo cannot be read (not found, gated, offline, corrupt weights...).

    Example:
        >>> result = audit("hf://sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> result.ok, result.transfer["requests"]  # doctest: +SKIP
        (True, 4)
    """
    start = time.perf_counter()
    repo = open_repo(source, allow_download)
    names = repo.names()
    primary = repo.file or repo.weights_name()
    weights = repo.read(primary)
    findings: list[Finding] = []
    config_path = repo.fetch("config.json") if "config.json" in names else None
    config = _load_json(config_path, "config.json", source) if config_path else None
    report = None
    target = None
    if config_path is None:
        findings.append(no_config_finding(names))
    elif not isinstance(config, dict):
        findings.append(Finding("config_invalid", "config.json is not a JSON object.", (), "error"))
    else:
        report, target, problem = _check_config(config_path, weights, source, auto_class, depth)
        if problem is not None:
            findings.append(problem)
        findings += dtype_findings(config, weights)
    if "tokenizer.json" in names:
        tokenizer = _load_json(repo.fetch("tokenizer.json"), "tokenizer.json", source)
        findings += tokenizer_findings(
            tokenizer,
            config if isinstance(config, dict) else None,
            weights,
            checked=report is not None,
        )
    if primary.endswith(".index.json"):
        findings += unreferenced_findings(repo, primary, names, source)
    other = other_format(primary, names)
    if other is not None:
        findings += format_findings(
            primary, weights, other, repo.read(other), target.tied if target is not None else ()
        )
    if report is None:
        findings = list(weights.findings) + findings
    return AuditResult(
        source=source,
        weights=primary,
        format=weights.format,
        commit=repo.commit,
        report=report,
        findings=tuple(findings),
        transfer=repo.transfer_dict(),
        weight_bytes=sum(t.nbytes or 0 for t in weights.tensors.values()),
        seconds=time.perf_counter() - start,
        remote=isinstance(repo, HubRepo),
    )


def _load_json(path: str, name: str, source: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ReadError(f"Cannot read '{source}' ({name}): not valid JSON ({e}).") from e


def _check_config(
    config_path: str, weights: Manifest, source: str, auto_class: str | None, depth: int
) -> tuple[Report | None, Manifest | None, Finding | None]:
    from ckptdiff._check import check
    from ckptdiff.targets import build_target

    try:
        with _BUILD_LOCK:
            target = build_target(
                f"hf-config:{config_path}", auto_class=auto_class, evidence=weights
            )
            report = check(target, weights, depth=depth)
    except TargetError as e:
        message = str(e).replace(f"hf-config:{config_path}", "config.json")
        return (
            None,
            None,
            Finding(
                "config_not_built",
                f"The repo's config.json does not build with transformers, so the weights were not "
                f"checked against it: {message}",
                ("config.json",),
                "warning",
            ),
        )
    report = dataclasses.replace(report, target=f"{source} (config.json)")
    return report, target, None


# --- several repos -------------------------------------------------------------


def _failed(source: str, e: BaseException, start: float) -> AuditResult:
    if isinstance(e, CkptDiffError):
        return AuditResult(
            source, error=str(e), error_code=e.exit_code, seconds=time.perf_counter() - start
        )
    return AuditResult(
        source,
        error=f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback, "
        "and please report it).",
        error_code=2,
        seconds=time.perf_counter() - start,
    )


def audit_many(
    sources: Sequence[str],
    *,
    jobs: int = 4,
    on_result: Callable[[AuditResult], None] | None = None,
    raise_errors: bool = False,
    **kwargs: Any,
) -> list[AuditResult]:
    """Audit several repos concurrently; a repo that fails does not stop the others.

    Args:
        sources: the repos.
        jobs: repos audited at the same time.
        on_result: called with each result as it completes (from the calling thread).
        raise_errors: re-raise an unforeseen exception instead of recording it (``--debug``).
        **kwargs: passed to :func:`audit`.

    Returns:
        The results in the order of ``sources``; a repo that could not be audited has
        ``error`` set.

    Raises:
        UsageError: no sources, or ``jobs`` below 1.
    """
    if not sources:
        raise UsageError(
            "Cannot audit: no repos given. Name repos or folders, or pass --from FILE."
        )
    if jobs < 1:
        raise UsageError(f"Cannot audit with --jobs {jobs}: it must be at least 1.")

    def one(source: str) -> AuditResult:
        start = time.perf_counter()
        try:
            return audit(source, **kwargs)
        except Exception as e:
            if raise_errors and not isinstance(e, CkptDiffError):
                raise
            return _failed(source, e, start)

    results: list[AuditResult | None] = [None] * len(sources)
    with ThreadPoolExecutor(max_workers=min(jobs, len(sources))) as pool:
        futures = {pool.submit(one, s): i for i, s in enumerate(sources)}
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            if on_result is not None:
                on_result(result)
    return [r for r in results if r is not None]
