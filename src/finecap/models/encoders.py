"""Image encoders: pixels (or precomputed features) -> region features + a pooled feature.

Three encoders are registered here:
- `small_cnn`: a small CNN trained from scratch (the scenes world default);
- `resnet50`: a Hugging Face `ResNetModel` without its classifier, giving the 7x7x2048 grid
  of Show, Attend and Tell / Up-Down style captioners;
- `clip`: the Hugging Face `CLIPVisionModel`, giving the patch grid as in CLIP-ViL.
`open_clip` (`finecap.models.open_clip_encoder`): a CLIP ResNet's grid before its attention
pool, from open_clip checkpoints (CLIP RN50, as Cho et al. 2022).

Every encoder accepts precomputed backbone features through `encode_features`, and the pixel
path is `encode_features(backbone(pixels))`, so both give identical outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from torch import Tensor, nn

from finecap.config import NonNegativeInt, PositiveInt, Settings
from finecap.hub import from_pretrained
from finecap.registry import Registry


class EncoderConfig(Settings):
    """Settings every encoder has; each registered encoder extends it with its own."""

    name: str = "small_cnn"
    """Registered encoder name (`list_encoders()`): small_cnn, resnet50, clip or open_clip."""
    freeze: bool = False
    """Keep the backbone's weights fixed (feature extraction only)."""
    unfreeze_after_epochs: NonNegativeInt | None = None
    """With freeze: train the backbone from this epoch on (counted from 0: 2 = after two
    epochs frozen), at lr x optim.encoder_lr_scale, its batch-norm statistics kept frozen
    (`finecap.train.finetune`). None: frozen throughout (or trained throughout, without freeze)."""

    @model_validator(mode="after")
    def _unfreeze_needs_freeze(self) -> EncoderConfig:
        if self.unfreeze_after_epochs is not None and not self.freeze:
            raise ValueError(
                "unfreeze_after_epochs needs freeze: true (the backbone is frozen until then)"
            )
        return self


class SmallCNNConfig(EncoderConfig):
    name: Literal["small_cnn"] = "small_cnn"
    image_size: int = Field(96, ge=16)
    """Input side in pixels; the grid is image_size / 8 on a side."""
    width: int = Field(128, ge=4, multiple_of=4)
    """Channels of the last layer (= feature size D); the stages have D/4, D/2, D."""
    convs_per_stage: PositiveInt = 1
    """3x3 convs at each of the three resolutions (1 = the original 4-layer net)."""


class HFEncoderConfig(EncoderConfig):
    """A Hugging Face backbone: pretrained weights, or a random one built from `hf_config`."""

    pretrained: str | None = None
    """Hugging Face hub name or local folder. None: random initialisation from hf_config."""
    hf_config: dict[str, Any] = {}
    """Config fields of a randomly initialised backbone (tests, tiny models)."""
    processor_dir: str | None = None
    """Image processor folder for a random backbone (None: resize + ImageNet normalisation)."""


class ResNet50Config(HFEncoderConfig):
    name: Literal["resnet50"] = "resnet50"


class CLIPEncoderConfig(HFEncoderConfig):
    name: Literal["clip"] = "clip"


@dataclass
class EncoderOutput:
    regions: Tensor  # (B, R, D)
    mask: Tensor | None  # (B, R) True where a region is real; None = all real
    pooled: Tensor  # (B, D)

    def repeat_interleave(self, n: int) -> EncoderOutput:
        """Each image n times in a row: (B, ...) -> (B*n, ...), for beams and samples."""
        mask = None if self.mask is None else self.mask.repeat_interleave(n, 0)
        return EncoderOutput(
            self.regions.repeat_interleave(n, 0), mask, self.pooled.repeat_interleave(n, 0)
        )


