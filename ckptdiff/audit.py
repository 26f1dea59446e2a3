"""``audit``: is a repo internally consistent and loadable, before anyone downloads it?

A repo is a hub source (``hf://org/repo``, a hub URL) or a local folder in the Hugging Face
layout. Its weights are read lazily (over the hub: headers by range requests), its own
``config.json`` is built on meta by transformers and the weights are checked against it
(:func:`ckptdiff.check`); then repo-level checks add findings:

- the index against its shards (missing shard files, keys listed but absent, unlisted,
  duplicated, ``total_size``): the sharded reader's findings;
- ``torch_dtype`` / ``dtype`` in the config against the dtypes the weights are stored in;
- the tokenizer's size (``tokenizer.json``, added tokens included) against ``vocab_size`` and
  the embedding's rows;
- ``.safetensors`` and ``.bin`` weights side by side that disagree.

:func:`audit_many` audits several repos concurrently; renderers return strings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

from ckptdiff.errors import CkptDiffError, TargetError, UsageError
from ckptdiff.readers.hub.transport import human_bytes, percent
from ckptdiff.types import REPORT_SCHEMA, Finding, Manifest, Report, TensorSpec

__all__ = [
    "AuditResult",
    "audit",
    "audit_many",
    "dtype_findings",
    "format_findings",
    "render_audit",
    "render_audit_jsonl",
    "tokenizer_findings",
    "tokenizer_size",
    "transfer_line",
]

#: Findings that block nothing: the audit is still "consistent" with them.
_QUIET = ("info",)
#: Weights of one format, and the files of the other format to compare them with.
_FORMAT_GROUPS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
_ADAPTER_GROUPS = (("adapter_model.safetensors",), ("adapter_model.bin",))
_FLOAT_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
     "float8_e4m3fnuz", "float8_e5m2fnuz"}
)
_EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "word_embeddings.weight",
    "wte.weight",
    "tok_embeddings.weight",
    "embed_in.weight",
    "token_embedding.weight",
    "shared.weight",
)
#: Building targets patches torch globally for the build: one build at a time.
_BUILD_LOCK = threading.Lock()


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
        return all(f.severity in _QUIET for f in self.all_findings)

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
            out = {"schema": REPORT_SCHEMA, "missing": [], "unexpected": [], "mismatched": [],
                   "dtype_changes": [], "coverage": [], "suggestions": []}
        out["ok"] = self.ok
        out["source"] = self.source
        out["findings"] = [f.to_dict() for f in self.all_findings]
        out["transfer"] = {k: self.transfer.get(k, 0)
                           for k in ("requests", "bytes", "range_bytes", "cached_files")}
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


# --- the repo, local or on the hub -------------------------------------------------------------


class _Repo(Protocol):
    source: str
    commit: str | None
    file: str | None

    def names(self) -> list[str]: ...

    def weights_name(self) -> str: ...

    def fetch(self, name: str) -> str: ...

    def read(self, name: str) -> Manifest: ...

    def transfer_dict(self) -> dict[str, int]: ...


class _LocalRepo:
    def __init__(self, source: str) -> None:
        path = os.path.expanduser(source)
        self.source = source
        self.commit: str | None = None
        self.file: str | None = None
        if os.path.isfile(path):
            self.root, self.file = os.path.split(os.path.abspath(path))
        elif os.path.isdir(path):
            self.root = path
        else:
            from ckptdiff.errors import SourceNotFoundError

            raise SourceNotFoundError(f"Cannot audit '{source}': no such folder or file.")

    def names(self) -> list[str]:
        root = self.root
        return sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n)))

    def weights_name(self) -> str:
        from ckptdiff.readers.folder import choose_weights

        return choose_weights(self.names(), self.source)

    def fetch(self, name: str) -> str:
        return os.path.join(self.root, name)

    def read(self, name: str) -> Manifest:
        from ckptdiff.readers import read

        return read(os.path.join(self.root, name))

    def transfer_dict(self) -> dict[str, int]:
        return {"requests": 0, "bytes": 0, "range_bytes": 0, "cached_files": 0}


class _HubRepo:
    def __init__(self, source: str, allow_download: bool | None) -> None:
        from ckptdiff.readers.hub import open_repo

        self.repo = open_repo(source, allow_download=allow_download)
        self.source = source
        self.commit: str | None = self.repo.commit
        self.file: str | None = self.repo.file

    def names(self) -> list[str]:
        return self.repo.names()

    def weights_name(self) -> str:
        return self.repo.weights_name()

    def fetch(self, name: str) -> str:
        return self.repo.fetch(name)

    def read(self, name: str) -> Manifest:
        return self.repo.read(name)

    def transfer_dict(self) -> dict[str, int]:
        return self.repo.transfer.to_dict()


def _open(source: str, allow_download: bool | None) -> _Repo:
    from ckptdiff.readers.hub import is_hub_source

    if is_hub_source(source):
        return _HubRepo(source, allow_download)
    return _LocalRepo(source)


# --- the audit ---------------------------------------------------------------------------------


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
    repo = _open(source, allow_download)
    names = repo.names()
    primary = repo.file or repo.weights_name()
    weights = repo.read(primary)
    findings: list[Finding] = []
    config_path = repo.fetch("config.json") if "config.json" in names else None
    config = _load_json(config_path, "config.json", source) if config_path else None
    report = None
    target = None
    if config_path is None:
        findings.append(_no_config(names))
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
            tokenizer, config if isinstance(config, dict) else None, weights,
            checked=report is not None,
        )
    if primary.endswith(".index.json"):
        findings += _unreferenced(repo, primary, names, source)
    other = _other_format(primary, names)
    if other is not None:
        findings += format_findings(primary, weights, other, repo.read(other),
                                    target.tied if target is not None else ())
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
        remote=isinstance(repo, _HubRepo),
    )


def _load_json(path: str, name: str, source: str) -> Any:
    from ckptdiff.errors import ReadError

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ReadError(f"Cannot read '{source}' ({name}): not valid JSON ({e}).") from e


def _no_config(names: Sequence[str]) -> Finding:
    if "adapter_config.json" in names:
        return Finding(
            "no_config",
            "An adapter repo (adapter_config.json, no config.json): the weights were not checked "
            "against a model; audit the base model's repo for that.",
            ("config.json",), "info")
    return Finding(
        "no_config",
        "The repo has no config.json, so the weights were not checked against a model; "
        "transformers' from_pretrained cannot load it as it is.",
        ("config.json",), "warning")


def _check_config(
    config_path: str, weights: Manifest, source: str, auto_class: str | None, depth: int
) -> tuple[Report | None, Manifest | None, Finding | None]:
    from ckptdiff.check import check
    from ckptdiff.targets import build_target

    try:
        with _BUILD_LOCK:
            target = build_target(
                f"hf-config:{config_path}", auto_class=auto_class, evidence=weights)
            report = check(target, weights, depth=depth)
    except TargetError as e:
        message = str(e).replace(f"hf-config:{config_path}", "config.json")
        return None, None, Finding(
            "config_not_built",
            f"The repo's config.json does not build with transformers, so the weights were not "
            f"checked against it: {message}",
            ("config.json",), "warning")
    report = dataclasses.replace(report, target=f"{source} (config.json)")
    return report, target, None


def _unreferenced(repo: _Repo, index: str, names: Sequence[str], source: str) -> list[Finding]:
    """Weights files of the index's format in the folder that the index does not name."""
    from ckptdiff.readers.sharded import parse_index

    with open(repo.fetch(index), "rb") as f:
        weight_map, _ = parse_index(f.read(), source)
    ext = index[: -len(".index.json")].rsplit(".", 1)[-1]
    named = set(weight_map.values())
    whole = index[: -len(".index.json")]
    stray = [n for n in names if n.endswith("." + ext) and n not in named and n != whole]
    if not stray:
        return []
    return [Finding(
        "unreferenced_weights",
        f"{len(stray)} .{ext} file(s) in the repo are not named by {index} and are never "
        f"loaded: {', '.join(stray[:5])}{', ...' if len(stray) > 5 else ''} (left over from an "
        "earlier save?). Delete them, or add their tensors to the index.",
        tuple(stray), "warning")]


