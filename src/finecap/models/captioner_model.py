"""The encoder-decoder caption model: an `Encoder` and a `Decoder` built from one config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import SerializeAsAny, WrapValidator
from torch import Tensor, nn

from finecap.config import ConfigError, Settings, by_name
from finecap.models.decoder import (
    DecoderConfig,
    DecoderOutput,
    create_decoder,
    decoder_config_class,
)
from finecap.models.encoders import (
    EncoderConfig,
    EncoderOutput,
    SmallCNNConfig,
    create_encoder,
    encoder_config_class,
)
from finecap.models.lstm import LSTMDecoderConfig


class ModelConfig(Settings):
    """What a captioner is: its encoder and its decoder, each with its own settings class."""

    encoder: Annotated[
        SerializeAsAny[EncoderConfig],
        WrapValidator(by_name("encoder", encoder_config_class, "small_cnn")),
    ] = SmallCNNConfig()
    """Image encoder; `name` picks its settings (small_cnn, resnet50, clip, open_clip)."""
    decoder: Annotated[
        SerializeAsAny[DecoderConfig],
        WrapValidator(by_name("decoder", decoder_config_class, "lstm")),
    ] = LSTMDecoderConfig()
    """Caption decoder; `name` picks its settings (lstm, transformer)."""

    NAMED_FIELDS: ClassVar[dict] = {
        "encoder": encoder_config_class,
        "decoder": decoder_config_class,
    }

    @classmethod
    def from_saved(cls, data: dict, source: str) -> ModelConfig:
        """The model section of a saved `config.json`, of this or an earlier finecap version.

        Folders saved before the typed config layer (format 1: no `format` key, e.g. the
        bundled default until it is retrained) have one flat decoder config with every
        decoder's fields and `processor_dir` inside `hf_config`: fields the model's own
        decoder/encoder does not have were ignored by it, so they are dropped here.
        """
        try:
            upgraded = upgrade_model_config(data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"{source}: not a model config finecap can read ({err})") from None
        return cls.load(upgraded, source)


def upgrade_model_config(data: dict) -> dict:
    """Format-1 model config -> the current layout (see `ModelConfig.from_saved`)."""
    data = dict(data)
    for key, lookup, default in (
        ("encoder", encoder_config_class, "small_cnn"),
        ("decoder", decoder_config_class, "lstm"),
    ):
        section = dict(data.get(key) or {})
        name = section.get("name", default)
        fields = lookup(name).model_fields
        if "hf_config" in section and "processor_dir" in section["hf_config"]:
            section["hf_config"] = {
                k: v for k, v in section["hf_config"].items() if k != "processor_dir"
            }
        data[key] = {k: v for k, v in section.items() if k in fields}
    return data


class CaptionModel(nn.Module):
    def __init__(
        self, config: ModelConfig, vocab_size: int, backbone_dir: Path | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = create_encoder(config.encoder, backbone_dir)
        self.decoder = create_decoder(config.decoder, vocab_size, self.encoder.feature_dim)

    def encode(self, pixels: Tensor) -> EncoderOutput:
        return self.encoder(pixels)

    def forward(self, pixels: Tensor, tokens: Tensor) -> DecoderOutput:
        """Teacher forcing: pixels (B, 3, S, S), tokens (B, T) starting with <bos>."""
        return self.decoder(self.encoder(pixels), tokens)
