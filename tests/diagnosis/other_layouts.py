"""Models with other libraries' key layouts, for the cases ckptdiff must not pair wrongly:
a timm-style ViT (``blocks.N.attn.qkv``) and an open_clip-style ResNet-50 visual tower
(``visual.layer1.0.conv1``, ``visual.attnpool``) beside the fixture CLIP's text tower."""

from __future__ import annotations

import torch
from torch import nn

from fixtures.models import build_clip


class _Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class _Block(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class TimmViT(nn.Module):
    """timm's ``VisionTransformer`` key layout (heads are not in the shapes)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        grid = (img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, grid + 1, embed_dim))
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        self.blocks = nn.Sequential(*[_Block(embed_dim, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)


def timm_vit(**kw: object) -> TimmViT:
    """``timm.create_model("vit_...", pretrained=False, **kw)`` in key layout."""
    return TimmViT(**kw)  # type: ignore[arg-type]


class _Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride),
                nn.Conv2d(inplanes, planes * 4, 1, bias=False),
                nn.BatchNorm2d(planes * 4),
            )


class _AttnPool(nn.Module):
    def __init__(self, spatial: int, dim: int, out: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(spatial**2 + 1, dim))
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out)


class ModifiedResNet(nn.Module):
    """open_clip's ``ModifiedResNet`` key layout (3-conv stem, attention pool)."""

    def __init__(
        self, layers: tuple[int, ...], output_dim: int, width: int, image_size: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        inplanes = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = [_Bottleneck(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * 4
            blocks += [_Bottleneck(inplanes, planes, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.attnpool = _AttnPool(image_size // 32, width * 32, output_dim)


def resnet_clip(
    embed_dim: int = 64,
    text_cfg: dict | None = None,
    width: int = 16,
    layers: tuple[int, ...] = (1, 1, 1, 1),
    image_size: int = 64,
) -> nn.Module:
    """An open_clip RN50-style CLIP: the fixture CLIP's text tower, a ResNet visual tower."""
    model = build_clip(
        embed_dim,
        {"width": 32, "layers": 1, "heads": 2, "patch_size": 16, "image_size": image_size},
        text_cfg,
    )
    model.visual = ModifiedResNet(layers, embed_dim, width, image_size)
    return model
