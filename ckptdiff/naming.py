"""What key names say: which modules are token embeddings, output heads, position tables, MLPs
or classifier heads, and which keys sit in numbered layer containers. Pure.

The cause rules, the lint, the solver and the audit read these tuples; a name added here is
known to all of them.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from itertools import accumulate, chain, repeat
from operator import itemgetter

__all__ = [
    "CLASS_HEADS",
    "DECODER_PROJECTIONS",
    "EMBED_NAMES",
    "HEAD_NAMES",
    "LAYER_INDEX",
    "MLP_HINTS",
    "POSITION_HINTS",
    "VOCAB_HEAD_ROWS",
    "containers",
    "deepest_modules",
    "has_part",
    "key_parts",
    "keys_holding",
]

#: One key component that is a layer index (``layers.3``); ASCII, bounded.
LAYER_INDEX = re.compile(r"^[0-9]{1,18}$")

#: Token embeddings: their rows are the vocabulary. In the order the audit looks for them.
EMBED_NAMES = (
    "embed_tokens",
    "word_embeddings",
    "wte",
    "tok_embeddings",
    "embed_in",
    "token_embedding",
    "shared",
    "word_embedding",
    "tok_embedding",
)
#: Output heads (modules named so at any depth).
HEAD_NAMES = ("lm_head", "embed_out", "output", "decoder")
#: Output heads whose rows are the vocabulary.
VOCAB_HEAD_ROWS = ("lm_head", "embed_out")
#: A decoder's output projections whose wide dim is the vocabulary
#: (``text_decoder.text_projection [768, 49408]``).
DECODER_PROJECTIONS = ("text_projection", "output_projection", "proj_out", "lm_head", "output")
#: Position tables, matched as key components and as substrings.
POSITION_HINTS = (
    "positional_embedding",
    "position_embedding",
    "position_embeddings",
    "pos_embed",
    "wpe",
    "pos_embedding",
    "positional_embeddings",
)
#: Classifier heads: their rows are the number of classes.
CLASS_HEADS = ("classifier", "head", "fc", "score", "heads", "classification_head", "cls_head")
#: MLP layers: their width is the intermediate size.
MLP_HINTS = (
    "mlp",
    "ffn",
    "feed_forward",
    "intermediate",
    "fc1",
    "fc2",
    "c_fc",
    "gate_proj",
    "up_proj",
    "down_proj",
    "w1",
    "w2",
    "w3",
    "dense_h_to_4h",
    "dense_4h_to_h",
)


def key_parts(key: str) -> list[str]:
    """The dotted components of a key."""
    return key.split(".")


def has_part(key: str, names: Iterable[str]) -> bool:
    """Whether one of ``names`` is a whole component of ``key``.

    Example:
        >>> has_part("model.embed_tokens.weight", EMBED_NAMES), has_part("unshared.w", EMBED_NAMES)
        (True, False)
    """
    parts = set(key_parts(key))
    return any(n in parts for n in names)


#: A recurrent layer's parameters carry the layer index in the leaf name: ``weight_ih_l2``,
#: ``bias_hh_l0_reverse`` (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``); their container is written
#: ``rnn.*_l`` (its layers ``rnn.*_l{0-3}``).
RNN_LEAF = re.compile(r"^(?:weight|bias)_(?:ih|hh|hr)_l([0-9]{1,9})(_reverse)?$")
RNN_SUFFIX = ".*_l"


def containers(keys: Iterable[str]) -> dict[str, set[int]]:
    """``container template -> indices``: ``visual.transformer.resblocks -> {0..23}``, and
    ``rnn.*_l -> {0, 1}`` for an ``nn.LSTM`` at ``rnn`` with two layers.

    Indices below the first are written ``#`` in the template (``blocks.#.experts``). Keys
    are read in whole-list passes (one regex over all of them); Python runs once per distinct
    key skeleton (the key with its indices written ``#``) and per distinct (container, index).

    Example:
        >>> dict(containers(["h.0.w", "h.1.w", "w"]))
        {'h': {0, 1}}
        >>> dict(containers(["rnn.weight_ih_l0", "rnn.weight_hh_l1_reverse"]))
        {'rnn.*_l': {0, 1}}
    """
    keys = list(keys)
    joined = "\n".join(keys)
    if "#" in joined or joined.count("\n") != len(keys) - 1 or _RNN_ANYWHERE.search(joined):
        return _containers_one_by_one(keys)  # keys of their own "#" or lines; recurrent layers
    pieces = _INDEX_PART.split(joined)  # text and indices alternate
    values = pieces[1::2]  # every key's indices, in order
    skeletons = "#".join(pieces[0::2]).split("\n")
    del pieces
    # each "#" of a skeleton: the container it indexes (None for a first component)
    containers_of = {}
    for skeleton in dict.fromkeys(skeletons):
        parts = skeleton.split(".")
        containers_of[skeleton] = [
            ".".join(parts[:i]) if i else None for i, p in enumerate(parts) if p == "#"
        ]
    named = chain.from_iterable(map(containers_of.__getitem__, skeletons))
    out: dict[str, set[int]] = defaultdict(set)
    for container, value in dict.fromkeys(zip(named, values, strict=True)):
        if container is not None:
            out[container].add(int(value))
    return out


def _containers_one_by_one(keys: Iterable[str]) -> dict[str, set[int]]:
    """:func:`containers` a key at a time: for keys with line breaks or ``#`` of their own,
    and for recurrent layers."""
    out: dict[str, set[int]] = defaultdict(set)
    for key in keys:
        parts = key_parts(key)
        for i, p in enumerate(parts):
            if LAYER_INDEX.match(p) and i:
                tmpl = ".".join("#" if LAYER_INDEX.match(q) else q for q in parts[:i])
                out[tmpl].add(int(p))
        if len(parts) > 1 and (m := RNN_LEAF.match(parts[-1])):
            base = ".".join("#" if LAYER_INDEX.match(q) else q for q in parts[:-1])
            out[base + RNN_SUFFIX].add(int(m.group(1)))
    return out


#: :data:`LAYER_INDEX` over keys joined by line breaks: a whole component of digits, as one
#: group (for ``split``); a digit first, so the regex engine skips to digits, then a look back
#: at the character before it (a dot, a line break, the start).
_INDEX_PART = re.compile(r"([0-9](?<![^.\n][0-9])[0-9]{0,17})(?![^.\n])")
#: A leaf :data:`RNN_LEAF` might match, anywhere in keys joined by line breaks.
_RNN_ANYWHERE = re.compile(r"(?:weight|bias)_(?:ih|hh|hr)_l[0-9]")


def deepest_modules(keys: Iterable[str], depth: int) -> list[tuple[str, int]]:
    """Every key's deepest module at most ``depth`` components down, and how many components
    it has: its first ``min(depth, components - 1)`` components (a key of one component, or
    depth 0, is in module ``""`` of 0 components). In whole-list passes.

    Example:
        >>> deepest_modules(["a.b.c.w", "a.w", "w"], 2)
        [('a.b', 2), ('a', 1), ('', 0)]
    """
    # a key's first ``depth`` components and the rest (or all of them, when fewer): the
    # module is every piece but the last
    pieces = list(map(str.split, keys, repeat("."), repeat(max(depth, 0))))
    modules = map(".".join, map(itemgetter(slice(-1)), pieces))
    return list(zip(modules, map((-1).__add__, map(len, pieces)), strict=True))


def keys_holding(keys: Iterable[str], words: Iterable[str]) -> list[str]:
    """The keys ``k`` for which ``k + "\\n"`` holds one of ``words``, in their order (a word
    ending in ``\\n`` stands at a key's end).

    One scan of all keys per word; Python runs once per key found.

    Example:
        >>> keys_holding(["a.lm_head.weight", "b.w", "c.output"], ["lm_head", ".output\\n"])
        ['a.lm_head.weight', 'c.output']
    """
    keys = list(keys)
    if not keys:
        return []
    text = "\n".join(keys) + "\n"
    starts: list[int] = []
    found: set[int] = set()
    for word in words:
        at = text.find(word) if word else -1
        if at < 0:
            continue
        if not starts:  # where each key's line starts
            starts = list(accumulate(map((1).__add__, map(len, keys)), initial=0))
        while at >= 0:
            line = bisect_right(starts, at) - 1
            found.add(line)
            at = text.find(word, starts[line + 1])  # on from the next key
    return [keys[i] for i in sorted(found)]


def in_container(key: str, container: str) -> bool:
    """Whether ``key`` belongs to one layer of ``container`` (a template of :func:`containers`).

    Example:
        >>> in_container("blocks.3.fc.weight", "blocks"), in_container("rnn.bias_hh_l2", "rnn.*_l")
        (True, True)
    """
    if container.endswith(RNN_SUFFIX):
        base = re.escape(container[: -len(RNN_SUFFIX)]).replace("\\#", r"\d+")
        leaf = RNN_LEAF.pattern.lstrip("^")
        return re.match(rf"^{base}\.{leaf}", key) is not None
    rx = "^" + re.escape(container).replace("\\#", r"\d+") + r"\.\d+(\.|$)"
    return re.match(rx, key) is not None


def layer_range(container: str, n: int) -> str:
    """How the keys of ``n`` layers of ``container`` are written.

    Example:
        >>> layer_range("blocks", 12), layer_range("rnn.*_l", 4)
        ('blocks.{0-11}', 'rnn.*_l{0-3}')
    """
    sep = "" if container.endswith(RNN_SUFFIX) else "."
    return f"{container}{sep}{{0-{n - 1}}}"