def _other_format(primary: str, names: Sequence[str]) -> str | None:
    for groups in (_FORMAT_GROUPS, _ADAPTER_GROUPS):
        for mine, theirs in (groups, groups[::-1]):
            if primary in mine:
                return next((n for n in theirs if n in names), None)
    return None


def dtype_findings(config: Mapping[str, Any], weights: Manifest) -> list[Finding]:
    """``torch_dtype`` / ``dtype`` of the config against the dtypes the weights are stored in.

    Returns:
        A ``config_dtype`` warning when most floating-point parameters are stored in another
        dtype than the config declares; a ``mixed_dtypes`` info when only some are.

    Example:
        >>> from ckptdiff.types import TensorSpec
        >>> w = Manifest("x", "safetensors", {"w": TensorSpec("w", (4,), "float16")})
        >>> [f.kind for f in dtype_findings({"torch_dtype": "float32"}, w)]
        ['config_dtype']
    """
    fields = [(k, config.get(k)) for k in ("dtype", "torch_dtype")]
    field_name, declared = next(((k, v) for k, v in fields if isinstance(v, str)), (None, None))
    if field_name is None or not isinstance(declared, str) or declared == "auto":
        return []
    declared = declared.removeprefix("torch.")
    params: Counter[str] = Counter()
    tensors: Counter[str] = Counter()
    for spec in weights.tensors.values():
        if spec.dtype in _FLOAT_DTYPES:
            params[spec.dtype] += spec.numel
            tensors[spec.dtype] += 1
    if not params:
        return []
    stored, count = params.most_common(1)[0]
    total = sum(params.values())
    stored_data = {d: {"tensors": tensors[d], "parameters": params[d]} for d in sorted(params)}
    if stored != declared:
        return [Finding(
            "config_dtype",
            f"config.json declares {field_name} {declared!r} but {100 * count / total:.0f}% of "
            f"the floating-point parameters are stored as {stored}: from_pretrained("
            f"torch_dtype='auto') would build the model in {declared} and cast every weight. "
            f"Set {field_name} to {stored!r}, or re-save the weights in {declared}.",
            (field_name,), "warning",
            {"field": field_name, "declared": declared, "stored": stored_data})]
    others = {d: n for d, n in tensors.items() if d != declared}
    if others:
        example = next(s.key for s in weights.tensors.values() if s.dtype in others)
        return [Finding(
            "mixed_dtypes",
            f"{sum(others.values())} tensor(s) are stored as {', '.join(sorted(others))} while "
            f"config.json declares {declared} (e.g. '{example}'); loading casts them.",
            (field_name,), "info",
            {"field": field_name, "declared": declared, "stored": stored_data})]
    return []


