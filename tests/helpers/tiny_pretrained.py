"""Tiny random Hugging Face captioners saved with `save_pretrained`, as a real checkpoint is.

- `save_tiny_vit_gpt2(folder)`: a VisionEncoderDecoderModel of a 2-layer ViT (width 32) and
  a 2-layer GPT-2 (width 24: the encoder-to-decoder projection is used), with a byte-level
  BPE tokenizer trained on scene captions (~100 tokens, `<|endoftext|>` = start = end = pad
  as in nlpconnect/vit-gpt2-image-captioning);
- `save_tiny_blip(folder)`: a BlipForConditionalGeneration with 2-layer towers and a
  BertTokenizer over a small word list, `[DEC]` as its start token and `[SEP]` as its end.

The weights are drawn wider than Hugging Face's default (std 0.02 makes the logits of a tiny
model nearly uniform: ties a rounding difference could flip), and the end token's embedding
is scaled so that some captions end early and others run to the length limit.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = [
    *("a", "an", "the", "there", "is", "of", "on", "in", "to"),
    *("red", "blue", "green", "yellow", "big", "small", "large"),
    *("circle", "square", "triangle", "star", "heart", "left", "right", "above", "below", "next"),
    *("grass", "sky", "sand", "water", "floor", "wall"),
]
CAPTIONS = [
    "there is a red circle on the grass",
    "a big blue square to the left of a small green star",
    "a yellow triangle above the circle",
    "a small heart on the sand next to a large star",
    "a green square in the sky below a red triangle",
    "an image of a blue star on the water",
]
IMAGE_SIZE = 30


def _widen(model: torch.nn.Module, std: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def save_tiny_vit_gpt2(folder: str | Path, seed: int = 0, end_scale: float = 3.0) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2TokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessorPil,
    )

    folder = Path(folder)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=100, special_tokens=["<|endoftext|>"], initial_alphabet=[]
    )
    alphabet = "abcdefghijklmnopqrstuvwxyz 0123456789,.'"  # any caption of the scenes world
    bpe.train_from_iterator([*CAPTIONS, " ".join(WORDS), alphabet], trainer)
    special = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe, bos_token=special, eos_token=special, unk_token=special
    )
    end = tokenizer.eos_token_id
    vit = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=IMAGE_SIZE,
        patch_size=10,
    )
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=24,
        n_layer=2,
        n_head=4,
        n_positions=32,
        bos_token_id=end,
        eos_token_id=end,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, gpt2)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = end
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config).eval()
    _widen(model, 0.3, seed)
    with torch.no_grad():  # tied to the output layer: the end token's logit swings wider
        model.decoder.transformer.wte.weight[end] *= end_scale
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


def save_tiny_blip(folder: str | Path, seed: int = 0, end_scale: float = 3.0) -> Path:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
    )

    folder = Path(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "[DEC]"]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, bos_token="[DEC]")
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=10,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision))
    model.eval()
    _widen(model, 0.3, seed)
    with torch.no_grad():
        embeddings = model.text_decoder.bert.embeddings.word_embeddings.weight
        embeddings[tokenizer.sep_token_id] *= end_scale
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    BlipImageProcessorPil(size=size).save_pretrained(folder)
    return folder


TINY_PRETRAINED = {"vit-gpt2": save_tiny_vit_gpt2, "blip": save_tiny_blip}
