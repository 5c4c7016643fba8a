"""Greedy, beam and sampling decoding, written once against the decoder contract.

Every function takes a `Decoder` (see `finecap.models.decoder`) and an `EncoderOutput` and
returns `Decoded`: the word ids after <bos>, each caption ending with its first <eos> and padded
with <pad> after it. A caption still going after `max_len` words gets <eos> forced as its
`max_len + 1`-th token (as fairseq does), so no caption is longer than `max_len` words.

Beam search is batched across images: the B*K beams of all images advance together, which
is what makes it fast on a CPU (7x against one image at a time: BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from finecap.config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Settings,
)
from finecap.data.vocab import Vocab
from finecap.models.decoder import Decoder, reorder_state
from finecap.models.encoders import EncoderOutput

BOS, EOS, PAD = Vocab.bos_id, Vocab.eos_id, Vocab.pad_id


class DecodingConfig(Settings):
    """How to turn a model into captions; not part of the model."""

    beam_size: PositiveInt = 1
    """1 = greedy decoding."""
    max_len: PositiveInt = 20
    """Most words per caption (an <eos> may follow); at most the model's decoder.max_len."""
    length_penalty: NonNegativeFloat = 0.0
    """GNMT alpha: beams rank by logp / ((5 + len) / 6) ** alpha; 0 = plain sum of log-probs."""
    n_best: PositiveInt = 1
    """Captions returned per image by beam search (at most beam_size)."""
    block_trigrams: bool = False
    """Forbid a beam from repeating a trigram it already contains."""
    finished_beams: Literal["keep", "aside"] = "keep"
    """A beam whose caption has ended: `keep` it among the K beams (fewer go on as captions
    end), or set it `aside` among the K best ended captions while K unfinished beams go on
    until none can beat them (fairseq's and Hugging Face generate()'s beam search, with
    early_stopping=False; `finecap.beam_aside`)."""
    at_max_len: Literal["eos", "stop"] = "eos"
    """A caption still going after max_len tokens: `eos` gives it <eos> as one more token
    (fairseq); `stop` ends it there without one, so max_len counts every new token, <eos>
    included (generate()'s max_new_tokens)."""

    @model_validator(mode="after")
    def _n_best_fits(self) -> DecodingConfig:
        if self.n_best > self.beam_size:
            raise ValueError(f"n_best ({self.n_best}) must be at most beam_size ({self.beam_size})")
        return self

    def describe(self) -> str:
        """In words, for logs and model cards: "beam search, 3 beams, no trigram repeated"."""
        words = ["greedy" if self.beam_size == 1 else f"beam search, {self.beam_size} beams"]
        if self.length_penalty:
            words.append(f"length penalty {self.length_penalty:g}")
        if self.block_trigrams:
            words.append("no trigram repeated")
        return ", ".join(words)


DEFAULT_BEAM_SIZE = 3
"""Beams of a model that names no decoding of its own."""


class ModelDecodingConfig(DecodingConfig):
    """A model's own decoding: its config.json's `decoding` (finecap.json's for a Hugging
    Face captioner), written from a recipe's `model_decoding`, as a Hugging Face model's
    generation_config.json. `Captioner.caption`, `finecap caption` and the service decode
    with it where their caller sets nothing else. A key left out keeps finecap's default
    (3 beams, no trigram blocked, at most 20 words, or the decoder's max_len if smaller); how
    many captions to return is each caller's choice, so an n_best other than 1 is refused."""

    beam_size: PositiveInt = DEFAULT_BEAM_SIZE
    """1 = greedy decoding."""

    @field_validator("n_best")
    @classmethod
    def _no_n_best(cls, n_best: int) -> int:
        if n_best != 1:
            raise ValueError(
                "how many captions to return is each caller's choice (--n-best, a request's "
                "n_best), not the model's; leave it out"
            )
        return n_best

    def as_decoding(self) -> DecodingConfig:
        """The same settings as a plain `DecodingConfig`, whose n_best callers may change."""
        return DecodingConfig(**self.model_dump())