def tokenizer_size(data: Any) -> tuple[int, int, int]:
    """``(size, vocabulary, added)`` of a ``tokenizer.json``: ids the tokenizer can emit.

    ``size`` is the largest id plus one; ``added`` counts added tokens outside the vocabulary.

    Example:
        >>> tokenizer_size({"model": {"vocab": {"a": 0, "b": 1}},
        ...                 "added_tokens": [{"id": 2, "content": "<x>"}]})
        (3, 2, 1)
    """
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    ids: set[int] = set()
    if isinstance(vocab, dict):
        ids = {v for v in vocab.values() if isinstance(v, int) and not isinstance(v, bool)}
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        ids = set(range(len(vocab)))
    added_ids = {
        t["id"] for t in (data.get("added_tokens") or [] if isinstance(data, dict) else [])
        if isinstance(t, dict) and isinstance(t.get("id"), int)
    }
    every = ids | added_ids
    return (max(every) + 1 if every else 0), len(ids), len(added_ids - ids)


def _embedding(weights: Manifest) -> TensorSpec | None:
    for suffix in _EMBEDDING_SUFFIXES:
        for spec in weights.tensors.values():
            if spec.key.endswith(suffix) and len(spec.shape) == 2:
                return spec
    return None


def _vocab_size(config: Mapping[str, Any] | None) -> int | None:
    if not config:
        return None
    for holder in (config, config.get("text_config")):
        if isinstance(holder, Mapping) and isinstance(holder.get("vocab_size"), int):
            return int(holder["vocab_size"])
    return None


