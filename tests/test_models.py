"""Every registered encoder x decoder on tiny configs: gradients, frozen backbones, the
precomputed-features path, save/load round trips (HF backbones loaded from a saved folder, no
download), teacher forcing vs step-by-step decoding, and offline hub errors."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from finecap.captioner import Captioner
from finecap.config import ConfigError
from finecap.data.vocab import Vocab
from finecap.hub import WeightsNotFoundError
from finecap.models import (
    CaptionModel,
    ModelConfig,
    create_encoder,
    encoder_config,
    list_decoders,
    list_encoders,
    reorder_state,
)
from finecap.models.decoder import IMAGE_KEY
from helpers.tiny_captioners import make_tiny_captioner, random_images

ENCODERS = list_encoders()
DECODERS = list_decoders()


def _mle_loss(model: CaptionModel, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Cross-entropy of random captions (with padding) + the decoder's regulariser."""
    gen = torch.Generator().manual_seed(seed)
    pixels = model.encoder.preprocess(random_images(batch, seed=seed))
    words = torch.randint(4, model.decoder.vocab_size, (batch, 6), generator=gen)  # words only
    tokens = torch.cat([torch.full((batch, 1), Vocab.bos_id), words], 1)  # (B, T)
    tokens[0, -2:] = torch.tensor([Vocab.eos_id, Vocab.pad_id])  # one shorter caption
    out = model(pixels, tokens)
    loss = F.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=Vocab.pad_id
    )
    return loss if out.aux_loss is None else loss + out.aux_loss


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_trainable_parameter_gets_a_gradient(encoder: str, decoder: str) -> None:
    model = make_tiny_captioner(decoder, encoder).model.train()
    _mle_loss(model).backward()
    for name, param in model.named_parameters():
        assert param.requires_grad, name
        assert param.grad is not None, f"{name} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("encoder", ENCODERS)
def test_frozen_encoder_gets_no_gradient_and_keeps_its_statistics(encoder: str) -> None:
    model = make_tiny_captioner("lstm", encoder, freeze=True).model.train()
    buffers = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    _mle_loss(model).backward()
    for name, param in model.encoder.named_parameters():
        assert not param.requires_grad and param.grad is None, name
    assert all(p.grad is not None for p in model.decoder.parameters())
    for key, value in model.encoder.state_dict().items():  # batch-norm running stats untouched
        assert torch.equal(value, buffers[key]), key


@pytest.mark.parametrize("encoder", ENCODERS)
def test_precomputed_features_equal_pixel_path(encoder: str) -> None:
    model = make_tiny_captioner("lstm", encoder).model
    pixels = model.encoder.preprocess(random_images(3))
    with torch.no_grad():
        direct = model.encoder(pixels)
        features = model.encoder.backbone(pixels)  # what a feature-extraction run would store
        cached = model.encoder.encode_features(features.clone())
    assert direct.regions.shape == (3, features.shape[1], model.encoder.feature_dim)
    torch.testing.assert_close(cached.regions, direct.regions, rtol=0, atol=0)
    torch.testing.assert_close(cached.pooled, direct.pooled, rtol=0, atol=0)


def test_masked_features_pool_over_real_regions_only() -> None:
    encoder = create_encoder(encoder_config("small_cnn", width=8, image_size=32))
    regions = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = encoder.encode_features(regions, mask)
    torch.testing.assert_close(out.pooled[1], regions[1, :2].mean(0))
    torch.testing.assert_close(out.pooled[0], regions[0].mean(0))


