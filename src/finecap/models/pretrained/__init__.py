"""Pretrained Hugging Face captioners behind finecap's `Captioner` and decoding core.

Any `VisionEncoderDecoderModel` (nlpconnect/vit-gpt2-image-captioning: ViT + GPT-2) and
`BlipForConditionalGeneration` (Salesforce/blip-image-captioning-base / -large), from a hub
name or a folder, become a `CaptionModel`: the vision tower is an `Encoder`, the language
model a `Decoder` whose state is the model's key/value cache (`modules`), the tokenizer a
`Vocab` (`tokens`). So finecap's greedy, batched beam search, n-best, sampling, SCST and
evaluation run on them unchanged, and with matching settings give the model's own
`generate()` captions token for token:

    DecodingConfig(beam_size=K, max_len=N, length_penalty=0,
                   finished_beams="aside", at_max_len="stop")
    == model.generate(pixel_values, num_beams=K, max_new_tokens=N, length_penalty=0.0)

    captioner = Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")
    captioner("photo.jpg").text
"""

from finecap.models.pretrained.backends import list_backends, register_backend
from finecap.models.pretrained.config import (
    PretrainedDecoderConfig,
    PretrainedEncoderConfig,
    PretrainedModelConfig,
)
from finecap.models.pretrained.model import (
    FACTS_FILE,
    PretrainedCaptionModel,
    UnsupportedCaptionerError,
    is_pretrained_source,
    load_pretrained,
    looks_like_hub_name,
)
from finecap.models.pretrained.modules import HFTextDecoder, HFVisionEncoder
from finecap.models.pretrained.tokens import SpecialIds, TokenizerVocab

__all__ = [
    "FACTS_FILE",
    "HFTextDecoder",
    "HFVisionEncoder",
    "PretrainedCaptionModel",
    "PretrainedDecoderConfig",
    "PretrainedEncoderConfig",
    "PretrainedModelConfig",
    "SpecialIds",
    "TokenizerVocab",
    "UnsupportedCaptionerError",
    "is_pretrained_source",
    "list_backends",
    "load_pretrained",
    "looks_like_hub_name",
    "register_backend",
]
