"""Prefix key rules: a wrapper (``module.``, ``_orig_mod.``), a moved branch, the
base-model prefix transformers adds or strips. Pure and torch-free; the first step of the
alignment.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ckptdiff.keymap import KeyMap
from ckptdiff.types import Finding, Manifest

#: Prefixes that wrappers add to every key (DDP, torch.compile, FSDP, Lightning, PEFT).
WRAPPER_PREFIXES = (
    "module.",
    "_orig_mod.",
    "model.",
    "_fsdp_wrapped_module.",
    "base_model.model.",
)


@dataclass(frozen=True)
class PrefixMatch:
    """Checkpoint keys ``strip + rest`` that are target keys ``add + rest``.

    Attributes:
        strip: prefix to remove from checkpoint keys ("" for none).
        add: prefix to put on checkpoint keys ("" for none).
        pairs: ``(checkpoint_key, target_key)`` pairs it explains.
    """

    strip: str
    add: str
    pairs: tuple[tuple[str, str], ...]

    @property
    def is_wrapper(self) -> bool:
        """True when the rule only strips or adds a known wrapper prefix (or a stack of them)."""
        p = self.strip or self.add
        if self.strip and self.add:
            return False
        while p:
            for w in WRAPPER_PREFIXES:
                if p.startswith(w):
                    p = p[len(w) :]
                    break
            else:
                return False
        return True

    def rules(self) -> list[dict[str, str]]:
        """The key-map rules (see :mod:`ckptdiff.keymap`)."""
        out = []
        if self.strip:
            out.append({"op": "strip_prefix", "prefix": self.strip})
        if self.add:
            out.append({"op": "add_prefix", "prefix": self.add})
        return out

    def options(self, side: str = "") -> str:
        """The CLI options that apply it (``--strip-prefix module.``)."""
        parts = []
        if self.strip:
            parts.append(f"--{side}strip-prefix {self.strip}")
        if self.add:
            parts.append(f"--{side}add-prefix {self.add}")
        return " ".join(parts)


def _splits(key: str) -> Iterable[tuple[str, str]]:
    """``(prefix, rest)`` at every dot boundary, the empty prefix first; rest never empty."""
    yield "", key
    i = key.find(".")
    while i != -1 and i + 1 < len(key):
        yield key[: i + 1], key[i + 1 :]
        i = key.find(".", i + 1)


def _ends_in_index(prefix: str) -> bool:
    parts = prefix.rstrip(".").rsplit(".", 1)
    return bool(prefix) and parts[-1].isdigit()


def _indices(prefix: str) -> list[str]:
    return [p for p in prefix.split(".") if p.isdigit()]


def _module_name(prefix: str) -> str:
    return next((p for p in reversed(prefix.rstrip(".").split(".")) if not p.isdigit()), "")


#: Qualifiers that make a module another one (``k_proj`` is not ``proj``).
_ROLE_QUALIFIERS = frozenset(
    {
        "q",
        "k",
        "v",
        "o",
        "query",
        "key",
        "value",
        "gate",
        "up",
        "down",
        "in",
        "out",
        "w1",
        "w2",
        "w3",
        "c",
        "fc1",
        "fc2",
        "lm",
        "pre",
        "post",
    }
)


def _similar_names(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    if not a or not b:
        return not a and not b
    short, long_ = sorted((a, b), key=len)
    if short != long_ and long_.endswith("_" + short):
        if long_[: -len(short) - 1] in _ROLE_QUALIFIERS:
            return False  # k_proj -> proj drops the role
    return short in long_ or difflib.SequenceMatcher(None, a, b).ratio() >= 0.6


def _structurally_sound(p1: str, p2: str, pairs: Sequence[tuple[str, str]]) -> bool:
    """A prefix rule keeps layer indices (``layers.1.`` never becomes ``blocks.0.`` or a
    top-level module), and one that pairs only leaves (``weight``, ``bias``) renames a module
    to a module of a similar name (``ln_final.`` -> ``final_layer_norm.``), not ``k_proj.``
    to ``norm2.`` because both hold a weight and a bias."""
    if _indices(p1) != _indices(p2):
        return False
    if not p1 or not p2 or any("." in u[len(p1) :] for u, _ in pairs):
        return True  # a prefix added or stripped keeps whole keys
    return _similar_names(_module_name(p1), _module_name(p2))


def find_prefix_matches(
    unexpected: Iterable[str], missing: Iterable[str], *, min_share: float = 0.5
) -> list[PrefixMatch]:
    """Prefix rules that pair checkpoint-only keys with target-only keys, best first.

    A rule is kept when it explains at least half of the checkpoint-only keys under its strip
    prefix and half of the target-only keys under its add prefix (so a rule built from a
    coincidental leaf name such as ``weight`` is not proposed), and each key is used once.

    Args:
        unexpected: keys only the checkpoint has.
        missing: keys only the target has.
        min_share: the share of keys under a prefix that a rule must explain.

    Returns:
        The rules, most keys explained first.

    Example:
        >>> [m.strip for m in find_prefix_matches(["module.a.w", "module.b.w"], ["a.w", "b.w"])]
        ['module.']
    """
    unexpected = list(unexpected)
    missing = list(missing)
    if not unexpected or not missing:
        return []
    by_rest: dict[str, list[str]] = defaultdict(list)
    for m in missing:
        for p2, rest in _splits(m):
            by_rest[rest].append(p2)
    counts: Counter[tuple[str, str]] = Counter()
    for u in unexpected:
        for p1, rest in _splits(u):
            for p2 in by_rest.get(rest, ()):
                if p1 != p2:
                    counts[(p1, p2)] += 1
    if not counts:
        return []

    used_u: set[str] = set()
    used_m: set[str] = set()
    missing_set = set(missing)
    out: list[PrefixMatch] = []
    for (p1, p2), _ in counts.most_common():
        pairs = []
        for u in unexpected:
            if u in used_u or not u.startswith(p1):
                continue
            t = p2 + u[len(p1) :]
            if t in missing_set and t not in used_m:
                pairs.append((u, t))
        if not pairs:
            continue
        under_p1 = sum(1 for u in unexpected if u.startswith(p1) and u not in used_u)
        under_p2 = sum(1 for m in missing if m.startswith(p2) and m not in used_m)
        if len(pairs) < min_share * under_p1 or len(pairs) < min_share * under_p2:
            continue
        match = PrefixMatch(p1, p2, tuple(pairs))
        if len(pairs) == 1 and not match.is_wrapper:
            continue
        if _ends_in_index(p1) and _ends_in_index(p2):
            continue  # layer 3 -> layer 5 is a depth difference, not a key map
        if not _structurally_sound(p1, p2, pairs):
            continue
        out.append(match)
        used_u.update(u for u, _ in pairs)
        used_m.update(t for _, t in pairs)
    out.sort(key=lambda m: -len(m.pairs))
    return out


def scoped_prefix_rules(match: PrefixMatch, checkpoint_keys: Iterable[str]) -> list[dict[str, Any]]:
    """The rules of a prefix match, limited to the keys it pairs when it would touch others.

    ``--add-prefix text_branch.`` moves every key, also an ``audio_branch.*`` that loads as it
    is (and ``--strip-prefix a. --add-prefix b.`` moves the keys outside ``a.`` too); then the
    rule becomes a rename of the paired keys' first components only
    (``^(?=(?:embeddings|encoder)\\.)`` -> ``text_branch.``).

    Example:
        >>> m = PrefixMatch("", "text_branch.", (("embeddings.w", "text_branch.embeddings.w"),))
        >>> scoped_prefix_rules(m, ["embeddings.w", "audio_branch.w"])[0]["pattern"]
        '^(?=(?:embeddings)(?:\\\\.|$))'
    """
    paired = {u for u, _ in match.pairs}
    checkpoint_keys = list(checkpoint_keys)
    # an add_prefix rule moves every key, also those outside the strip prefix
    if not match.add or all(k in paired for k in checkpoint_keys):
        return match.rules()
    if match.strip and all(k in paired for k in checkpoint_keys if k.startswith(match.strip)):
        # every key under the stripped prefix moves: one rename of that prefix says it
        return [{"op": "rename", "pattern": "^" + re.escape(match.strip), "replacement": match.add}]
    heads = sorted({u[len(match.strip) :].split(".", 1)[0] for u in paired})
    alternatives = "|".join(re.escape(h) for h in heads)
    return [
        {
            "op": "rename",
            "pattern": f"^{re.escape(match.strip)}(?=(?:{alternatives})(?:\\.|$))",
            "replacement": match.add,
        }
    ]


def base_model_prefix_keymap(
    checkpoint: Manifest, target: Manifest, key_map: KeyMap | None = None
) -> tuple[KeyMap | None, Finding | None]:
    """The base-model prefix rule transformers would apply, if it makes more keys match.

    A ``BertModel`` checkpoint (``embeddings.*``) loaded into ``BertForSequenceClassification``
    (``bert.embeddings.*``) gets ``bert.`` added; the reverse gets it stripped. Checkpoint keys
    whose first part is one of the target's own top-level modules (``classifier``) are left as
    they are, as transformers does key by key.

    Args:
        checkpoint: the checkpoint's manifest.
        target: the target's manifest (``metadata["base_model_prefix"]``).
        key_map: the user's rules, applied before deciding.

    Returns:
        The rule (or None) and an ``info`` finding that says what was done.
    """
    prefix = target.metadata.get("base_model_prefix")
    if not isinstance(prefix, str) or not prefix:
        return None, None
    dot = prefix + "."
    keys = [key_map.apply(k) if key_map else k for k in checkpoint.tensors]
    if not keys:
        return None, None
    ck_has = any(k.startswith(dot) for k in keys)
    target_has = any(k.startswith(dot) for k in target.tensors)
    if target_has and not ck_has:
        heads = sorted({k.split(".", 1)[0] for k in target.tensors if not k.startswith(dot)})
        own = [h for h in heads if any(k.split(".", 1)[0] == h for k in keys)]
        if own:
            pattern = "^(?!(?:" + "|".join(re.escape(h) for h in own) + r")(?:\.|$))"
            rules = [{"op": "rename", "pattern": pattern, "replacement": dot}]
        else:
            rules = [{"op": "add_prefix", "prefix": dot}]
        what = f"without the '{dot}' prefix the target puts on its base model"
        done = "adds it"
    elif ck_has and not target_has:
        rules = [{"op": "strip_prefix", "prefix": dot}]
        what = f"under the base-model prefix '{dot}', which the target does not have"
        done = "strips it"
    else:
        return None, None
    prefix_map = KeyMap.from_rules(rules)
    before = sum(1 for k in keys if k in target.tensors)
    after = sum(1 for k in keys if prefix_map.apply(k) in target.tensors)
    if after <= before:
        return None, None
    cls = str(target.metadata.get("class", target.source)).rsplit(".", 1)[-1]
    option = f"--add-prefix {dot}" if rules[0]["op"] != "strip_prefix" else f"--strip-prefix {dot}"
    finding = Finding(
        "base_model_prefix",
        f"The checkpoint holds the base model {what} ({cls}); transformers {done} when "
        f"loading, and so does this check ({after - before} more keys match).",
        (),
        "info",
        {"prefix": dot, "rules": rules, "option": option},
    )
    return prefix_map, finding
