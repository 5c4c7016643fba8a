"""What a pretrained Hugging Face captioner is, as finecap's typed config layer records it.

The model's architecture lives in its own `config.json` (Hugging Face's); finecap records where
it came from and how to train it, with the key names of `finecap.models.ModelConfig`
(`model.encoder.freeze`, `model.encoder.unfreeze_after_epochs`, `model.decoder.max_len`), so a
recipe, `--set`, the run summary and the model card read it the same way.
"""

from __future__ import annotations

from finecap.config import PositiveInt, Settings
from finecap.models.encoders import EncoderConfig


class PretrainedEncoderConfig(EncoderConfig):
    """The captioner's vision tower."""

    name: str = "vit"
    """Its Hugging Face model_type (vit, blip_vision_model, ...), as the run summary names it."""


class PretrainedDecoderConfig(Settings):
    """The captioner's language model, driven through finecap's decoder contract."""

    name: str = "gpt2"
    """Its Hugging Face model_type (gpt2, blip_text_model, ...)."""
    max_len: PositiveInt = 20
    """Longest caption in the model's own tokens (BPE pieces, word pieces), without <bos> and
    <eos>: its position table's size less those two."""


class PretrainedModelConfig(Settings):
    """A Hugging Face captioner (`finecap.models.pretrained`), loaded whole from `source`."""

    source: str
    """Hub name or folder it was loaded from (what --init / --model were given)."""
    architecture: str
    """The model_type of its config.json: vision-encoder-decoder or blip (`list_backends()`)."""
    encoder: PretrainedEncoderConfig = PretrainedEncoderConfig()
    decoder: PretrainedDecoderConfig = PretrainedDecoderConfig()
