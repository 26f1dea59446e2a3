"""``audit``: is a repo internally consistent and loadable, before anyone downloads it?

A repo is a hub source (``hf://org/repo``, a hub URL) or a local folder in the Hugging Face
layout: :mod:`.repos` reads it, :mod:`.run` checks its weights against its own config (one
repo, or several concurrently), :mod:`.rules` adds the repo-level findings and :mod:`.result`
holds what was found. The renderers are in :mod:`ckptdiff.render.audit`.
"""

from __future__ import annotations

from ckptdiff._audit.result import AuditResult
from ckptdiff._audit.run import audit, audit_many

__all__ = ["AuditResult", "audit", "audit_many"]
