"""A CLIP with a convolutional image tower, as a Hugging Face model.

Hugging Face's `VisionTextDualEncoderModel` joins any image tower to any text tower with
CLIP's projections and learned temperature, but it projects the image tower's
`pooler_output` as a (B, C) vector, and a `ResNetModel` pools to (B, C, 1, 1). `ConvClipModel`
is that dual encoder with the ResNet's parameter-free pooler flattened, registered with
`AutoConfig` / `AutoModel` under its own model type, so `save_pretrained` /
`AutoModel.from_pretrained` round-trip it (once finecap is imported) and every finecap user of
a CLIP (`finecap.clip.embed.load_clip`) takes it unchanged.

Why a ResNet: trained from scratch on the scenes world with the shape labels given directly,
a ResNet with batch norm names the salient object's shape 79 % of the time after 450 steps,
a ConvNeXt 22 % and the ViT of `CLIPModel` 22 % after 600 (`scripts/vision_probe.py`, README
"What the scenes CLIP sees").
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
)

from finecap.clip.config import resnet_stride

MODEL_TYPE = "finecap_conv_clip"


class AttentionPool(nn.Module):
    """CLIP's attention pooling of a ResNet grid (Radford et al. 2021, their modified ResNet):
    the grid's mean, as a query, attends over the mean and every cell, each with a learned
    position embedding; (B, C, g, g) -> (B, C).

    Unlike an average, it keeps where things are (a relation: which object is left) and can
    attend to the objects rather than the background around them.
    """

    def __init__(self, width: int, grid: int, heads: int) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(grid * grid + 1, width) / width**0.5)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        cells = grid.flatten(2).transpose(1, 2)  # (B, g*g, C), row-major
        tokens = torch.cat([cells.mean(1, keepdim=True), cells], dim=1) + self.position
        pooled, _ = self.attention(tokens[:, :1], tokens, tokens, need_weights=False)
        return pooled[:, 0]  # (B, C)


class GatedPool(nn.Module):
    """An average of the grid weighted by a learned objectness gate: sigmoid(1x1 conv) per
    cell; (B, C, g, g) -> (B, C).

    Why: in a plain average a 16-px object fills 1 of the 36 cells and the background the rest,
    so the image vector is mostly background; weighting cells by "an object is here" keeps
    every object in proportion to its area. With dense supervision the gate is also taught
    where the objects are (`gate_logits`, `finecap.clip.dense.objectness_loss`). Measured on the
    scenes world (README, "What the scenes CLIP sees"): a few points of the shape probe, not
    more — most of what the image vector lacks, the grid lacks too.
    """

    def __init__(self, width: int, coords: CoordMix | None = None) -> None:
        super().__init__()
        self.gate = nn.Conv2d(width, 1, kernel_size=1)
        self.coords = coords  # where each cell is, mixed in before pooling

    def gate_logits(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, g, g) -> (B, g*g) objectness logits, row-major."""
        return self.gate(grid).flatten(1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.gate(grid))  # (B, 1, g, g)
        if self.coords is not None:
            grid = self.coords(grid)
        return (weights * grid).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1e-6)


class CoordMix(nn.Module):
    """Where each cell is, mixed into its features before pooling (CoordConv, Liu et al.
    2018): grid + ReLU(1x1 conv of [grid, x, y]), x and y in [-1, 1]; (B, C, g, g) -> the same.

    Why: a pooled average of convolutional features says what is in the image but hardly
    where (a convolution is translation-equivariant), and a relation needs "the red object's
    x". With the cell's coordinates beside its features, a channel can be "red, and how far
    right", and the pool then keeps each colour's position.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(width + 2, width, kernel_size=1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        b, _, h, w = grid.shape
        ys = torch.linspace(-1, 1, h, device=grid.device, dtype=grid.dtype)
        xs = torch.linspace(-1, 1, w, device=grid.device, dtype=grid.dtype)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        where = torch.stack([x, y]).expand(b, 2, h, w)
        return grid + torch.relu(self.mix(torch.cat([grid, where], dim=1)))


POOLS = ("avg", "max", "attention", "gated")


def make_pool(config: ConvClipConfig) -> nn.Module:
    """The module that turns the ResNet's last grid into the image vector (`config.pool`)."""
    if config.pool == "attention":
        vision = config.vision_config
        grid = vision.image_size // resnet_stride(len(vision.hidden_sizes))
        return AttentionPool(vision.hidden_size, grid, config.pool_heads)
    if config.pool == "gated":
        width = config.vision_config.hidden_size
        return GatedPool(width, CoordMix(width) if config.pool_coords else None)
    pool = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}[config.pool](1)
    return nn.Sequential(pool, nn.Flatten(1))


class ConvClipConfig(VisionTextDualEncoderConfig):
    """`VisionTextDualEncoderConfig` under finecap's model type; vision_config is a
    `ResNetConfig` with `hidden_size` (its last stage's width) added. `pool`: how the last
    stage's grid becomes one vector, "avg" (ResNet's own), "max" (a small object's
    features are not averaged away by the background's), "attention" (CLIP's attention
    pooling, `pool_heads` heads) or "gated" (an average weighted by a learned objectness gate,
    `GatedPool`); `pool_coords`: the gated pool mixes each cell's coordinates into its
    features first (`CoordMix`)."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        pool: str = "avg",
        pool_heads: int = 8,
        pool_coords: bool = False,
        **kwargs,  # noqa: ANN003
    ) -> None:
        super().__init__(**kwargs)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}, not {pool!r}")
        if pool_coords and pool != "gated":
            raise ValueError(f"pool_coords needs the gated pool, not {pool!r}")
        self.pool, self.pool_heads, self.pool_coords = pool, pool_heads, pool_coords


class ConvClipModel(VisionTextDualEncoderModel):
    """`VisionTextDualEncoderModel` whose ResNet image tower pools to (B, C) (`config.pool`)."""

    config_class = ConvClipConfig

    def __init__(self, config: ConvClipConfig, vision_model=None, text_model=None) -> None:  # noqa: ANN001
        super().__init__(config, vision_model, text_model)
        self.vision_model.pooler = make_pool(config)  # (B, C, g, g) -> (B, C)


AutoConfig.register(MODEL_TYPE, ConvClipConfig, exist_ok=True)
AutoModel.register(ConvClipConfig, ConvClipModel, exist_ok=True)
