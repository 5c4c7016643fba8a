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

from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
)

MODEL_TYPE = "finecap_conv_clip"


POOLS = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}


class ConvClipConfig(VisionTextDualEncoderConfig):
    """`VisionTextDualEncoderConfig` under finecap's model type; vision_config is a
    `ResNetConfig` with `hidden_size` (its last stage's width) added. `pool`: how the last
    stage's grid becomes one vector, "avg" (ResNet's own) or "max" (a small object's
    features are not averaged away by the background's)."""

    model_type = MODEL_TYPE

    def __init__(self, pool: str = "avg", **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {sorted(POOLS)}, not {pool!r}")
        self.pool = pool


class ConvClipModel(VisionTextDualEncoderModel):
    """`VisionTextDualEncoderModel` whose ResNet image tower pools to (B, C) (`config.pool`)."""

    config_class = ConvClipConfig

    def __init__(self, config: ConvClipConfig, vision_model=None, text_model=None) -> None:  # noqa: ANN001
        super().__init__(config, vision_model, text_model)
        pool = POOLS[config.pool](1)
        self.vision_model.pooler = nn.Sequential(pool, nn.Flatten(1))  # (B, C, g, g) -> (B, C)


AutoConfig.register(MODEL_TYPE, ConvClipConfig, exist_ok=True)
AutoModel.register(ConvClipConfig, ConvClipModel, exist_ok=True)
