"""Transformer decoder (Vaswani et al. 2017) over image regions, with a KV cache.

Pre-layer-norm blocks: causal self-attention, cross-attention to the projected regions, and a
feed-forward layer. With `encoder_layers` > 0, self-attention blocks over the projected regions
come first (the encoder of Vaswani et al.'s encoder-decoder, without region positions, as the
captioning transformer Cho et al. (2022) use: 6 + 6 layers over CLIP RN50 grid features); they
run once per image, in `init_state`.

Incremental decoding keeps, per layer, the self-attention keys/values of the words so far
and the cross-attention keys/values of the regions (computed once per image), so a step
costs O(t) instead of re-running the whole prefix (O(t^2)). `init_state(enc, cache=False)`
gives the uncached variant, used to test that both agree and to measure the gain.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import model_validator
from torch import Tensor, nn

from finecap.config import NonNegativeInt, PositiveInt
from finecap.models.decoder import (
    IMAGE_KEY,
    Decoder,
    DecoderConfig,
    DecoderOutput,
    State,
    StepOutput,
    captions_per_image,
    register_decoder,
)
from finecap.models.encoders import EncoderOutput

CROSS_BIAS = f"{IMAGE_KEY}cross_bias"


class Attention(nn.Module):
    """Multi-head attention that also returns head-averaged weights (for attention maps)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def split_heads(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, h, T, C/h)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(x).chunk(2, -1)
        return self.split_heads(k), self.split_heads(v)

    def forward(
        self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """x (N, T, C) attends to k, v (B, h, S, C/h) -> (N, T, C), weights (N, T, S).

        N = B * G: each key row serves G query rows in a row (an image's beams or samples
        attending to its regions), which attend as G*T queries of one sequence. bias
        broadcasts to the scores (B, h, G*T, S).
        """
        N, T, _ = x.shape
        B, h, S, d = k.shape
        G = N // B
        q = self.split_heads(self.q(x))  # (N, h, T, d)
        if G > 1:
            q = q.view(B, G, h, T, d).transpose(1, 2).reshape(B, h, G * T, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, G*T, S)
        if bias is not None:
            scores = scores + bias
        weights = scores.softmax(-1)
        out = weights @ v  # (B, h, G*T, d)
        if G > 1:
            out = out.view(B, h, G, T, d).transpose(1, 2).reshape(N, h, T, d)
        out = out.transpose(1, 2).flatten(2)  # (N, T, C)
        return self.proj(out), weights.mean(1).view(N, T, S)


class TransformerDecoderConfig(DecoderConfig):
    name: Literal["transformer"] = "transformer"
    num_layers: PositiveInt = 2
    """Decoder layers (Cho et al. use 6)."""
    encoder_layers: NonNegativeInt = 0
    """Self-attention layers over the regions before the decoder attends to them (Cho et al.'s
    N_enc: 6); 0: the decoder attends to the projected regions directly."""
    num_heads: PositiveInt = 8
    """Attention heads h; must divide hidden_size."""
    ffn_size: PositiveInt = 1024
    """Feed-forward inner size."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerDecoderConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})"
            )
        return self


class Block(nn.Module):
    def __init__(self, config: TransformerDecoderConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(C), nn.LayerNorm(C), nn.LayerNorm(C)
        self.self_attn = Attention(C, config.num_heads)
        self.cross_attn = Attention(C, config.num_heads)
        self.ffn = nn.Sequential(
            nn.Linear(C, config.ffn_size), nn.GELU(), nn.Linear(config.ffn_size, C)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        self_kv: tuple[Tensor, Tensor],
        self_bias: Tensor | None,
        cross_kv: tuple[Tensor, Tensor],
        cross_bias: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        x = x + self.dropout(self.self_attn(self.norm1(x), *self_kv, self_bias)[0])
        attended, weights = self.cross_attn(self.norm2(x), *cross_kv, cross_bias)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.ffn(self.norm3(x)))
        return x, weights


class EncoderBlock(nn.Module):
    """Self-attention among the regions, then a feed-forward layer (pre-layer-norm)."""

    def __init__(self, config: TransformerDecoderConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.norm1, self.norm2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.attn = Attention(C, config.num_heads)
        self.ffn = nn.Sequential(
            nn.Linear(C, config.ffn_size), nn.GELU(), nn.Linear(config.ffn_size, C)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """x (B, R, C); bias (B, 1, 1, R): -inf at padded regions, or None."""
        h = self.norm1(x)
        x = x + self.dropout(self.attn(h, *self.attn.keys_values(h), bias)[0])
        return x + self.dropout(self.ffn(self.norm2(x)))


class RegionEncoder(nn.Module):
    """`encoder_layers` blocks and a final layer norm: (B, R, C) -> (B, R, C)."""

    def __init__(self, config: TransformerDecoderConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.encoder_layers))
        self.norm = nn.LayerNorm(config.hidden_size)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)


@register_decoder("transformer", config=TransformerDecoderConfig)
class TransformerDecoder(Decoder):
    def __init__(self, config: TransformerDecoderConfig, vocab_size: int, feature_dim: int) -> None:
        super().__init__(config, vocab_size, feature_dim)
        C = config.hidden_size
        self.embed = nn.Embedding(vocab_size, C)
        self.position = nn.Embedding(config.max_len + 2, C)  # + <bos> and <eos>
        self.memory = nn.Sequential(nn.Linear(feature_dim, C), nn.LayerNorm(C))
        # None without encoder layers: no parameters, so models saved before it load as they were.
        self.region_encoder = RegionEncoder(config) if config.encoder_layers else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(C)
        self.out = nn.Linear(C, vocab_size)
        self.dropout = nn.Dropout(config.dropout)

    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        if start + tokens.shape[1] > self.position.num_embeddings:
            raise ValueError(
                f"caption longer than the decoder's max_len ({self.config.max_len} words): "
                "decode with max_len <= the model's max_len"
            )
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        return self.dropout(self.embed(tokens) + self.position(positions))  # (B, T, C)

    @staticmethod
    def _cross_bias(mask: Tensor | None) -> Tensor | None:
        if mask is None:
            return None
        return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))[
            :, None, None
        ]

    def init_state(self, enc: EncoderOutput, group: int = 1, cache: bool = True) -> State:
        memory = self.memory(enc.regions)  # (B, R, C)
        bias = self._cross_bias(enc.mask)
        if self.region_encoder is not None:
            memory = self.region_encoder(memory, bias)  # (B, R, C), once per image
        N = memory.shape[0] * group
        state: State = {"length": torch.zeros(N, dtype=torch.long, device=memory.device)}
        for i, block in enumerate(self.blocks):
            # Cross-attention keys/values: once per image, shared by its `group` sequences.
            state[f"{IMAGE_KEY}k{i}"], state[f"{IMAGE_KEY}v{i}"] = block.cross_attn.keys_values(
                memory
            )
            if cache:
                empty = memory.new_zeros(
                    N, self.config.num_heads, 0, memory.shape[-1] // self.config.num_heads
                )
                state[f"k{i}"], state[f"v{i}"] = empty, empty
        if not cache:
            state["prefix"] = torch.zeros(N, 0, dtype=torch.long, device=memory.device)
        if bias is not None:
            state[CROSS_BIAS] = bias
        return state

    @staticmethod
    def _cross(state: State, layer: int) -> tuple[Tensor, Tensor]:
        return state[f"{IMAGE_KEY}k{layer}"], state[f"{IMAGE_KEY}v{layer}"]

    def step(self, tokens: Tensor, state: State) -> StepOutput:
        if "prefix" in state:
            return self._step_uncached(tokens, state)
        x = self._embed(tokens[:, None], int(state["length"][0]))  # (B, 1, C)
        new_state = dict(state)
        weights = x.new_zeros(0)
        for i, block in enumerate(self.blocks):
            # Extend the cache with this word's keys/values, then attend over all of it.
            k, v = block.self_attn.keys_values(block.norm1(x))
            new_state[f"k{i}"] = torch.cat([state[f"k{i}"], k], 2)  # (B, h, t+1, C/h)
            new_state[f"v{i}"] = torch.cat([state[f"v{i}"], v], 2)
            self_kv = (new_state[f"k{i}"], new_state[f"v{i}"])
            x, weights = block(x, self_kv, None, self._cross(state, i), state.get(CROSS_BIAS))
        new_state["length"] = state["length"] + 1
        return StepOutput(self.out(self.norm(x))[:, 0], new_state, weights[:, 0])

    def _step_uncached(self, tokens: Tensor, state: State) -> StepOutput:
        prefix = torch.cat([state["prefix"], tokens[:, None]], 1)  # (B, t+1)
        logits, weights = self._full(prefix, state)
        return StepOutput(logits[:, -1], {**state, "prefix": prefix}, weights[:, -1])

    def _full(self, tokens: Tensor, state: State) -> tuple[Tensor, Tensor]:
        """Whole sequence, causal mask: (B, T) -> logits (B, T, V), cross weights (B, T, R)."""
        x = self._embed(tokens, 0)
        T = tokens.shape[1]
        causal = torch.full((T, T), float("-inf"), device=x.device).triu(1)[None, None]
        weights = x.new_zeros(0)
        for i, block in enumerate(self.blocks):
            kv = block.self_attn.keys_values(block.norm1(x))
            x, weights = block(x, kv, causal, self._cross(state, i), state.get(CROSS_BIAS))
        return self.out(self.norm(x)), weights

    def forward(self, enc: EncoderOutput, tokens: Tensor) -> DecoderOutput:
        state = self.init_state(enc, captions_per_image(enc, tokens), cache=False)
        logits, weights = self._full(tokens, state)
        return DecoderOutput(logits, weights)


class Uncached:
    """A transformer decoder through its uncached path (re-runs the prefix every step), behind
    the decoder contract: for checking that the KV cache changes nothing and measuring its gain."""

    def __init__(self, decoder: TransformerDecoder) -> None:
        self.decoder = decoder

    def init_state(self, enc: EncoderOutput, group: int = 1) -> State:
        return self.decoder.init_state(enc, group, cache=False)

    def step(self, tokens: Tensor, state: State) -> StepOutput:
        return self.decoder.step(tokens, state)
