"""The decoder contract shared by the LSTM and transformer decoders.

A decoder exposes
- `init_state(enc, group) -> state` for `group` sequences per image (beams or samples; the
  sequences of image i are rows i*group ... i*group + group - 1): a dict of batch-first
  tensors, so beam search and sampling reorder any decoder's state the same way
  (`reorder_state`). A key starting with `IMAGE_KEY` ("image/") holds one row per image,
  shared by its sequences (the transformer's cross-attention keys: computing and storing them
  once per image, not once per beam, is most of batched beam search's and SCST's speed);
  every other tensor holds one row per sequence;
- `step(tokens (B,), state) -> StepOutput`: next-word logits, new state, attention over regions;
- `forward(enc, tokens (B*G, T)) -> DecoderOutput`: teacher forcing over whole captions, G
  per image (each image's adjacent).
Greedy, beam and sampling decoding (`finecap.decoding`) are written once against this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from torch import Tensor, nn

from finecap.config import PositiveInt, Settings
from finecap.models.encoders import EncoderOutput
from finecap.registry import Registry

State = dict[str, Tensor]


class DecoderConfig(Settings):
    """Settings every decoder has; each registered decoder extends it with its own."""

    name: str = "lstm"
    """Registered decoder name (`list_decoders()`): lstm or transformer."""
    hidden_size: PositiveInt = 256
    """H: LSTM hidden size / transformer model width."""
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: PositiveInt = 24
    """Longest caption in words, without <bos>/<eos>: training captions, decoding and SCST
    samples may not be longer (the transformer's position table has this many entries)."""


@dataclass
class StepOutput:
    logits: Tensor  # (B, V)
    state: State
    attention: Tensor  # (B, R)


@dataclass
class DecoderOutput:
    logits: Tensor  # (B, T, V)
    attention: Tensor  # (B, T, R)
    aux_loss: Tensor | None = None  # scalar regulariser to add to the training loss


class Decoder(nn.Module, ABC):
    def __init__(self, config: DecoderConfig, vocab_size: int, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.feature_dim = feature_dim

    @abstractmethod
    def init_state(self, enc: EncoderOutput, group: int = 1) -> State:
        """State before the first word (<bos> is fed by the caller) of `group` sequences per
        image, each image's sequences adjacent."""

    @abstractmethod
    def step(self, tokens: Tensor, state: State) -> StepOutput:
        """One word: tokens (B,) are the previous words."""

    @abstractmethod
    def forward(self, enc: EncoderOutput, tokens: Tensor) -> DecoderOutput:
        """Teacher forcing: tokens (B*G, T), G captions per image, start with <bos>;
        logits[:, t] predict tokens[:, t+1]."""


IMAGE_KEY = "image/"


def captions_per_image(enc: EncoderOutput, tokens: Tensor) -> int:
    """G of teacher forcing's tokens (B*G, T) for B images; a clear error when not a multiple."""
    images, captions = enc.pooled.shape[0], tokens.shape[0]
    if captions % images:
        raise ValueError(f"{captions} captions for {images} images: not the same number each")
    return captions // images


def reorder_state(state: State, index: Tensor, group: int = 1) -> State:
    """Pick sequence rows `index` (N,) of every state tensor (beams after a top-k, or the
    images still decoding). `index` keeps each image's `group` sequences together, so the
    per-image tensors (`IMAGE_KEY`) follow the image of each group."""
    images = index.view(-1, group)[:, 0] // group
    return {
        key: value.index_select(0, images if key.startswith(IMAGE_KEY) else index)
        for key, value in state.items()
    }


_DECODERS: Registry[Decoder] = Registry("decoder")
register_decoder = _DECODERS.register
list_decoders = _DECODERS.names
decoder_config_class = _DECODERS.config_class


def decoder_config(name: str = "lstm", **settings: Any) -> DecoderConfig:
    """The validated settings of decoder `name`, e.g. decoder_config("transformer", ...)."""
    return decoder_config_class(name).load({"name": name, **settings}, "decoder")


def create_decoder(config: DecoderConfig, vocab_size: int, feature_dim: int) -> Decoder:
    return _DECODERS.create(config.name, config, vocab_size, feature_dim)