@pytest.mark.parametrize("decoder", DECODERS)
def test_teacher_forcing_equals_step_by_step(decoder: str) -> None:
    model = make_tiny_captioner(decoder).model
    tokens = torch.tensor([[Vocab.bos_id, 5, 6, 7, 8], [Vocab.bos_id, 9, 4, 10, 11]])
    with torch.no_grad():
        enc = model.encode(model.encoder.preprocess(random_images(2)))
        forced = model.decoder(enc, tokens)
        state = model.decoder.init_state(enc)
        for t in range(tokens.shape[1]):
            out = model.decoder.step(tokens[:, t], state)
            state = out.state
            torch.testing.assert_close(out.logits, forced.logits[:, t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.attention, forced.attention[:, t], atol=1e-6, rtol=0)
    torch.testing.assert_close(forced.attention.sum(-1), torch.ones(2, 5))


@pytest.mark.parametrize("decoder", DECODERS)
def test_grouped_sequences_equal_repeated_images(decoder: str) -> None:
    """G sequences per image sharing its per-image state (init_state(enc, group), teacher
    forcing with G captions per image) give what repeating each image G times gives."""
    model = make_tiny_captioner(decoder).model
    tokens = torch.tensor([[Vocab.bos_id, 5, 6, 7], [Vocab.bos_id, 9, 4, 10]] * 3)  # 3 per image
    with torch.no_grad():
        enc = model.encode(model.encoder.preprocess(random_images(2)))
        grouped, repeated = (
            model.decoder(enc, tokens),
            model.decoder(enc.repeat_interleave(3), tokens),
        )
        torch.testing.assert_close(grouped.logits, repeated.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grouped.attention, repeated.attention, atol=1e-6, rtol=1e-5)
        a, b = (
            model.decoder.init_state(enc, group=3),
            model.decoder.init_state(enc.repeat_interleave(3)),
        )
        for t in range(tokens.shape[1]):
            step_a, step_b = (
                model.decoder.step(tokens[:, t], a),
                model.decoder.step(tokens[:, t], b),
            )
            torch.testing.assert_close(step_a.logits, step_b.logits, atol=1e-5, rtol=1e-5)
            a, b = step_a.state, step_b.state
        # Dropping image 0 keeps image 1's sequences and its per-image rows.
        kept = reorder_state(a, torch.tensor([3, 4, 5]), group=3)
        for key, value in kept.items():
            rows = 1 if key.startswith(IMAGE_KEY) else 3
            assert value.shape[0] == rows, key
        if decoder == "transformer":
            assert any(key.startswith(IMAGE_KEY) for key in a)  # shared, not repeated
            torch.testing.assert_close(kept[f"{IMAGE_KEY}k0"], a[f"{IMAGE_KEY}k0"][1:])
        with pytest.raises(ValueError, match="5 captions for 2 images"):
            model.decoder(enc, tokens[:5])


def _assert_same_captions(a: Captioner, b: Captioner, beam_size: int = 2) -> None:
    images = random_images(3, size=40, seed=1)
    first, second = a.caption(images, beam_size), b.caption(images, beam_size)
    assert [c.text for c in first] == [c.text for c in second]
    assert [c.score for c in first] == pytest.approx([c.score for c in second], abs=1e-5)


@pytest.mark.parametrize("decoder", DECODERS)
def test_save_load_round_trip(decoder: str, tmp_path) -> None:
    captioner = make_tiny_captioner(decoder, seed=3)
    captioner.save_pretrained(tmp_path / "model")
    captioner.save_pretrained(tmp_path / "model")  # overwriting an existing folder
    loaded = Captioner.from_pretrained(tmp_path / "model")
    assert not loaded.model.training
    for key, value in captioner.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    _assert_same_captions(captioner, loaded)


@pytest.mark.parametrize("encoder", [e for e in ENCODERS if e in ("resnet50", "clip")])
def test_pretrained_folder_backbone_round_trip_without_the_folder(encoder: str, tmp_path) -> None:
    """A backbone loaded from a save_pretrained folder, then the captioner saved and reloaded
    after that folder is gone: the weights and processor must come from the captioner folder."""
    captioner = make_tiny_captioner("transformer", encoder, tmp_path=tmp_path / "hub")
    assert captioner.model.encoder.processor is not None
    captioner.save_pretrained(tmp_path / "model")
    shutil.rmtree(tmp_path / "hub")
    loaded = Captioner.from_pretrained(tmp_path / "model")
    assert type(loaded.model.encoder.processor) is type(captioner.model.encoder.processor)
    _assert_same_captions(captioner, loaded)


@pytest.mark.parametrize("encoder", [e for e in ENCODERS if e in ("resnet50", "clip")])
def test_missing_hub_name_offline_is_one_clear_sentence(encoder: str, monkeypatch) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    name = "finecap-tests/no-such-model"
    with pytest.raises(WeightsNotFoundError) as info:
        create_encoder(encoder_config(encoder, pretrained=name))
    message = str(info.value)
    assert name in message and "offline" in message
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")


def test_unknown_encoder_names_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="unknown encoder 'no-such-encoder'.*small_cnn"):
        ModelConfig.load({"encoder": {"name": "no-such-encoder"}})