def model_decoding(
    given: DecodingConfig | Mapping[str, Any] | None, source: str, max_len: int
) -> DecodingConfig:
    """A model's own decoding: `given` checked as `ModelDecodingConfig` (a `ConfigError`
    naming `source` and the key otherwise; None: the default), its max_len capped at the
    model's `max_len` (decoder.max_len: the model has no room for longer captions)."""
    if isinstance(given, DecodingConfig):
        given = given.to_dict()
    if not isinstance(given, Mapping | None):
        raise ConfigError(f"{source}: a mapping of decoding settings, not {type(given).__name__}")
    own = ModelDecodingConfig.load(dict(given or {}), source).as_decoding()
    return own.replace(max_len=min(own.max_len, max_len))


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
    """Greedy when beam_size is 1 (and no trigram is blocked), else beam search."""
    if config.beam_size == 1 and not config.block_trigrams:
        force_eos = config.at_max_len == "eos"
        return greedy(decoder, enc, config.max_len, keep_attention, force_eos=force_eos)
    return beam_search(decoder, enc, config, keep_attention)


def _left_to_right(
    decoder: Decoder,
    enc: EncoderOutput,
    max_len: int,
    choose: Callable[[Tensor], Tensor],
    keep_attention: bool,
    group: int = 1,
    force_eos: bool = True,
) -> Decoded:
    """Shared loop of greedy and sampling, `group` captions per image:
    choose(logits (N, V)) -> next words (N,). `force_eos`: a caption still going after
    max_len words gets <eos> as its max_len + 1-th token; else it ends at max_len tokens."""
    state = decoder.init_state(enc, group)
    N = enc.pooled.shape[0] * group
    words = torch.full((N,), BOS, dtype=torch.long, device=enc.pooled.device)
    done = torch.zeros(N, dtype=torch.bool, device=words.device)
    tokens, logprobs, attention = [], [], []
    for t in range(max_len + 1 if force_eos else max_len):
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
    decoder: Decoder,
    enc: EncoderOutput,
    max_len: int = 20,
    keep_attention: bool = False,
    force_eos: bool = True,
) -> Decoded:
    def choose(logits: Tensor) -> Tensor:
        return logits.argmax(-1)

    return _left_to_right(decoder, enc, max_len, choose, keep_attention, force_eos=force_eos)


class SamplingConfig(Settings):
    n: PositiveInt = 5
    """Captions sampled per image (SCST's K)."""
    max_len: PositiveInt = 20
    temperature: PositiveFloat = 1.0
    top_k: NonNegativeInt = 0
    """Keep only the k most likely words (0 = all)."""
    top_p: float = Field(1.0, gt=0, le=1)
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
    keep_attention: bool = False,
) -> Decoded:
    """config.n captions per image, images' samples adjacent: row i*n + j is sample j of image i.

    `logprobs` are the model's own log-probabilities (temperature 1) and keep their gradient,
    which is what the policy-gradient loss of SCST needs.
    """

    def choose(logits: Tensor) -> Tensor:
        probs = _filter_logits(logits.detach(), config).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return _left_to_right(decoder, enc, config.max_len, choose, keep_attention, group=config.n)


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


