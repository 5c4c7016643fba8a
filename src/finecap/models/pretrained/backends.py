"""How each Hugging Face captioner architecture splits into finecap's encoder and decoder.

A backend is registered under the `model_type` its `config.json` declares (never under a
substring of a model's name), with the transformers class that loads it, its parts (vision
tower, optional projection, language model), the model ids behind finecap's specials as its
own `generate()` uses them, and which all-ones masks that `generate()` passes.

    vision-encoder-decoder  VisionEncoderDecoderModel (nlpconnect/vit-gpt2-image-captioning:
                            ViT + GPT-2; any encoder + any cross-attending decoder)
    blip                    BlipForConditionalGeneration (Salesforce/blip-image-captioning-
                            base / -large)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from finecap.models.pretrained.tokens import SpecialIds
from finecap.registry import Registry


@dataclass(frozen=True)
class Parts:
    vision: nn.Module  # pixel_values -> (B, R, D_vision) as its first output
    projection: nn.Module | None  # (B, R, D_vision) -> (B, R, D), or None
    lm: nn.Module  # cross-attending text model with a language-modelling head
    feature_dim: int  # D: what the text model's cross-attention reads


@dataclass(frozen=True)
class Backend:
    model_class: str  # the transformers class, imported when loading
    parts: Callable[[Any], Parts]
    specials: Callable[[Any, Any], SpecialIds]  # (model, tokenizer) -> ids
    image_mask: bool  # generate() passes an all-ones encoder_attention_mask
    word_mask: bool  # generate() passes an all-ones attention_mask over the words


_BACKENDS: Registry[Backend] = Registry("pretrained captioner")
register_backend = _BACKENDS.register
list_backends = _BACKENDS.names
create_backend = _BACKENDS.create


def _first(*values: Any) -> int:
    """The first id given (generation configs may hold a list of end tokens)."""
    for value in values:
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    raise ValueError("the model names no such token id")


@register_backend("vision-encoder-decoder")
def vision_encoder_decoder() -> Backend:
    def parts(model: Any) -> Parts:
        # VisionEncoderDecoderModel projects the encoder's states only when the widths differ
        # and the decoder has no cross_attention_hidden_size: exactly when it has the layer.
        projection = getattr(model, "enc_to_dec_proj", None)
        sized_by = model.decoder if projection is not None else model.encoder  # D = its width
        return Parts(model.encoder, projection, model.decoder, sized_by.config.hidden_size)

    def specials(model: Any, tokenizer: Any) -> SpecialIds:
        gen, config = model.generation_config, model.config
        end = _first(gen.eos_token_id, config.eos_token_id, model.decoder.config.eos_token_id)
        start = _first(gen.decoder_start_token_id, config.decoder_start_token_id, gen.bos_token_id)
        pad = _first(gen.pad_token_id, config.pad_token_id, end)
        return SpecialIds(start, end, pad, _first(tokenizer.unk_token_id, end))

    return Backend("VisionEncoderDecoderModel", parts, specials, image_mask=False, word_mask=True)


@register_backend("blip")
def blip() -> Backend:
    def parts(model: Any) -> Parts:
        width = model.config.vision_config.hidden_size
        return Parts(model.vision_model, None, model.text_decoder, width)

    def specials(model: Any, tokenizer: Any) -> SpecialIds:
        # BlipForConditionalGeneration.generate: starts with text_config.bos_token_id ([DEC])
        # and ends at sep_token_id ([SEP]), not at eos_token_id.
        text = model.config.text_config
        end = _first(text.sep_token_id)
        pad, unk = _first(text.pad_token_id, end), _first(tokenizer.unk_token_id, end)
        return SpecialIds(_first(text.bos_token_id), end, pad, unk)

    return Backend("BlipForConditionalGeneration", parts, specials, image_mask=True, word_mask=True)
