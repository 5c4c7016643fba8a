"""Encoders, decoders and the encoder-decoder caption model.

Dimension letters used in shape comments throughout finecap:
  B batch (images), K beams or samples per image, T time steps (words), R image regions,
  D encoder feature size, H / C decoder width, V vocabulary size, h attention heads.
"""

from finecap.models import lstm, open_clip_encoder, transformer  # noqa: F401  (register them)
from finecap.models.captioner_model import CaptionModel, ModelConfig
from finecap.models.decoder import (
    Decoder,
    DecoderConfig,
    DecoderOutput,
    StepOutput,
    create_decoder,
    decoder_config,
    list_decoders,
    register_decoder,
    reorder_state,
)
from finecap.models.encoders import (
    Encoder,
    EncoderConfig,
    EncoderOutput,
    create_encoder,
    encoder_config,
    list_encoders,
    register_encoder,
)
from finecap.models.lstm import LSTMDecoderConfig
from finecap.models.transformer import TransformerDecoderConfig

__all__ = [
    "CaptionModel",
    "ModelConfig",
    "Decoder",
    "DecoderConfig",
    "DecoderOutput",
    "LSTMDecoderConfig",
    "TransformerDecoderConfig",
    "StepOutput",
    "create_decoder",
    "decoder_config",
    "list_decoders",
    "register_decoder",
    "reorder_state",
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "create_encoder",
    "encoder_config",
    "list_encoders",
    "register_encoder",
]
