"""Greedy, beam and sampling decoding, written once against the decoder contract.

Every function takes a `Decoder` (see `finecap.models.decoder`) and an `EncoderOutput` and
returns `Decoded`: the word ids after <bos>, each caption ending with its first <eos> and padded
with <pad> after it. A caption still going after `max_len` words gets <eos> forced as its
`max_len + 1`-th token (as fairseq does), so no caption is longer than `max_len` words.

Beam search is batched across images: the B*K beams of all images advance together, which
is what makes it fast on a CPU (REFERENCE.md §5: batching is worth ~10x).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from finecap.data.vocab import Vocab
from finecap.models.decoder import Decoder, reorder_state
from finecap.models.encoders import EncoderOutput

BOS, EOS, PAD = Vocab.bos_id, Vocab.eos_id, Vocab.pad_id


@dataclass
class DecodingConfig:
    """How to turn a model into captions; not part of the model."""

    beam_size: int = 1
    """1 = greedy decoding."""
    max_len: int = 20
    """Most words per caption (an <eos> may follow)."""
    length_penalty: float = 0.0
    """GNMT alpha: beams rank by logp / ((5 + len) / 6) ** alpha; 0 = plain sum of log-probs."""
    n_best: int = 1
    """Captions returned per image by beam search."""
    block_trigrams: bool = False
    """Forbid a beam from repeating a trigram it already contains."""

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.max_len < 1:
            raise ValueError("beam_size and max_len must be at least 1")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best must be between 1 and beam_size ({self.beam_size})")


@dataclass
class Decoded:
    tokens: Tensor  # (N, T) word ids, <pad> after the first <eos>
    logprobs: Tensor  # (N, T) log p(word) under the model, 0 at padding
    scores: Tensor  # (N,) ranking score: sum of log-probs (beam: length-penalised)
    attention: Tensor | None = None  # (N, T, R) where the decoder looked for each word

    def mask(self) -> Tensor:
        """(N, T) True up to and including the first <eos>: the words a loss should count."""
        return self.tokens != PAD


def decode(
    decoder: Decoder, enc: EncoderOutput, config: DecodingConfig, keep_attention: bool = False
) -> Decoded:
    """Greedy when beam_size is 1, else beam search."""
    if config.beam_size == 1:
        return greedy(decoder, enc, config.max_len, keep_attention)
    return beam_search(decoder, enc, config, keep_attention)


def _left_to_right(
    decoder: Decoder,
    enc: EncoderOutput,
    max_len: int,
    choose: Callable[[Tensor], Tensor],
    keep_attention: bool,
) -> Decoded:
    """Shared loop of greedy and sampling: choose(logits (N, V)) -> next words (N,)."""
    state = decoder.init_state(enc)
    N = enc.pooled.shape[0]
    words = torch.full((N,), BOS, dtype=torch.long, device=enc.pooled.device)
    done = torch.zeros(N, dtype=torch.bool, device=words.device)
    tokens, logprobs, attention = [], [], []
    for t in range(max_len + 1):
        out = decoder.step(words, state)
        state = out.state
        logp = F.log_softmax(out.logits.float(), -1)  # (N, V)
        words = choose(out.logits)
        if t == max_len:  # max_len words written: every unfinished caption ends here
            words = torch.full_like(words, EOS)
        words = words.masked_fill(done, PAD)
        tokens.append(words)
        logprobs.append(logp.gather(1, words[:, None])[:, 0].masked_fill(done, 0.0))
        if keep_attention:
            attention.append(out.attention)
        done = done | (words == EOS)
        if bool(done.all()):
            break
    lp = torch.stack(logprobs, 1)
    return Decoded(
        torch.stack(tokens, 1), lp, lp.sum(1), torch.stack(attention, 1) if keep_attention else None
    )


def greedy(
    decoder: Decoder, enc: EncoderOutput, max_len: int = 20, keep_attention: bool = False
) -> Decoded:
    return _left_to_right(decoder, enc, max_len, lambda logits: logits.argmax(-1), keep_attention)


@dataclass
class SamplingConfig:
    n: int = 5
    """Captions sampled per image (SCST's K)."""
    max_len: int = 20
    temperature: float = 1.0
    top_k: int = 0
    """Keep only the k most likely words (0 = all)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of words with this much probability."""


def _filter_logits(logits: Tensor, config: SamplingConfig) -> Tensor:
    logits = logits.float() / config.temperature
    if config.top_k > 0:
        kth = logits.topk(min(config.top_k, logits.shape[-1]), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a word when the words before it already reach top_p (the first always stays).
        drop = (cumulative - sorted_logits.softmax(-1)) >= config.top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def sample(
    decoder: Decoder,
    enc: EncoderOutput,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
) -> Decoded:
    """config.n captions per image, images' samples adjacent: row i*n + j is sample j of image i.

    `logprobs` are the model's own log-probabilities (temperature 1) and keep their gradient,
    which is what the policy-gradient loss of SCST needs.
    """

    def choose(logits: Tensor) -> Tensor:
        probs = _filter_logits(logits.detach(), config).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return _left_to_right(decoder, enc.repeat_interleave(config.n), config.max_len, choose, False)


def _length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    return ((5.0 + lengths.float()) / 6.0) ** alpha


def _block_repeated_trigrams(history: Tensor, logp: Tensor) -> Tensor:
    """-inf for words that would repeat a trigram of the beam: history (N, t), logp (N, V)."""
    if history.shape[1] < 2:
        return logp
    rows = history.tolist()
    for n, seq in enumerate(rows):
        last = tuple(seq[-2:])
        for i in range(len(seq) - 2):
            if (seq[i], seq[i + 1]) == last:
                logp[n, seq[i + 2]] = float("-inf")
    return logp


def beam_search(
    decoder: Decoder, enc: EncoderOutput, config: DecodingConfig, keep_attention: bool = False
) -> Decoded:
    """Beam search over all images at once. Returns config.n_best captions per image, best first."""
    B, K = enc.pooled.shape[0], config.beam_size
    device = enc.pooled.device
    state = decoder.init_state(enc.repeat_interleave(K))
    # Entries no step has replaced yet (regions, cross-attention keys/values) are still what
    # init_state made from the repeated image, identical across each image's beams; picking
    # beams within an image leaves them unchanged, so they skip the (costly) reordering.
    constant = set(state)
    words = torch.full((B * K,), BOS, dtype=torch.long, device=device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first top-k has no duplicates
    lengths = torch.zeros(B, K, dtype=torch.long, device=device)
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    history = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    word_logp = torch.zeros(B * K, 0, device=device)
    attention = None
    offsets = (torch.arange(B, device=device) * K)[:, None]  # (B, 1)
    for t in range(config.max_len + 1):
        out = decoder.step(words, state)
        constant = {key for key in constant if out.state.get(key) is state[key]}
        logp = F.log_softmax(out.logits.float(), -1)  # (B*K, V)
        V = logp.shape[-1]
        if config.block_trigrams:
            logp = _block_repeated_trigrams(history, logp)
        if t == config.max_len:  # max_len words written: unfinished beams must end here
            eos_only = torch.full_like(logp, float("-inf"))
            eos_only[:, EOS] = logp[:, EOS]
            logp = eos_only
        # A finished beam can only continue with <pad>, at no cost, so it keeps its score.
        pad_only = torch.full_like(logp, float("-inf"))
        pad_only[:, PAD] = 0.0
        logp = torch.where(finished.view(-1, 1), pad_only, logp).view(B, K, V)
        candidates = scores[..., None] + logp  # (B, K, V)
        new_lengths = lengths + (~finished).long()
        ranked = candidates / _length_penalty(new_lengths, config.length_penalty)[..., None]
        top = ranked.view(B, -1).topk(K, -1).indices  # (B, K) over K*V candidates
        beam, word = top // V, top % V
        scores = candidates.view(B, -1).gather(1, top)
        lengths = new_lengths.gather(1, beam)
        finished = finished.gather(1, beam) | (word == EOS)
        rows = (beam + offsets).view(-1)  # (B*K,) which old beam each new beam extends
        moving = reorder_state({k: v for k, v in out.state.items() if k not in constant}, rows)
        state = {**out.state, **moving}
        words = word.view(-1)
        history = torch.cat([history[rows], words[:, None]], 1)
        word_logp = torch.cat(
            [word_logp[rows], logp.view(B * K, V)[rows].gather(1, words[:, None])], 1
        )
        if keep_attention:
            step_att = out.attention[rows][:, None]
            attention = step_att if attention is None else torch.cat([attention[rows], step_att], 1)
        if bool(finished.all()):
            break
    final = scores / _length_penalty(lengths, config.length_penalty)  # (B, K)
    best = final.argsort(-1, descending=True)[:, : config.n_best]  # (B, n_best)
    rows = (best + offsets).view(-1)
    return Decoded(
        history[rows],
        word_logp[rows],
        final.gather(1, best).view(-1),
        None if attention is None else attention[rows],
    )
