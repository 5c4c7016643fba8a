"""Tiny random captioners for fast tests: every registered encoder x decoder in ~1e4 weights.

`make_tiny_captioner(decoder, encoder)` builds one from tiny configs. For the Hugging Face
encoders (resnet50, clip), passing `tmp_path` first saves a tiny backbone + image processor
there with `save_pretrained` and loads it through `EncoderConfig(pretrained=folder)`: the
same code path a real checkpoint takes, without a download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from finecap.captioner import Captioner
from finecap.data.vocab import SPECIALS, Vocab
from finecap.models import (
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    decoder_config,
    encoder_config,
)

# Tiny HF backbones (the transformers test-suite style: hidden 32, 2 layers, 30-px images).
TINY_HF_CONFIGS: dict[str, dict] = {
    "resnet50": dict(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1]),
    "clip": dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=30,
        patch_size=15,
    ),
}
RESNET_IMAGE_SIZE = 64  # -> a 2x2 grid after the stride-32 stages

WORDS = "a red blue green big small circle square triangle left of right above below the".split()  # noqa: SIM905


def tiny_vocab() -> Vocab:
    return Vocab(WORDS)


def tiny_encoder_config(name: str = "small_cnn", freeze: bool = False) -> EncoderConfig:
    """small_cnn: 32 px -> 4x4 grid of 16 features; HF encoders: the tiny configs above;
    open_clip: a random CLIP ResNet of width 8, 64 px -> 2x2 grid of 256 features."""
    if name == "small_cnn":
        return encoder_config(name, freeze=freeze, image_size=32, width=16)
    if name == "open_clip":
        from .tiny_open_clip import TINY_OPEN_CLIP

        return encoder_config(name, freeze=freeze, open_clip_config=TINY_OPEN_CLIP)
    return encoder_config(name, freeze=freeze, hf_config=dict(TINY_HF_CONFIGS[name]))


TINY_DECODERS = {
    "lstm": dict(embed_size=16, attention_size=16),
    "transformer": dict(num_layers=2, num_heads=4, ffn_size=48),
}


def tiny_decoder_config(name: str = "lstm", max_len: int = 12) -> DecoderConfig:
    return decoder_config(name, hidden_size=32, dropout=0.0, max_len=max_len, **TINY_DECODERS[name])


def save_tiny_backbone(encoder: str, folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random ResNetModel / CLIPVisionModel and its image processor into folder."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModel,
        ConvNextImageProcessorPil,
        ResNetConfig,
        ResNetModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    if encoder == "resnet50":
        model = ResNetModel(ResNetConfig(**TINY_HF_CONFIGS[encoder]))
        # crop_pct only applies below 384 px; shortest_edge = output side here.
        processor = ConvNextImageProcessorPil(size={"shortest_edge": RESNET_IMAGE_SIZE})
    elif encoder == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**TINY_HF_CONFIGS[encoder]))
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
        )
    else:
        raise ValueError(f"no tiny Hugging Face backbone for encoder {encoder!r}")
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_tiny_captioner(
    decoder: str = "lstm",
    encoder: str = "small_cnn",
    tmp_path: str | Path | None = None,
    seed: int = 0,
    freeze: bool = False,
    max_len: int = 12,
) -> Captioner:
    """A seeded random captioner in eval mode; HF encoders load from a saved folder if tmp_path."""
    enc_config = tiny_encoder_config(encoder, freeze)
    if tmp_path is not None and encoder in TINY_HF_CONFIGS:
        folder = save_tiny_backbone(encoder, Path(tmp_path) / f"tiny-{encoder}", seed)
        enc_config = encoder_config(encoder, pretrained=str(folder), freeze=freeze)
    config = ModelConfig(encoder=enc_config, decoder=tiny_decoder_config(decoder, max_len))
    torch.manual_seed(seed)
    captioner = Captioner.create(config, tiny_vocab())
    captioner.model.eval()
    return captioner


def make_talkative(captioner: Captioner) -> Captioner:
    """Bias the output layer against every special token, <eos> included: the captioner then
    writes exactly max_len words (decoding forces the final <eos>).

    A random decoder often says <eos> first; CLI and plotting tests need real words.
    """
    with torch.no_grad():
        captioner.model.decoder.out.bias[: len(SPECIALS)] = -30.0  # both decoders end in `out`
    return captioner


def make_repetitive(captioner: Captioner, word: str = "red") -> Captioner:
    """`make_talkative`, and `word` made far likelier than any other: plain decoding then
    says "red red red ..." (a trigram repeated from four words on), so a test sees whether
    trigram blocking was applied."""
    make_talkative(captioner)
    with torch.no_grad():
        captioner.model.decoder.out.bias[captioner.vocab.stoi[word]] = 30.0
    return captioner


def repeats_a_trigram(text: str) -> bool:
    words = text.split()
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    return len(set(trigrams)) < len(trigrams)


def random_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def save_images(folder: str | Path, n: int, size: int = 32, seed: int = 0) -> list[Path]:
    """Write n random RGB PNGs `img{i}.png` into folder; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(random_images(n, size, seed)):
        paths.append(folder / f"img{i}.png")
        image.save(paths[-1])
    return paths
