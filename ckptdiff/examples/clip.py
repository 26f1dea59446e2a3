"""An open_clip-like CLIP, built the way ``open_clip.create_model`` builds it.

:func:`build_clip` takes open_clip's nested config dicts (``vision_cfg``, ``text_cfg``) and
makes a model with open_clip's key names (``visual.transformer.resblocks.0.attn.in_proj_weight``,
``token_embedding.weight``...), its explicit init and its final ``.to(device)``: the kind of
factory ``ckptdiff check --model ckptdiff.examples.clip:build_clip --config CONFIG.json`` builds
on meta. open_clip itself cannot be imported beside every torch (it imports torchvision), so the
README's examples use this one. Presets: :data:`VIT_B_16`, :data:`VIT_B_32`, :data:`VIT_L_14`,
:data:`VIT_L_14_336` (open_clip's shapes, full size).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "CLIP",
    "CLIPTextCfg",
    "CLIPVisionCfg",
    "VIT_B_16",
    "VIT_B_32",
    "VIT_L_14",
    "VIT_L_14_336",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "build_clip",
]


@dataclass
class CLIPVisionCfg:
    """Vision tower settings, as open_clip's ``CLIPVisionCfg`` (``heads`` defaults to width/64)."""

    width: int = 768
    layers: int = 12
    heads: int | None = None
    patch_size: int = 16
    image_size: int = 224
    mlp_ratio: float = 4.0


@dataclass
class CLIPTextCfg:
    """Text tower settings, as open_clip's ``CLIPTextCfg``."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: float = 4.0


class ResidualAttentionBlock(nn.Module):
    """``ln_1``, ``attn`` (``nn.MultiheadAttention``: fused ``in_proj``), ``ln_2``, ``mlp``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", nn.GELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``resblocks.{i}``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


