"""Key alignment: find the prefix rules that turn unexpected + missing keys into matches.

Pure and torch-free. Given the keys only one side has, look for a prefix ``p1`` on the
checkpoint's keys and ``p2`` on the target's such that ``p1 + rest`` and ``p2 + rest`` pair
them up (``module.`` / ``_orig_mod.`` wrappers, a Lightning ``model.`` attribute, a branch moved
under ``text_branch.``...).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PrefixMatch", "WRAPPER_PREFIXES", "find_prefix_matches"]

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
        out.append(match)
        used_u.update(u for u, _ in pairs)
        used_m.update(t for _, t in pairs)
    out.sort(key=lambda m: -len(m.pairs))
    return out
