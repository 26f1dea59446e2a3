"""An open_clip-like CoCa whose weights load but whose forward pass breaks.

open_clip itself cannot be imported beside every torch (it imports torchvision), so the
README's ``ckptdiff forward`` example uses this one. As open_clip's ``coca_model.py`` did when
its issue #864 was filed, the caption decoder's vocabulary is read from ``text_cfg.vocab_size``
even when the text tower is a Hugging Face RoBERTa (50265 tokens), and the decoder's causal
mask is built for ``multimodal_cfg.context_length`` (76 in ``coca_roberta-ViT-B-32.json``,
beside this module) while the text is ``text_cfg.context_length`` (77, the ``CLIPTextCfg``
default) tokens long. The RoBERTa tower is the real ``transformers.RobertaModel`` (the ``hf``
extra), from a built-in ``roberta-base`` config (no download).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ckptdiff.examples.clip import (
    CLIPVisionCfg,
    ResidualAttentionBlock,
    Transformer,
    VisionTransformer,
)

__all__ = ["CoCa", "MultimodalCfg", "TextCfg"]

#: The ``roberta-base`` config, as on the hub (the fields that shape the model).
HF_TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "roberta-base": {
        "vocab_size": 50265,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    },
}


@dataclass
class TextCfg:
    """open_clip's ``CLIPTextCfg`` (the fields CoCa reads)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    hf_model_name: str | None = None
    hf_tokenizer_name: str | None = None
    proj: str | None = None
    output_tokens: bool = False
    hf_layers: int | None = None


@dataclass
class MultimodalCfg(TextCfg):
    """open_clip's ``MultimodalCfg``: the caption decoder."""

    mlp_ratio: int = 4
    dim_head: int = 64


def _cfg(cls: type, value: Any) -> Any:
    if isinstance(value, cls):
        return value
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in (value or {}).items() if k in known})


class HFTextEncoder(nn.Module):
    """open_clip's ``HFTextEncoder``: a transformers model, its tokens, a linear projection."""

    def __init__(self, cfg: TextCfg, output_dim: int) -> None:
        super().__init__()
        from transformers import RobertaConfig, RobertaModel

        name = cfg.hf_model_name or ""
        if name not in HF_TEXT_CONFIGS:
            raise ValueError(f"no built-in config for {name!r} (known: {sorted(HF_TEXT_CONFIGS)})")
        settings = dict(HF_TEXT_CONFIGS[name])
        if cfg.hf_layers:
            settings["num_hidden_layers"] = cfg.hf_layers
        self.config = RobertaConfig(**settings)
        self.transformer = RobertaModel(self.config, add_pooling_layer=False)
        self.proj = nn.Linear(self.config.hidden_size, output_dim, bias=False)
        pad_token_id = self.config.pad_token_id
        if pad_token_id is None:  # every built-in config has one
            raise ValueError(f"the built-in config for {name!r} has no pad_token_id")
        self.pad_token_id = pad_token_id

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = x.ne(self.pad_token_id).long()
        tokens = self.transformer(input_ids=x, attention_mask=mask).last_hidden_state
        return self.proj(tokens[:, 0]), tokens


class VisionTokens(VisionTransformer):
    """The ViT, returning the pooled latent and the patch tokens (``output_tokens=True``)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x = self.conv1(image).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.ln_post(self.transformer(x.transpose(0, 1)).transpose(0, 1))
        return x[:, 0] @ self.proj, x[:, 1:]


class CrossAttentionBlock(nn.Module):
    """Text queries attending to image tokens."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, width * mlp_ratio), nn.GELU(), nn.Linear(width * mlp_ratio, width)
        )

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, memory, memory, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class MultimodalTransformer(nn.Module):
    """open_clip's caption decoder: causal self-attention over the text tokens (mask built
    for ``context_length``), cross-attention to the image, a projection onto the vocabulary."""

    def __init__(self, cfg: MultimodalCfg, output_dim: int) -> None:
        super().__init__()
        self.context_length = cfg.context_length
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers)
        )
        self.cross_attn = nn.ModuleList(
            CrossAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, output_dim))
        mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)

    def forward(self, image_embs: torch.Tensor, text_embs: torch.Tensor) -> torch.Tensor:
        x, memory = text_embs.transpose(0, 1), image_embs.transpose(0, 1)
        for block, cross in zip(self.resblocks, self.cross_attn, strict=True):
            x = block(x, attn_mask=self.attn_mask)  # the whole mask, as open_clip then did
            x = cross(x, memory)
        return self.ln_final(x.transpose(0, 1)) @ self.text_projection


class CoCa(nn.Module):
    """open_clip's ``CoCa``, built from its JSON config (``CoCa(**model_cfg)``)."""

    def __init__(
        self,
        embed_dim: int,
        multimodal_cfg: MultimodalCfg,
        text_cfg: TextCfg,
        vision_cfg: CLIPVisionCfg,
        pad_id: int = 0,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        multimodal_cfg = _cfg(MultimodalCfg, multimodal_cfg)
        text_cfg = _cfg(TextCfg, text_cfg)
        vision_cfg = _cfg(CLIPVisionCfg, vision_cfg)
        if text_cfg.hf_model_name:
            self.text: nn.Module = HFTextEncoder(text_cfg, embed_dim)
        else:
            self.text = TextTower(text_cfg, embed_dim)
        # open_clip#864: both branches read text_cfg.vocab_size, never the HF tower's vocabulary
        vocab_size = (
            text_cfg.vocab_size if text_cfg.hf_model_name is not None else text_cfg.vocab_size
        )
        self.visual = VisionTokens(vision_cfg, embed_dim)
        self.text_decoder = MultimodalTransformer(multimodal_cfg, vocab_size)
        self.pad_id = pad_id

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        image_latent, image_embs = self.visual(image)
        text_latent, token_embs = self.text(text)
        logits = self.text_decoder(image_embs, token_embs)
        out = {"image_features": image_latent, "text_features": text_latent, "logits": logits}
        if labels is not None:  # the caption loss, as open_clip's CoCaLoss computes it
            out["loss"] = F.cross_entropy(logits.permute(0, 2, 1), labels, ignore_index=self.pad_id)
        return out


class TextTower(nn.Module):
    """open_clip's own text transformer (when no HF model is named)."""

    def __init__(self, cfg: TextCfg, output_dim: int) -> None:
        super().__init__()
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.width, output_dim))

    def forward(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        x = self.ln_final(self.transformer(x.transpose(0, 1)).transpose(0, 1))
        return x[:, 0] @ self.text_projection, x
