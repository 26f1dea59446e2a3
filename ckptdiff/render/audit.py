"""Audit results as a table, markdown, JSON or JSON lines. Strings only."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ckptdiff._audit.result import QUIET, AuditResult
from ckptdiff.render.report import render_report_table
from ckptdiff.types import Finding
from ckptdiff.wording import human_bytes, percent

__all__ = ["check_command", "render_audit", "render_audit_jsonl", "transfer_line"]


def transfer_line(result: AuditResult) -> str:
    """``14 requests, 1.2 MB (0.0065% of 18.0 GB of weights), 2.31 s``."""
    if not result.remote:
        return f"local files, {result.seconds:.2f} s"
    t = result.transfer
    requests, nbytes = t.get("requests", 0), t.get("bytes", 0)
    share = (
        f" ({percent(nbytes, result.weight_bytes)} of {human_bytes(result.weight_bytes)}"
        " of weights)"
        if result.weight_bytes
        else ""
    )
    cached = f", {t['cached_files']} file(s) from the cache" if t.get("cached_files") else ""
    return (
        f"{requests} request{'' if requests == 1 else 's'}, {human_bytes(nbytes)}{share}"
        f"{cached}, {result.seconds:.2f} s"
    )


def _verdict(result: AuditResult) -> str:
    if result.error is not None:
        return "not audited"
    if result.exit_code == 3:
        return "SECURITY FINDING"
    if result.ok:
        return "consistent"
    bad = [f for f in result.all_findings if f.severity not in QUIET]
    parts = []
    if result.report is not None and not result.report.ok:
        parts.append("does not load cleanly into its config")
    if bad:
        errors = sum(1 for f in bad if f.severity == "error")
        warnings = len(bad) - errors
        counts = [
            f"{n} {word}{'' if n == 1 else 's'}"
            for n, word in ((errors, "error"), (warnings, "warning"))
            if n
        ]
        parts.append(" and ".join(counts))
    return "NOT consistent: " + ", ".join(parts)


def _render_one(result: AuditResult, fmt: str, full: bool) -> str:
    md = fmt == "markdown"
    head = f"audit: {result.source}"
    if result.error is not None:
        text = f"{head}\n  error: {result.error}\n"
        return f"## {head}\n\n**error:** {result.error}\n" if md else text
    where = []
    if result.commit:
        where.append(f"commit {result.commit[:12]}")
    if result.weights:
        where.append(f"{result.weights} ({result.format})")
    lines = [("## " if md else "") + head + (f" ({', '.join(where)})" if where else "")]
    lines.append(("" if not md else "\n") + f"read: {transfer_line(result)}")
    parts = ["\n".join(lines) + "\n"]
    repo_findings = [f for f in result.findings if f.kind != "hub_transfer"]
    if result.report is not None:
        via = check_command(result.source)
        parts.append(
            render_report_table(
                dataclasses.replace(
                    result.report,
                    findings=tuple(
                        _via(f, via) for f in result.report.findings if f.kind != "hub_transfer"
                    ),
                ),
                fmt=fmt,
                full=full,
                coverage=False,
                emit_via=via,
            )
        )
    bullet = "- " if md else "  "
    if repo_findings:
        parts.append(
            "Repo findings\n"
            + "\n".join(f"{bullet}[{f.severity}] {f.message}" for f in repo_findings)
            + "\n"
        )
    parts.append(f"Verdict: {_verdict(result)}.\n")
    return "\n".join(parts)


def check_command(source: str) -> str:
    """The ``ckptdiff check`` command that has the options audit lacks (``--emit-config``...)."""
    return f"ckptdiff check {shlex.quote(source)} --model {shlex.quote(source)}"


def _via(finding: Finding, via: str) -> Finding:
    """A finding that names an option of ``check`` names the whole check command instead."""
    if "--emit-" not in finding.message:
        return finding
    message = re.sub(
        r"--emit-(config|key-map)(?: FILE)?", lambda m: f"`{via} {m.group(0)}`", finding.message
    )
    return dataclasses.replace(finding, message=message)


def render_audit(results: Sequence[AuditResult], fmt: str = "table", *, full: bool = False) -> str:
    """Render audit results as ``table``, ``markdown``, ``json`` or ``jsonl``.

    ``json`` is one ``ckptdiff.report/2`` object for one repo and a list of them for several;
    ``jsonl`` is one compact object per line.
    """
    if fmt == "jsonl":
        return "".join(render_audit_jsonl(r) for r in results)
    if fmt == "json":
        data: Any = [r.to_dict() for r in results]
        return json.dumps(data[0] if len(data) == 1 else data, indent=2) + "\n"
    text = "\n".join(_render_one(r, fmt, full) for r in results)
    if len(results) > 1:
        counts = Counter(
            "error" if r.error else "consistent" if r.ok else "with findings" for r in results
        )
        text += (
            "\n"
            + f"{len(results)} repos: "
            + ", ".join(
                f"{counts[k]} {k}" for k in ("consistent", "with findings", "error") if counts[k]
            )
            + ".\n"
        )
    return text


def render_audit_jsonl(result: AuditResult) -> str:
    """One result as one line of JSON."""
    return json.dumps(result.to_dict(), separators=(",", ":")) + "\n"
