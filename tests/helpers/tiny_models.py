"""Tiny random Hugging Face models for fast tests (hidden 32, 2 layers, 30-px images).

`make_tiny_clip(tmp_path)` writes a folder that loads through the same path as a real
checkpoint (`CLIPModel.from_pretrained` + `AutoTokenizer` + `AutoImageProcessor`), so
`finecap.clip.load_clip(folder)` exercises exactly the code a real CLIP goes through.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

# Whole words the tiny BPE knows as single tokens; anything else falls back to characters.
_WORDS = (  # noqa: SIM905
    "a the photo depicts dog dogs cat cats red blue green on in of with and "
    "is are running runs sitting grass table man woman square circle triangle big small"
).split()


def _tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer over lower-case characters plus merges for a few whole words."""
    chars = list(string.ascii_lowercase + string.digits + ".,'!?-")
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        # Left-to-right merges: w-o -> wo, wo-r -> wor, ..., with </w> glued to the last char.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if left + right not in vocab:
                merges.append((left, right))
                vocab[left + right] = len(vocab)
            left = left + right
    return CLIPTokenizer(vocab=vocab, merges=merges)


def make_tiny_clip(
    tmp_path: str | Path, seed: int = 0, max_text_length: int = 16, name: str = "tiny-clip"
) -> Path:
    """Save a randomly initialised CLIP (projection 16) with tokenizer and image processor.

    Returns the folder. `max_text_length` is small so truncation is exercised by tests.
    """
    try:  # transformers 5 without torchvision: the PIL processor, named so it does not warn
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as ImageProcessor

    folder = Path(tmp_path) / name
    tokenizer = _tiny_clip_tokenizer()
    common = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            common,
            vocab_size=len(tokenizer),
            max_position_embeddings=max_text_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(common, image_size=30, patch_size=15),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.model_max_length = max_text_length
    tokenizer.save_pretrained(folder)
    ImageProcessor(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
    ).save_pretrained(folder)
    return folder
