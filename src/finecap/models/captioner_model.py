"""The encoder-decoder caption model: an `Encoder` and a `Decoder` built from one config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import Tensor, nn

from finecap.models.decoder import DecoderConfig, DecoderOutput, create_decoder
from finecap.models.encoders import EncoderConfig, EncoderOutput, create_encoder


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(
            EncoderConfig(**data.get("encoder", {})), DecoderConfig(**data.get("decoder", {}))
        )


class CaptionModel(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = create_encoder(config.encoder)
        self.decoder = create_decoder(config.decoder, vocab_size, self.encoder.feature_dim)

    def encode(self, pixels: Tensor) -> EncoderOutput:
        return self.encoder(pixels)

    def forward(self, pixels: Tensor, tokens: Tensor) -> DecoderOutput:
        """Teacher forcing: pixels (B, 3, S, S), tokens (B, T) starting with <bos>."""
        return self.decoder(self.encoder(pixels), tokens)