@torch.no_grad()
def beam_search(
    decoder: Decoder, enc: EncoderOutput, config: DecodingConfig, keep_attention: bool = False
) -> Decoded:
    """Beam search over all images at once. Returns config.n_best captions per image, best first.

    An image whose K beams have all ended leaves the batch (its rows leave the state), so a
    batch costs what its unfinished images need rather than what its longest caption needs.
    `config.finished_beams="aside"` runs `finecap.beam_aside` instead.
    """
    if config.finished_beams == "aside":
        from finecap.beam_aside import beam_search_aside  # it builds on this module

        return beam_search_aside(decoder, enc, config, keep_attention)
    B, K = enc.pooled.shape[0], config.beam_size
    device = enc.pooled.device
    state = decoder.init_state(enc, group=K)
    # Entries no step has replaced yet (regions, cross-attention keys/values) are still what
    # init_state made from the image, identical across each image's beams; picking beams
    # within an image leaves them unchanged, so they skip the (costly) reordering.
    constant = set(state)
    images = torch.arange(B, device=device)  # original index of each image still decoding
    words = torch.full((B * K,), BOS, dtype=torch.long, device=device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first top-k has no duplicates
    lengths = torch.zeros(B, K, dtype=torch.long, device=device)
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    history = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    word_logp = torch.zeros(B * K, 0, device=device)
    attention = None
    results: list[Decoded | None] = [None] * B  # filled in as images finish
    last = config.max_len if config.at_max_len == "eos" else config.max_len - 1  # every beam ends
    for t in range(last + 1):
        n = images.shape[0]
        out = decoder.step(words, state)
        constant = {key for key in constant if out.state.get(key) is state[key]}
        logits = out.logits.float()  # (n*K, V)
        norm = logits.logsumexp(-1, keepdim=True)  # log p(word) = logit - norm
        if config.block_trigrams:
            logits = _block_repeated_trigrams(history, logits.clone())
        # A beam's length penalty is the same for all its words, so the K best words of each
        # beam hold the image's K best candidates: rank K*K of them instead of K*V.
        per_beam = min(K, logits.shape[-1])
        if t == config.max_len:  # max_len words written: unfinished beams must end here
            logp = torch.full((n * K, per_beam), float("-inf"), device=device)
            logp[:, 0] = logits[:, EOS] - norm[:, 0]
            word_ids = torch.full((n * K, per_beam), EOS, device=device)
        else:
            logp, word_ids = logits.topk(per_beam, -1)
            logp = logp - norm
        # A finished beam can only continue with <pad>, at no cost, so it keeps its score.
        ended = finished.view(-1)
        logp[ended] = torch.tensor([0.0] + [float("-inf")] * (per_beam - 1), device=device)
        word_ids[ended] = PAD
        candidates = scores[..., None] + logp.view(n, K, per_beam)  # (n, K, per_beam)
        new_lengths = lengths + (~finished).long()
        ranked = candidates / _length_penalty(new_lengths, config.length_penalty)[..., None]
        top = ranked.view(n, -1).topk(K, -1).indices  # (n, K) over K*per_beam candidates
        beam = top // per_beam
        word = word_ids.view(n, -1).gather(1, top)
        scores = candidates.view(n, -1).gather(1, top)
        chosen_logp = logp.view(n, -1).gather(1, top)  # (n, K)
        lengths = new_lengths.gather(1, beam)
        finished = finished.gather(1, beam) | (word == EOS) | (t == last)
        offsets = (torch.arange(n, device=device) * K)[:, None]  # (n, 1) first row of each image
        rows = (beam + offsets).view(-1)  # (n*K,) which old beam each new beam extends
        moving = reorder_state(
            {key: value for key, value in out.state.items() if key not in constant}, rows, group=K
        )
        state = {**out.state, **moving}
        words = word.view(-1)
        history = torch.cat([history[rows], words[:, None]], 1)
        word_logp = torch.cat([word_logp[rows], chosen_logp.view(-1, 1)], 1)
        if keep_attention:
            step_att = out.attention[rows][:, None]
            attention = step_att if attention is None else torch.cat([attention[rows], step_att], 1)
        done = finished.all(1)  # (n,) images whose every beam has ended
        if not bool(done.any()):
            continue
        final = scores / _length_penalty(lengths, config.length_penalty)  # (n, K)
        for i in done.nonzero()[:, 0].tolist():
            best = final[i].argsort(descending=True)[: config.n_best]
            picked = best + i * K
            results[int(images[i])] = Decoded(
                history[picked],
                word_logp[picked],
                final[i, best],
                None if attention is None else attention[picked],
            )
        if bool(done.all()):
            break
        keep = (~done).nonzero()[:, 0]
        rows = (keep[:, None] * K + torch.arange(K, device=device)).view(-1)
        state = reorder_state(state, rows, group=K)
        images, scores = images[keep], scores[keep]
        lengths, finished = lengths[keep], finished[keep]
        words, history, word_logp = words[rows], history[rows], word_logp[rows]
        attention = None if attention is None else attention[rows]
    return _stack_padded(results)


def _stack_padded(parts: list[Decoded | None]) -> Decoded:
    """Concatenate per-image results, padding shorter ones with <pad> (log-prob 0, attention 0)."""
    assert all(p is not None for p in parts), "every image ends by max_len + 1 steps"
    T = max(p.tokens.shape[1] for p in parts)

    def pad(x: Tensor, value: float) -> Tensor:
        return F.pad(x, (0, 0) * (x.dim() - 2) + (0, T - x.shape[1]), value=value)

    return Decoded(
        torch.cat([pad(p.tokens, PAD) for p in parts]),
        torch.cat([pad(p.logprobs, 0.0) for p in parts]),
        torch.cat([p.scores for p in parts]),
        None if parts[0].attention is None else torch.cat([pad(p.attention, 0.0) for p in parts]),
    )
