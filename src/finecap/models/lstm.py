"""LSTM decoder with soft attention (Xu et al. 2015, "Show, Attend and Tell").

Per step: additive attention over the regions given the previous hidden state,
alpha = softmax(w . tanh(W_f f + W_h h)); the context sum_i alpha_i f_i is scaled by a gate
beta = sigmoid(W_b h) (the paper's gating scalar, which lets the model look away from the
image for function words); the LSTM reads [word embedding; gated context]. Training adds the
doubly-stochastic penalty lambda * sum_i (1 - sum_t alpha_ti)^2, which pushes the model to
attend to every region over the whole caption.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from finecap.config import NonNegativeFloat, PositiveInt
from finecap.models.decoder import (
    Decoder,
    DecoderConfig,
    DecoderOutput,
    State,
    StepOutput,
    captions_per_image,
    register_decoder,
)
from finecap.models.encoders import EncoderOutput


class LSTMDecoderConfig(DecoderConfig):
    name: Literal["lstm"] = "lstm"
    embed_size: PositiveInt = 256
    """Word embedding size E."""
    attention_size: PositiveInt = 256
    """Size A of the additive attention layer."""
    attention_penalty: NonNegativeFloat = 1.0
    """lambda of the doubly-stochastic attention penalty (Show, Attend and Tell)."""


@register_decoder("lstm", config=LSTMDecoderConfig)
class LSTMAttentionDecoder(Decoder):
    def __init__(self, config: LSTMDecoderConfig, vocab_size: int, feature_dim: int) -> None:
        super().__init__(config, vocab_size, feature_dim)
        H, E, A, D = config.hidden_size, config.embed_size, config.attention_size, feature_dim
        self.embed = nn.Embedding(vocab_size, E)
        self.init_h = nn.Linear(D, H)
        self.init_c = nn.Linear(D, H)
        self.att_features = nn.Linear(D, A)
        self.att_hidden = nn.Linear(H, A)
        self.att_score = nn.Linear(A, 1)
        self.gate = nn.Linear(H, 1)
        self.cell = nn.LSTMCell(E + D, H)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(H, vocab_size)

    def init_state(self, enc: EncoderOutput, group: int = 1) -> State:
        # Additive attention mixes regions with each sequence's hidden state, so every
        # sequence keeps its own copy of the regions.
        enc = enc.repeat_interleave(group) if group > 1 else enc
        regions = enc.regions  # (B*group, R, D)
        mask = (
            enc.mask
            if enc.mask is not None
            else regions.new_ones(regions.shape[:2], dtype=torch.bool)
        )
        return {
            "h": torch.tanh(self.init_h(enc.pooled)),  # (B, H)
            "c": torch.tanh(self.init_c(enc.pooled)),  # (B, H)
            "regions": regions,
            "keys": self.att_features(regions),  # (B, R, A), computed once per image
            "mask": mask,  # (B, R)
        }

    def step(self, tokens: Tensor, state: State) -> StepOutput:
        h, c = state["h"], state["c"]
        scores = self.att_score(
            torch.tanh(state["keys"] + self.att_hidden(h).unsqueeze(1))
        ).squeeze(-1)
        alpha = scores.masked_fill(~state["mask"], float("-inf")).softmax(-1)  # (B, R)
        context = torch.bmm(alpha.unsqueeze(1), state["regions"]).squeeze(1)  # (B, D)
        context = torch.sigmoid(self.gate(h)) * context
        h, c = self.cell(torch.cat([self.embed(tokens), context], -1), (h, c))
        logits = self.out(self.dropout(h))  # (B, V)
        return StepOutput(logits, {**state, "h": h, "c": c}, alpha)

    def forward(self, enc: EncoderOutput, tokens: Tensor) -> DecoderOutput:
        state = self.init_state(enc, group=captions_per_image(enc, tokens))
        logits, alphas = [], []
        for t in range(tokens.shape[1]):
            out = self.step(tokens[:, t], state)
            state = out.state
            logits.append(out.logits)
            alphas.append(out.attention)
        alpha = torch.stack(alphas, 1)  # (B, T, R)
        # Only steps that read a real word (not padding) count towards the attention budget.
        real = (tokens != 0).unsqueeze(-1).to(alpha.dtype)  # (B, T, 1)
        coverage = (alpha * real).sum(1)  # (B, R)
        # Averaged over regions (as the common PyTorch implementations do) rather than summed,
        # so lambda does not have to shrink with the grid size.
        penalty = self.config.attention_penalty * ((1.0 - coverage) ** 2).mean()
        return DecoderOutput(torch.stack(logits, 1), alpha, penalty)
