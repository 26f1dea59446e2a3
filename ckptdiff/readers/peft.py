"""PEFT adapters: ``adapter_model.safetensors`` (or ``.bin``) next to ``adapter_config.json``.

The weights file is read by the ordinary readers; this module reads the small config, parses
adapter keys (``base_model.model.<module>.lora_A.weight``...) and names the layout. Checking an
adapter against its base model is :func:`ckptdiff.adapter.check_adapter`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ckptdiff.errors import ReadError
from ckptdiff.types import Finding, Manifest

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "ADAPTER_PREFIX",
    "AdapterKey",
    "annotate_adapter",
    "find_adapter_file",
    "is_adapter",
    "parse_adapter_key",
    "read_adapter_config",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
#: The prefix PEFT puts on every saved key (``PeftModel.base_model.model``).
ADAPTER_PREFIX = "base_model.model."
MAX_CONFIG_SIZE = 1 << 20
#: Parameter names of adapter layers, per PEFT method.
ADAPTER_PARAMS = (
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
    "ia3_l",
    "oft_r",
    "boft_R",
    "boft_s",
    "hada_w1_a",
    "hada_w1_b",
    "hada_w2_a",
    "hada_w2_b",
    "lokr_w1",
    "lokr_w2",
    "vera_lambda_b",
    "vera_lambda_d",
)
#: What every adapter parameter's component starts with (``.lora_`` for ``lora_A``...): seven
#: scans of all keys tell a checkpoint that holds none of them.
_PARAM_STEMS = tuple(dict.fromkeys(f".{p.split('_')[0]}_" for p in ADAPTER_PARAMS))
_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<param>" + "|".join(ADAPTER_PARAMS) + r")"
    r"(?:\.(?P<name>(?!weight$|bias$)[^.]+))?(?:\.(?P<leaf>weight|bias))?$"
)


@dataclass(frozen=True)
class AdapterKey:
    """One adapter tensor's key, parsed.

    Attributes:
        module: the adapted module's path in the base model (prefix removed).
        param: ``lora_A``, ``lora_B``, ``lora_embedding_A``, ``lora_magnitude_vector``...
        adapter_name: the adapter-name segment when the save kept it (``default``), else None.
        leaf: ``weight``, ``bias`` or None.
    """

    module: str
    param: str
    adapter_name: str | None
    leaf: str | None

    def key(self) -> str:
        """The key PEFT saves (no adapter name, no prefix)."""
        return f"{self.module}.{self.param}" + (f".{self.leaf}" if self.leaf else "")


def parse_adapter_key(key: str) -> AdapterKey | None:
    """Parse an adapter tensor key (without the ``base_model.model.`` prefix).

    Example:
        >>> parse_adapter_key("layers.0.q_proj.lora_A.default.weight")
        AdapterKey(module='layers.0.q_proj', param='lora_A', adapter_name='default', leaf='weight')
    """
    m = _KEY.match(key)
    if m is None:
        return None
    return AdapterKey(m["module"], m["param"], m["name"], m["leaf"])


def read_adapter_config(folder: str, source: str) -> dict[str, Any] | None:
    """``adapter_config.json`` of a folder, or None when there is none.

    Raises:
        ReadError: the file is too large or not a JSON object.
    """
    path = os.path.join(folder, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        return None
    if os.path.getsize(path) > MAX_CONFIG_SIZE:
        raise ReadError(f"Cannot read '{source}' ({ADAPTER_CONFIG}): over {MAX_CONFIG_SIZE} bytes.")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReadError(f"Cannot read '{source}' ({ADAPTER_CONFIG}): not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise ReadError(f"Cannot read '{source}' ({ADAPTER_CONFIG}): not a JSON object.")
    return data


def find_adapter_file(folder: str) -> str | None:
    """The adapter weights of a folder holding ``adapter_config.json``, or None."""
    if not os.path.isfile(os.path.join(folder, ADAPTER_CONFIG)):
        return None
    for name in ADAPTER_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def is_adapter(m: Manifest) -> bool:
    """A manifest :func:`annotate_adapter` marked as a PEFT adapter."""
    layout = m.metadata.get("layout")
    return isinstance(layout, str) and layout.startswith("peft")


def looks_like_adapter(m: Manifest) -> bool:
    """Keys of a PEFT save: most under ``base_model.model.`` or most adapter parameters."""
    keys = list(m.tensors)
    if not keys:
        return False
    joined = "\n".join(keys)
    if not any(stem in joined for stem in _PARAM_STEMS):  # no key can parse: one scan each
        return False
    parsed = sum(1 for k in keys if parse_adapter_key(k) is not None)
    prefixed = all(k.startswith(ADAPTER_PREFIX) for k in keys)
    return parsed * 2 >= len(keys) or (parsed > 0 and prefixed)


_CONFIG_FIELDS = (
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "exclude_modules",
    "modules_to_save",
    "base_model_name_or_path",
    "fan_in_fan_out",
    "use_dora",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
    "lora_bias",
    "bias",
    "task_type",
    "peft_version",
    "auto_mapping",
)


#: the end of the layout finding's message; ``check`` against a base drops it
CHECK_ADVICE = ". Check it against its base model: ckptdiff check ADAPTER --model BASE"


def annotate_adapter(m: Manifest, config: Mapping[str, Any] | None) -> Manifest:
    """Mark a manifest as a PEFT adapter: ``metadata["layout"]``, ``metadata["peft"]``, a finding.

    Example:
        >>> from ckptdiff.types import TensorSpec as T
        >>> k = "base_model.model.fc.lora_A.weight"
        >>> annotate_adapter(Manifest("a", "safetensors", {k: T(k, (4, 8), "float32")}),
        ...                  {"peft_type": "LORA", "r": 4}).metadata["layout"]
        'peft-lora'
    """
    cfg = {k: config[k] for k in _CONFIG_FIELDS if config and k in config}
    peft_type = str(cfg.get("peft_type") or "LORA").lower()
    modules: Counter[str] = Counter()
    lora = 0
    copies = []
    for key in m.tensors:
        rest = key[len(ADAPTER_PREFIX) :] if key.startswith(ADAPTER_PREFIX) else key
        parsed = parse_adapter_key(rest)
        if parsed is None:
            copies.append(rest)
            continue
        lora += 1
        modules[parsed.module.rsplit(".", 1)[-1]] += 1
    ranks = Counter(
        t.shape[0] for k, t in m.tensors.items() if ".lora_A." in k + "." and len(t.shape) >= 1
    )
    r = cfg.get("r")
    rank_txt = (
        f"r={r}"
        if r is not None
        else (
            f"r={ranks.most_common(1)[0][0]} (from lora_A rows; no {ADAPTER_CONFIG})"
            if ranks
            else ""
        )
    )
    alpha = f", alpha={cfg['lora_alpha']}" if "lora_alpha" in cfg else ""
    base = cfg.get("base_model_name_or_path")
    auto = cfg.get("auto_mapping")
    base_cls = auto.get("base_model_class") if isinstance(auto, Mapping) else None
    for_ = f" for {base or base_cls}" if base or base_cls else ""
    names = ", ".join(sorted(modules))
    msg = (
        f"PEFT {peft_type.upper()} adapter{for_} ({rank_txt}{alpha}): {lora} adapter tensors on "
        f"{len(_modules(m))} modules "
        f"({names})"
    )
    if copies:
        msg += (
            f", {len(copies)} full tensors saved by modules_to_save ({', '.join(copies[:3])}"
            f"{', ...' if len(copies) > 3 else ''})"
        )
    if config is None:
        msg += f"; no {ADAPTER_CONFIG} next to it"
    msg += CHECK_ADVICE
    layout = f"peft-{peft_type}"
    finding = Finding("layout", msg, (), "info", {"layout": layout, "peft": cfg})
    return replace(
        m, metadata={**m.metadata, "layout": layout, "peft": cfg}, findings=(finding, *m.findings)
    )


def _modules(m: Manifest) -> set[str]:
    out = set()
    for key in m.tensors:
        rest = key[len(ADAPTER_PREFIX) :] if key.startswith(ADAPTER_PREFIX) else key
        parsed = parse_adapter_key(rest)
        if parsed is not None:
            out.add(parsed.module)
    return out


# --- regexes from adapter_config.json --------------------------------------------------------

#: Seconds every match of one config regex may take together (``target_modules`` is a regex
#: from the adapter's author: ``(.|.)*Q`` backtracks for longer than the universe lasts).
REGEX_SECONDS = 2.0
#: The longest regex accepted from a config.
MAX_REGEX_LENGTH = 10_000
# a quantified group that itself holds a quantifier or an alternation: the shape of
# catastrophic backtracking, refused when no time-bounded engine is installed
_NESTED = re.compile(r"\((?:[^()\\]|\\.)*(?:[*+}|])(?:[^()\\]|\\.)*\)[*+{]")


class ConfigRegex:
    """A regex from ``adapter_config.json``, matched as PEFT matches it, within a time bound.

    Matching uses the ``regex`` engine with a timeout when it is installed (transformers
    depends on it); otherwise the standard ``re``, after refusing the nested-quantifier shapes
    that backtrack without end.

    Raises (from the constructor and the match methods):
        ReadError: an invalid regex, one too long, or one whose matches outlast
            :data:`REGEX_SECONDS`.

    Example:
        >>> ConfigRegex(r".*\\.(q|v)_proj", "target_modules", "a").fullmatch("l.0.q_proj")
        True
    """

    def __init__(self, pattern: str, field: str, source: str) -> None:
        self.pattern, self.field, self.source = pattern, field, source
        if len(pattern) > MAX_REGEX_LENGTH:
            raise self._error(f"is {len(pattern):,} characters long")
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as e:
            raise self._error(f"is not a valid regex ({e})") from e
        self._left = REGEX_SECONDS
        try:
            import regex

            self._engine: Any = regex.compile(pattern)
            self._timeout = True
        except Exception:  # no regex engine, or one that rejects what re accepts
            if _NESTED.search(pattern):
                raise self._error("nests quantifiers, which can take forever to match") from None
            self._engine = re.compile(pattern)
            self._timeout = False

    def _error(self, problem: str) -> ReadError:
        from ckptdiff.terminal import printable

        shown = printable(self.pattern)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return ReadError(
            f"Cannot read '{self.source}' (adapter_config.json): {self.field} regex {shown!r} "
            f"{problem}. Fix the regex in adapter_config.json."
        )

    def _run(self, method: str, text: str) -> bool:
        import time

        start = time.monotonic()
        try:
            if self._timeout:
                found = getattr(self._engine, method)(text, timeout=max(self._left, 1e-3))
            else:
                found = getattr(self._engine, method)(text)
        except TimeoutError as e:
            raise self._error(f"takes more than {REGEX_SECONDS:g} s to match module names") from e
        self._left -= time.monotonic() - start
        if self._left <= 0:
            raise self._error(f"takes more than {REGEX_SECONDS:g} s to match module names")
        return found is not None

    def fullmatch(self, text: str) -> bool:
        """``re.fullmatch(pattern, text)``, bounded."""
        return self._run("fullmatch", text)

    def search(self, text: str) -> bool:
        """``re.search(pattern, text)``, bounded."""
        return self._run("search", text)