class VisionTransformer(nn.Module):
    """open_clip's ViT: ``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
    ``transformer``, ``ln_post``, ``proj``."""

    def __init__(self, cfg: CLIPVisionCfg, output_dim: int) -> None:
        super().__init__()
        width, heads = cfg.width, cfg.heads or max(cfg.width // 64, 1)
        grid = cfg.image_size // cfg.patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(
            3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, heads, cfg.mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """open_clip's ``CLIP``: ``visual.*`` plus the text tower at the top level."""

    attn_mask: torch.Tensor

    def __init__(self, embed_dim: int, vision_cfg: CLIPVisionCfg, text_cfg: CLIPTextCfg) -> None:
        super().__init__()
        self.context_length = text_cfg.context_length
        self.visual = VisionTransformer(vision_cfg, embed_dim)
        self.transformer = Transformer(
            text_cfg.width, text_cfg.layers, text_cfg.heads, text_cfg.mlp_ratio
        )
        self.vocab_size = text_cfg.vocab_size
        self.token_embedding = nn.Embedding(text_cfg.vocab_size, text_cfg.width)
        self.positional_embedding = nn.Parameter(
            torch.empty(text_cfg.context_length, text_cfg.width)
        )
        self.ln_final = nn.LayerNorm(text_cfg.width)
        self.text_projection = nn.Parameter(torch.empty(text_cfg.width, embed_dim))
        self.register_buffer("attn_mask", self.build_attention_mask(), persistent=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.init_parameters()

    def build_attention_mask(self) -> torch.Tensor:
        """Causal mask, ``-inf`` above the diagonal (as open_clip)."""
        mask = torch.empty(self.context_length, self.context_length)
        mask.fill_(float("-inf"))
        mask.triu_(1)
        return mask

    def init_parameters(self) -> None:
        """open_clip's explicit init (``nn.init.normal_`` with per-tensor std)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width = self.transformer.width
        layers = len(self.transformer.resblocks)
        proj_std = (width**-0.5) * ((2 * max(layers, 1)) ** -0.5)
        attn_std = width**-0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.get_parameter("attn.in_proj_weight"), std=attn_std)
            nn.init.normal_(block.get_parameter("attn.out_proj.weight"), std=proj_std)
            nn.init.normal_(block.get_parameter("mlp.c_fc.weight"), std=fc_std)
            nn.init.normal_(block.get_parameter("mlp.c_proj.weight"), std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        mask = self.attn_mask[: text.shape[1], : text.shape[1]]
        x = self.transformer(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


_CLIP_EXTRA = {"quick_gelu", "custom_text", "cast_dtype"}  # open_clip config keys with no weights


def build_clip(
    embed_dim: int = 512,
    vision_cfg: dict[str, Any] | None = None,
    text_cfg: dict[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    **kw: Any,
) -> CLIP:
    """Build an open_clip-like CLIP the way ``open_clip.create_model`` does.

    Args:
        embed_dim: the joint embedding width (``visual.proj`` / ``text_projection`` columns).
        vision_cfg: overrides of :class:`CLIPVisionCfg` (``width``, ``layers``, ``heads``,
            ``patch_size``, ``image_size``, ``mlp_ratio``).
        text_cfg: overrides of :class:`CLIPTextCfg` (``width``, ``layers``, ``heads``,
            ``context_length``, ``vocab_size``, ``mlp_ratio``).
        device: moved to at the end, as open_clip does (``.to(device)``).
        precision: ``fp32``, ``fp16`` (``.half()``) or ``bf16``.
        **kw: open_clip config keys that carry no weights (``quick_gelu``...), accepted and
            ignored; anything else is a ``TypeError``.

    Example:
        >>> model = build_clip(**VIT_B_16)  # doctest: +SKIP
        >>> model.visual.positional_embedding.shape  # doctest: +SKIP
        torch.Size([197, 768])
    """
    unknown = set(kw) - _CLIP_EXTRA
    if unknown:
        raise TypeError(f"build_clip() got unexpected keyword arguments: {sorted(unknown)}")
    vision = CLIPVisionCfg(**(vision_cfg or {}))
    text = CLIPTextCfg(**(text_cfg or {}))
    model = CLIP(embed_dim, vision, text)
    model.to(device)
    if precision == "fp16":
        model.half()
    elif precision == "bf16":
        model.to(torch.bfloat16)
    elif precision != "fp32":
        raise ValueError(f"precision must be fp32, fp16 or bf16, not {precision!r}")
    return model


def _clip_preset(embed_dim: int, vision: CLIPVisionCfg, text: CLIPTextCfg) -> dict[str, Any]:
    return {"embed_dim": embed_dim, "vision_cfg": asdict(vision), "text_cfg": asdict(text)}


#: open_clip ViT-B-16: embed 512; vision width 768, 12 layers, patch 16, 224 px; text 512 wide.
VIT_B_16: dict[str, Any] = _clip_preset(
    512,
    CLIPVisionCfg(width=768, layers=12, heads=12, patch_size=16, image_size=224),
    CLIPTextCfg(width=512, layers=12, heads=8, context_length=77, vocab_size=49408),
)
#: open_clip ViT-B-32: as ViT-B-16 with patch 32.
VIT_B_32: dict[str, Any] = copy.deepcopy(VIT_B_16)
VIT_B_32["vision_cfg"]["patch_size"] = 32
#: open_clip ViT-L-14: embed 768; vision width 1024, 24 layers, 16 heads, patch 14; text 768 wide.
VIT_L_14: dict[str, Any] = _clip_preset(
    768,
    CLIPVisionCfg(width=1024, layers=24, heads=16, patch_size=14, image_size=224),
    CLIPTextCfg(width=768, layers=12, heads=12, context_length=77, vocab_size=49408),
)
#: open_clip ViT-L-14-336: as ViT-L-14 at 336 px (577 positions).
VIT_L_14_336: dict[str, Any] = copy.deepcopy(VIT_L_14)
VIT_L_14_336["vision_cfg"]["image_size"] = 336