def tokenizer_findings(
    tokenizer: Any,
    config: Mapping[str, Any] | None,
    weights: Manifest,
    *,
    checked: bool = False,
) -> list[Finding]:
    """The tokenizer's size against ``vocab_size`` and the embedding's rows.

    Args:
        tokenizer: the parsed ``tokenizer.json``.
        config: the parsed ``config.json`` (None without one).
        weights: the weights' manifest.
        checked: whether the weights were checked against the config (an embedding whose rows
            differ from ``vocab_size`` is then already reported as a mismatch).

    Returns:
        Errors when the tokenizer can emit ids past ``vocab_size`` or past the embedding's
        rows; a warning when rows and ``vocab_size`` differ (and nothing checked it); an info
        when ``vocab_size`` leaves rows no token uses.
    """
    size, base, added = tokenizer_size(tokenizer)
    if not size:
        return []
    vocab_size = _vocab_size(config)
    embedding = _embedding(weights)
    rows = embedding.shape[0] if embedding is not None else None
    counted = f"{size} token ids ({base} in the vocabulary + {added} added)"
    data: dict[str, Any] = {"tokenizer_size": size, "vocabulary": base, "added": added,
                            "vocab_size": vocab_size, "embedding_rows": rows}
    out: list[Finding] = []
    if vocab_size is not None and size > vocab_size:
        out.append(Finding(
            "tokenizer_vocab_size",
            f"tokenizer.json has {counted} but config.json's vocab_size is {vocab_size}: ids "
            f"{vocab_size}..{size - 1} would index past the embedding. Resize it "
            f"(model.resize_token_embeddings({size})) and save again, or drop the added tokens.",
            ("vocab_size",), "error", data))
    if rows is not None and size > rows and rows != vocab_size:
        out.append(Finding(
            "tokenizer_embedding_rows",
            f"tokenizer.json has {counted} but the checkpoint's '{embedding.key}' has "  # type: ignore[union-attr]
            f"{rows} rows: ids {rows}..{size - 1} would index past it.",
            (embedding.key,), "error", data))  # type: ignore[union-attr]
    if rows is not None and vocab_size is not None and rows != vocab_size and not checked:
        out.append(Finding(
            "embedding_rows",
            f"config.json's vocab_size is {vocab_size} but the checkpoint's '{embedding.key}' "  # type: ignore[union-attr]
            f"has {rows} rows.",
            (embedding.key,), "warning", data))  # type: ignore[union-attr]
    if not out and vocab_size is not None and size < vocab_size:
        out.append(Finding(
            "tokenizer_smaller",
            f"tokenizer.json has {counted}; vocab_size {vocab_size} leaves {vocab_size - size} "
            "embedding rows no token uses (padding to a round size is common).",
            ("vocab_size",), "info", data))
    return out


def _expanded(m: Manifest) -> dict[str, TensorSpec]:
    out = dict(m.tensors)
    for dropped, kept in m.aliases.items():
        if dropped not in out and kept in out:
            out[dropped] = dataclasses.replace(out[kept], key=dropped)
    return out


def format_findings(
    primary: str,
    weights: Manifest,
    other: str,
    other_weights: Manifest,
    tied: Iterable[Sequence[str]] = (),
) -> list[Finding]:
    """Compare the weights transformers loads with the other format's copy in the same repo.

    Args:
        primary: the file transformers loads (``model.safetensors`` or its index).
        weights: its manifest.
        other: the other format's file (``pytorch_model.bin`` or its index).
        other_weights: its manifest.
        tied: the target's tied groups: a key one side omits while it holds a tied partner is
            not a difference.

    Returns:
        A ``formats_disagree`` warning listing keys only on one side and shapes that differ;
        a ``formats_dtype`` info when only dtypes differ.
    """
    a, b = _expanded(weights), _expanded(other_weights)
    partners: dict[str, set[str]] = {}
    for group in tied:
        for k in group:
            partners.setdefault(k, set()).update(g for g in group if g != k)

    def covered(key: str, side: Mapping[str, TensorSpec]) -> bool:
        return key in side or any(p in side for p in partners.get(key, ()))

    only_a = [k for k in a if not covered(k, b)]
    only_b = [k for k in b if not covered(k, a)]
    shapes = [k for k in a if k in b and a[k].shape != b[k].shape]
    dtypes = [k for k in a if k in b and a[k].shape == b[k].shape and a[k].dtype != b[k].dtype]
    data = {"files": [primary, other], "only_in_" + primary: only_a, "only_in_" + other: only_b,
            "shape_differs": shapes, "dtype_differs": dtypes}
    if only_a or only_b or shapes:
        bits = []
        if only_a:
            bits.append(f"{len(only_a)} key(s) only in {primary} (e.g. '{only_a[0]}')")
        if only_b:
            bits.append(f"{len(only_b)} key(s) only in {other} (e.g. '{only_b[0]}')")
        if shapes:
            k = shapes[0]
            bits.append(f"{len(shapes)} shape(s) differ (e.g. '{k}': {list(a[k].shape)} vs "
                        f"{list(b[k].shape)})")
        return [Finding(
            "formats_disagree",
            f"{primary} and {other} hold different weights: {'; '.join(bits)}. transformers "
            f"loads {primary}; tools that load {other} get other weights. Re-export one from "
            "the other, or delete the stale one.",
            tuple(only_a + only_b + shapes), "warning", data)]
    if dtypes:
        return [Finding(
            "formats_dtype",
            f"{primary} and {other} hold the same tensors in other dtypes ({len(dtypes)} "
            f"tensor(s), e.g. '{dtypes[0]}': {a[dtypes[0]].dtype} vs {b[dtypes[0]].dtype}).",
            tuple(dtypes), "info", data)]
    return []


