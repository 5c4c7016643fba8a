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


class ConvClipConfig(VisionTextDualEncoderConfig):
    """`VisionTextDualEncoderConfig` under finecap's model type; vision_config is a
    `ResNetConfig` with `hidden_size` (its last stage's width) added."""

    model_type = MODEL_TYPE


class ConvClipModel(VisionTextDualEncoderModel):
    """`VisionTextDualEncoderModel` whose ResNet image tower pools to (B, C)."""

    config_class = ConvClipConfig

    def __init__(self, config: ConvClipConfig, vision_model=None, text_model=None) -> None:  # noqa: ANN001
        super().__init__(config, vision_model, text_model)
        self.vision_model.pooler = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


AutoConfig.register(MODEL_TYPE, ConvClipConfig, exist_ok=True)
AutoModel.register(ConvClipConfig, ConvClipModel, exist_ok=True)
