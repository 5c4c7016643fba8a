"""Greedy, beam and sampling decoding against the decoder contract, on tiny models and on a
scripted decoder whose preferences are known exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finecap.data.vocab import Vocab
from finecap.decoding import (
    DecodingConfig,
    SamplingConfig,
    beam_search,
    decode,
    greedy,
    sample,
)
from finecap.models import EncoderOutput, StepOutput, list_decoders
from finecap.models.transformer import Uncached
from helpers.tiny_captioners import make_tiny_captioner, random_images

EOS, PAD = Vocab.eos_id, Vocab.pad_id
DECODERS = list_decoders()


def _model_and_features(decoder: str, n: int = 3, seed: int = 0):
    model = make_tiny_captioner(decoder, seed=seed).model
    with torch.no_grad():
        enc = model.encode(model.encoder.preprocess(random_images(n, seed=seed)))
    return model, enc


class CycleDecoder:
    """Scripted decoder: always prefers words 4, 5, 4, 5, ... and never <eos> (V = 10).

    Other words follow at fixed lower scores, so every choice is known in advance.
    """

    preferences = torch.tensor([-9.0, -9.0, -8.0, -3.0, 0.0, 0.0, -1.0, -1.5, -2.0, -2.5])

    def init_state(self, enc: EncoderOutput, group: int = 1):
        return {"t": torch.zeros(enc.pooled.shape[0] * group, dtype=torch.long)}

    def step(self, tokens, state) -> StepOutput:
        logits = self.preferences.repeat(tokens.shape[0], 1)
        favourite = torch.where(state["t"] % 2 == 0, 4, 5)
        logits[torch.arange(tokens.shape[0]), favourite] = 2.0
        attention = torch.ones(tokens.shape[0], 1)
        return StepOutput(logits, {"t": state["t"] + 1}, attention)


def _features(n: int) -> EncoderOutput:
    return EncoderOutput(torch.zeros(n, 1, 4), None, torch.zeros(n, 4))


def _trigrams(row: list[int]) -> list[tuple[int, ...]]:
    words = row[: row.index(EOS)] if EOS in row else row
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


@pytest.mark.parametrize("decoder", DECODERS)
def test_beam_size_one_equals_greedy(decoder: str) -> None:
    model, enc = _model_and_features(decoder)
    with torch.no_grad():
        g = greedy(model.decoder, enc, max_len=8)
        b = beam_search(model.decoder, enc, DecodingConfig(beam_size=1, max_len=8))
        via_decode = decode(model.decoder, enc, DecodingConfig(beam_size=1, max_len=8))
    assert torch.equal(g.tokens, b.tokens)
    assert torch.equal(g.tokens, via_decode.tokens)
    torch.testing.assert_close(g.scores, b.scores)


def test_kv_cache_equals_uncached_decoding() -> None:
    model, enc = _model_and_features("transformer")
    decoder = model.decoder
    with torch.no_grad():
        cached, uncached = decoder.init_state(enc), decoder.init_state(enc, cache=False)
        words = torch.full((3,), Vocab.bos_id)
        for _ in range(6):
            a, b = decoder.step(words, cached), decoder.step(words, uncached)
            torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.attention, b.attention, atol=1e-6, rtol=1e-5)
            cached, uncached, words = a.state, b.state, a.logits.argmax(-1)
        assert cached["k0"].shape[2] == 6  # one cached key per word so far
        g_cached = greedy(decoder, enc, max_len=10)
        g_uncached = greedy(Uncached(decoder), enc, max_len=10)
        config = DecodingConfig(beam_size=3, max_len=10)
        b_cached = beam_search(decoder, enc, config)
        b_uncached = beam_search(Uncached(decoder), enc, config)
    assert torch.equal(g_cached.tokens, g_uncached.tokens)
    assert torch.equal(b_cached.tokens, b_uncached.tokens)
    torch.testing.assert_close(b_cached.scores, b_uncached.scores, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("decoder", DECODERS)
def test_n_best_is_ordered_distinct_and_scored_by_its_words(decoder: str) -> None:
    model, enc = _model_and_features(decoder)
    config = DecodingConfig(beam_size=4, n_best=4, max_len=8)
    with torch.no_grad():
        out = beam_search(model.decoder, enc, config, keep_attention=True)
        best = beam_search(model.decoder, enc, DecodingConfig(beam_size=4, max_len=8))
    scores = out.scores.view(3, 4)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    for image in range(3):
        rows = {tuple(r) for r in out.tokens.view(3, 4, -1)[image].tolist()}
        assert len(rows) == 4  # four different captions
    assert torch.equal(out.tokens.view(3, 4, -1)[:, 0], best.tokens)
    # With no length penalty the score is the caption's log-probability, <eos> included.
    torch.testing.assert_close(out.scores, out.logprobs.sum(1))
    assert out.attention.shape[:2] == out.tokens.shape
    assert ((out.tokens == PAD) | (out.logprobs < 0)).all()


class EndsAfterDecoder(CycleDecoder):
    """Scripted: each image says its words (4, 5, 4, ...) for as many steps as its feature asks,
    then prefers <eos>; so the images of one batch finish at different steps."""

    def init_state(self, enc: EncoderOutput, group: int = 1):
        stop = enc.pooled[:, 0].long().repeat_interleave(group)
        return {"t": torch.zeros_like(stop), "stop": stop}

    def step(self, tokens, state) -> StepOutput:
        out = super().step(tokens, state)
        logits = out.logits.clone()
        logits[state["t"] >= state["stop"], EOS] = 5.0
        return StepOutput(logits, {**out.state, "stop": state["stop"]}, out.attention)


def _pad_to(tokens: torch.Tensor, T: int) -> torch.Tensor:
    return F.pad(tokens, (0, T - tokens.shape[1]), value=PAD)


def test_batched_beam_search_equals_one_image_at_a_time_as_images_finish() -> None:
    stops = [1.0, 6.0, 3.0, 2.0]
    enc = EncoderOutput(torch.zeros(4, 1, 4), None, torch.tensor(stops)[:, None].repeat(1, 4))
    config = DecodingConfig(beam_size=3, n_best=2, max_len=8)
    batched = beam_search(EndsAfterDecoder(), enc, config, keep_attention=True)
    assert batched.tokens.shape == (8, 7)  # the longest: 6 words + <eos>
    for i, stop in enumerate(stops):
        one = EncoderOutput(enc.regions[i : i + 1], None, enc.pooled[i : i + 1])
        single = beam_search(EndsAfterDecoder(), one, config, keep_attention=True)
        rows = slice(2 * i, 2 * i + 2)
        assert single.tokens.shape[1] == stop + 1  # this image alone stops at its own length
        assert torch.equal(batched.tokens[rows], _pad_to(single.tokens, 7))
        torch.testing.assert_close(batched.scores[rows], single.scores)
        torch.testing.assert_close(batched.logprobs[rows].sum(1), single.logprobs.sum(1))
        assert (batched.attention[rows, int(stop) + 1 :] == 0).all()


@pytest.mark.parametrize("decoder", DECODERS)
def test_batched_beam_search_equals_one_image_at_a_time(decoder: str) -> None:
    model, enc = _model_and_features(decoder, n=4)
    config = DecodingConfig(beam_size=3, max_len=8)
    with torch.no_grad():
        batched = beam_search(model.decoder, enc, config)
        for i in range(4):
            one = EncoderOutput(enc.regions[i : i + 1], None, enc.pooled[i : i + 1])
            single = beam_search(model.decoder, one, config)
            T = single.tokens.shape[1]
            assert torch.equal(batched.tokens[i, :T], single.tokens[0])
            assert (batched.tokens[i, T:] == PAD).all()
            torch.testing.assert_close(batched.scores[i], single.scores[0], atol=1e-4, rtol=1e-4)


def test_length_penalty_normalises_scores_by_length() -> None:
    model, enc = _model_and_features("lstm")
    config = DecodingConfig(beam_size=3, max_len=8, length_penalty=1.0)
    with torch.no_grad():
        out = beam_search(model.decoder, enc, config)
    lengths = out.mask().sum(1).float()
    torch.testing.assert_close(out.scores, out.logprobs.sum(1) / ((5 + lengths) / 6))


def test_trigram_blocking_prevents_repeated_trigrams() -> None:
    enc = _features(2)
    plain = beam_search(CycleDecoder(), enc, DecodingConfig(beam_size=3, max_len=10))
    first = plain.tokens[0].tolist()
    assert first[:6] == [4, 5, 4, 5, 4, 5]  # without blocking the scripted loop repeats
    assert len(set(_trigrams(first))) < len(_trigrams(first))
    config = DecodingConfig(beam_size=3, max_len=10, block_trigrams=True)
    blocked = beam_search(CycleDecoder(), enc, config)
    for row in blocked.tokens.tolist():
        trigrams = _trigrams(row)
        assert len(trigrams) == len(set(trigrams)), row


def test_one_beam_with_trigram_blocking_still_blocks() -> None:
    # Greedy decoding cannot block; one beam of beam search does.
    config = DecodingConfig(beam_size=1, max_len=10, block_trigrams=True)
    out = decode(CycleDecoder(), _features(2), config)
    for row in out.tokens.tolist():
        assert len(_trigrams(row)) == len(set(_trigrams(row))), row


@pytest.mark.parametrize("decoder", DECODERS)
def test_trigram_blocking_on_a_model(decoder: str) -> None:
    model, enc = _model_and_features(decoder, n=4)
    config = DecodingConfig(beam_size=3, max_len=12, block_trigrams=True)
    with torch.no_grad():
        out = beam_search(model.decoder, enc, config)
    for row in out.tokens.tolist():
        trigrams = _trigrams(row)
        assert len(trigrams) == len(set(trigrams)), row


def test_captions_stop_at_max_len_with_a_forced_eos() -> None:
    enc = _features(2)
    for out in (
        greedy(CycleDecoder(), enc, max_len=5),
        beam_search(CycleDecoder(), enc, DecodingConfig(beam_size=2, max_len=5)),
        sample(CycleDecoder(), enc, SamplingConfig(n=2, max_len=5)),
    ):
        assert out.tokens.shape[1] == 6
        assert (out.tokens[:, :5] >= 4).all() and (out.tokens[:, 5] == EOS).all()


@pytest.mark.parametrize("decoder", DECODERS)
def test_sampling_with_top_k_one_equals_greedy(decoder: str) -> None:
    model, enc = _model_and_features(decoder)
    with torch.no_grad():
        g = greedy(model.decoder, enc, max_len=8)
        s = sample(
            model.decoder,
            enc,
            SamplingConfig(n=2, max_len=8, top_k=1),
            torch.Generator().manual_seed(0),
        )
    assert torch.equal(s.tokens[0::2], g.tokens) and torch.equal(s.tokens[1::2], g.tokens)
    torch.testing.assert_close(s.logprobs[0::2], g.logprobs)


def test_sampling_is_seeded_and_keeps_gradients() -> None:
    model, enc = _model_and_features("lstm")
    config = SamplingConfig(n=3, max_len=8)
    a = sample(model.decoder, enc, config, torch.Generator().manual_seed(1))
    b = sample(model.decoder, enc, config, torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape[0] == 9
    assert a.logprobs.requires_grad  # SCST's policy gradient flows through these


@pytest.mark.parametrize("decoder", DECODERS)
def test_tiny_model_overfits_a_small_batch(decoder: str) -> None:
    """4 images, 2 captions (images 0, 2 -> A; 1, 3 -> B): greedy must reproduce them."""
    torch.manual_seed(0)
    captioner = make_tiny_captioner(decoder)
    model, vocab = captioner.model, captioner.vocab
    captions = ["a red circle left of a blue square", "the big green triangle above a circle"]
    targets = [captions[i % 2] for i in range(4)]
    # Distinct images: the two captions' images differ in colour, not only in noise.
    images = random_images(4, seed=5)
    images = [
        img.point(lambda v, i=i: v // 4 + (150 if i % 2 else 0)) for i, img in enumerate(images)
    ]
    rows = [[Vocab.bos_id, *vocab.encode(c), EOS] for c in targets]
    tokens = torch.tensor([r + [PAD] * (10 - len(r)) for r in rows])  # (4, T)
    pixels = model.encoder.preprocess(images)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        out = model(pixels, tokens)
        loss = F.cross_entropy(
            out.logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=PAD
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    assert [c.text for c in captioner.caption(images, beam_size=1)] == targets
    assert [c.text for c in captioner.caption(images, beam_size=3)] == targets