def masked_mean(regions: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over real regions: (B, R, D) -> (B, D)."""
    if mask is None:
        return regions.mean(1)
    weights = mask.unsqueeze(-1).to(regions.dtype)
    return (regions * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class Encoder(nn.Module, ABC):
    """Base class: subclasses implement `backbone` and `preprocess`."""

    feature_dim: int

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        # Training state, not settings: `set_frozen` changes them when a schedule unfreezes
        # the backbone (`finecap.train.finetune`).
        self.frozen = config.freeze
        self.batchnorm_frozen = False

    @abstractmethod
    def preprocess(self, images: list[Image.Image]) -> Tensor:
        """RGB PIL images -> pixels (B, 3, S, S) normalised as the backbone expects."""

    @property
    @abstractmethod
    def input_side(self) -> int:
        """Side in pixels of the images `preprocess` makes (the training cache keeps images
        no larger than this)."""

    @abstractmethod
    def backbone(self, pixels: Tensor) -> Tensor:
        """Pixels (B, 3, S, S) -> backbone features (B, R, D)."""

    def save_backbone_config(self, folder: Path) -> None:
        """Write what rebuilds a pretrained backbone offline (its config, not its weights) into
        a saved captioner's folder; nothing for encoders built from their settings alone."""

    def encode_features(self, regions: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """Precomputed backbone features (B, R, D) -> EncoderOutput."""
        return EncoderOutput(regions, mask, masked_mean(regions, mask))

    def forward(self, pixels: Tensor) -> EncoderOutput:
        if self.frozen:
            with torch.no_grad():
                return self.encode_features(self.backbone(pixels))
        return self.encode_features(self.backbone(pixels))

    def _freeze_if_asked(self, module: nn.Module) -> None:
        if self.config.freeze:
            module.requires_grad_(False)
            module.eval()

    def set_frozen(self, frozen: bool) -> None:
        """Freeze the encoder's weights, or train them with its batch-norm statistics kept as
        they are (a pretrained backbone fine-tuned on small batches: Detectron's practice)."""
        self.frozen = frozen
        self.batchnorm_frozen = not frozen
        self.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        if self.frozen:  # frozen backbones keep batch-norm statistics and no dropout
            for child in self.children():
                child.eval()
        elif self.batchnorm_frozen:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


_ENCODERS: Registry[Encoder] = Registry("encoder")
register_encoder = _ENCODERS.register
list_encoders = _ENCODERS.names
encoder_config_class = _ENCODERS.config_class


def encoder_config(name: str = "small_cnn", **settings: Any) -> EncoderConfig:
    """The validated settings of encoder `name`, e.g. encoder_config("clip", pretrained=...)."""
    return encoder_config_class(name).load({"name": name, **settings}, "encoder")


def create_encoder(config: EncoderConfig, backbone_dir: Path | None = None) -> Encoder:
    """`backbone_dir`: a saved captioner's backbone/ folder (config + image processor), which
    rebuilds a pretrained backbone offline; its weights come from the captioner's file."""
    if backbone_dir is not None:
        return _ENCODERS.create(config.name, config, backbone_dir=backbone_dir)
    return _ENCODERS.create(config.name, config)


def _normalise(images: list[Image.Image], size: int, mean: tuple, std: tuple) -> Tensor:
    """Resize (bicubic) to size x size and normalise per channel -> (B, 3, size, size)."""
    arrays = [
        np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32)
        for img in images
    ]
    # contiguous: a channels-last view here makes torch 2.13's CPU conv backward segfault.
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() / 255.0
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


@register_encoder("small_cnn", config=SmallCNNConfig)
class SmallCNN(Encoder):
    """Three stride-2 stages and a last stride-1 conv: 96 px -> 12x12 grid + learned positions.

    Each stage is one stride-2 conv followed by `convs_per_stage - 1` stride-1 convs; with 2
    per stage the receptive field (59 px) covers the largest scenes object, which shape
    recognition needs. Positions matter in the scenes world: relations (left of, above) are
    geometry, and convs with global attention on top are otherwise nearly translation invariant.
    """

    MEAN = (0.5, 0.5, 0.5)
    STD = (0.25, 0.25, 0.25)

    def __init__(self, config: SmallCNNConfig) -> None:
        super().__init__(config)
        w = config.width
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (w // 4, w // 2, w):
            for k in range(config.convs_per_stage):
                layers += _conv_bn_relu(c_in, c_out, stride=2 if k == 0 else 1)
                c_in = c_out
        layers += _conv_bn_relu(w, w, stride=1)
        self.convs = nn.Sequential(*layers)
        side = -(-config.image_size // 8)  # three stride-2 layers, rounding up
        self.position = nn.Parameter(torch.zeros(1, side * side, w))
        self.feature_dim = w
        self._freeze_if_asked(self)

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        return _normalise(images, self.config.image_size, self.MEAN, self.STD)

    @property
    def input_side(self) -> int:
        return self.config.image_size

    def backbone(self, pixels: Tensor) -> Tensor:
        grid = self.convs(pixels)  # (B, D, S/8, S/8)
        return grid.flatten(2).transpose(1, 2) + self.position  # (B, R, D)


def _processor(folder: str | Path | None):  # noqa: ANN202 (a transformers image processor)
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder) if folder else None


class HFImageEncoder(Encoder):
    """Shared loading for Hugging Face backbones: pretrained folder/hub name or a config."""

    model_class: type
    config_class: type
    what: str

    def __init__(self, config: HFEncoderConfig, backbone_dir: Path | None = None) -> None:
        super().__init__(config)
        from transformers import AutoImageProcessor

        if backbone_dir is not None:  # a saved captioner: architecture and processor only
            self.model = self.model_class(self.config_class.from_pretrained(backbone_dir))
            has_processor = (backbone_dir / "preprocessor_config.json").is_file()
            self.processor = _processor(backbone_dir if has_processor else None)
        elif config.pretrained:
            self.model = from_pretrained(self.model_class, config.pretrained, self.what)
            self.processor = from_pretrained(AutoImageProcessor, config.pretrained, self.what)
        else:
            self.model = self.model_class(self.config_class(**config.hf_config))
            self.processor = _processor(config.processor_dir)
        self._freeze_if_asked(self.model)

    def save_backbone_config(self, folder: Path) -> None:
        """Write the backbone config and image processor (not the weights) into folder."""
        self.model.config.save_pretrained(folder)
        if self.processor is not None:
            self.processor.save_pretrained(folder)

    @property
    def input_side(self) -> int:
        processor = self.processor
        crop = getattr(processor, "crop_size", None) or {}
        size = getattr(processor, "size", None) or {}
        side = crop.get("height") or size.get("shortest_edge") or size.get("height")
        return int(side or getattr(self.model.config, "image_size", 224))

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        if self.processor is not None:
            return self.processor(images=images, return_tensors="pt")["pixel_values"]
        size = self.model.config.image_size if hasattr(self.model.config, "image_size") else 224
        return _normalise(images, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@register_encoder("resnet50", config=ResNet50Config)
class ResNetGrid(HFImageEncoder):
    """ResNet-50 without pooling/classifier: the last stage's 7x7 grid (B, 49, 2048)."""

    what = "ResNet-50"

    def __init__(self, config: ResNet50Config, backbone_dir: Path | None = None) -> None:
        from transformers import ResNetConfig, ResNetModel

        self.model_class, self.config_class = ResNetModel, ResNetConfig
        super().__init__(config, backbone_dir)
        self.feature_dim = self.model.config.hidden_sizes[-1]

    def backbone(self, pixels: Tensor) -> Tensor:
        grid = self.model(pixel_values=pixels).last_hidden_state  # (B, D, h, w)
        return grid.flatten(2).transpose(1, 2)


@register_encoder("clip", config=CLIPEncoderConfig)
class CLIPGrid(HFImageEncoder):
    """CLIP ViT patch tokens (class token dropped) after the final layer norm: (B, P, D)."""

    what = "CLIP vision"

    def __init__(self, config: CLIPEncoderConfig, backbone_dir: Path | None = None) -> None:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.model_class, self.config_class = CLIPVisionModel, CLIPVisionConfig
        super().__init__(config, backbone_dir)
        self.feature_dim = self.model.config.hidden_size

    def backbone(self, pixels: Tensor) -> Tensor:
        hidden = self.model(pixel_values=pixels).last_hidden_state  # (B, 1 + P, D)
        # transformers 4 wraps the layers in `.vision_model`; transformers 5 does not.
        vision = getattr(self.model, "vision_model", self.model)
        return vision.post_layernorm(hidden[:, 1:])
