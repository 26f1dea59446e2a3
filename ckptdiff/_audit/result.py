"""What the audit of one repo found: :class:`AuditResult`, its verdict, exit code and JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptdiff.types import REPORT_SCHEMA, Finding, Report

__all__ = ["QUIET", "AuditResult"]

#: Findings that block nothing: the audit is still "consistent" with them.
QUIET = ("info",)


@dataclass(frozen=True)
class AuditResult:
    """What the audit of one repo found.

    Attributes:
        source: the repo as the user named it.
        weights: the weights file or index that was read (relative to the repo's folder).
        format: the weights' format (``safetensors-sharded``...).
        commit: the commit a hub revision resolved to (None for a local folder).
        report: the check of the weights against the repo's config (None without a config
            that builds).
        findings: repo-level findings (dtype, tokenizer, formats, config), plus the reader's
            when there is no report to carry them.
        transfer: ``{"requests", "bytes", "cached_files"}`` spent on this repo.
        weight_bytes: bytes of all tensors of the weights.
        seconds: wall time of this audit.
        error: the one-line error when the repo could not be audited.
        error_code: the exit code of that error (2, or 3 for an unsafe file).
        remote: whether the repo was read from the hub (else from a local folder).
    """

    source: str
    weights: str | None = None
    format: str | None = None
    commit: str | None = None
    report: Report | None = None
    findings: tuple[Finding, ...] = ()
    transfer: Mapping[str, int] = field(default_factory=dict)
    weight_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    error_code: int = 0
    remote: bool = False

    @property
    def all_findings(self) -> tuple[Finding, ...]:
        """The report's findings and the repo-level ones (transfer notes left out)."""
        found = (self.report.findings if self.report is not None else ()) + self.findings
        return tuple(f for f in found if f.kind != "hub_transfer")

    @property
    def ok(self) -> bool:
        """True when the repo was audited, loads cleanly, and nothing worse than info was found."""
        if self.error is not None:
            return False
        if self.report is not None and not self.report.ok:
            return False
        return all(f.severity in QUIET for f in self.all_findings)

    @property
    def exit_code(self) -> int:
        """0 consistent, 1 findings or incompatible, 2 not audited, 3 a security finding."""
        if self.error is not None:
            return self.error_code or 2
        if any(f.severity == "security" for f in self.all_findings):
            return 3
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: a ``ckptdiff.report/2`` object plus ``source``, ``transfer``, ``audit``.

        Without a report (no config, or an error) the report fields are empty.
        """
        if self.report is not None:
            out = self.report.to_dict()
        else:
            out = {
                "schema": REPORT_SCHEMA,
                "missing": [],
                "unexpected": [],
                "mismatched": [],
                "dtype_changes": [],
                "coverage": [],
                "suggestions": [],
            }
        out["ok"] = self.ok
        out["source"] = self.source
        out["findings"] = [f.to_dict() for f in self.all_findings]
        out["transfer"] = {
            k: self.transfer.get(k, 0) for k in ("requests", "bytes", "range_bytes", "cached_files")
        }
        out["audit"] = {
            "weights": self.weights,
            "format": self.format,
            "commit": self.commit,
            "weight_bytes": self.weight_bytes,
            "checked_against_config": self.report is not None,
            "remote": self.remote,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }
        out["error"] = self.error
        return out