# --- several repos -----------------------------------------------------------------------------


def _failed(source: str, e: BaseException, start: float) -> AuditResult:
    if isinstance(e, CkptDiffError):
        return AuditResult(source, error=str(e), error_code=e.exit_code,
                           seconds=time.perf_counter() - start)
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


# --- rendering ---------------------------------------------------------------------------------


def transfer_line(result: AuditResult) -> str:
    """``14 requests, 1.2 MB (0.0065% of 18.0 GB of weights), 2.31 s``."""
    if not result.remote:
        return f"local files, {result.seconds:.2f} s"
    t = result.transfer
    requests, nbytes = t.get("requests", 0), t.get("bytes", 0)
    share = (f" ({percent(nbytes, result.weight_bytes)} of {human_bytes(result.weight_bytes)}"
             " of weights)" if result.weight_bytes else "")
    cached = f", {t['cached_files']} file(s) from the cache" if t.get("cached_files") else ""
    return (f"{requests} request{'' if requests == 1 else 's'}, {human_bytes(nbytes)}{share}"
            f"{cached}, {result.seconds:.2f} s")


def _verdict(result: AuditResult) -> str:
    if result.error is not None:
        return "not audited"
    if result.exit_code == 3:
        return "SECURITY FINDING"
    if result.ok:
        return "consistent"
    bad = [f for f in result.all_findings if f.severity not in _QUIET]
    parts = []
    if result.report is not None and not result.report.ok:
        parts.append("does not load cleanly into its config")
    if bad:
        errors = sum(1 for f in bad if f.severity == "error")
        warnings = len(bad) - errors
        counts = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in
                  ((errors, "error"), (warnings, "warning")) if n]
        parts.append(" and ".join(counts))
    return "NOT consistent: " + ", ".join(parts)


def _render_one(result: AuditResult, fmt: str, full: bool) -> str:
    from ckptdiff.report import render_report_table

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
        parts.append(render_report_table(
            dataclasses.replace(result.report, findings=tuple(
                _via(f, via) for f in result.report.findings if f.kind != "hub_transfer")),
            fmt=fmt, full=full, coverage=False, emit_via=via))
    bullet = "- " if md else "  "
    if repo_findings:
        parts.append("Repo findings\n" + "\n".join(
            f"{bullet}[{f.severity}] {f.message}" for f in repo_findings) + "\n")
    parts.append(f"Verdict: {_verdict(result)}.\n")
    return "\n".join(parts)


def check_command(source: str) -> str:
    """The ``ckptdiff check`` command that has the options audit lacks (``--emit-config``...)."""
    import shlex

    return f"ckptdiff check {shlex.quote(source)} --model {shlex.quote(source)}"


def _via(finding: Finding, via: str) -> Finding:
    """A finding that names an option of ``check`` names the whole check command instead."""
    if "--emit-" not in finding.message:
        return finding
    import re

    message = re.sub(r"--emit-(config|key-map)(?: FILE)?", lambda m: f"`{via} {m.group(0)}`",
                     finding.message)
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
        text += "\n" + f"{len(results)} repos: " + ", ".join(
            f"{counts[k]} {k}" for k in ("consistent", "with findings", "error") if counts[k]
        ) + ".\n"
    return text


def render_audit_jsonl(result: AuditResult) -> str:
    """One result as one line of JSON."""
    return json.dumps(result.to_dict(), separators=(",", ":")) + "\n"

