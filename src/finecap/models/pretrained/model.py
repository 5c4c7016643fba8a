"""`PretrainedCaptionModel`: a Hugging Face captioner as finecap's encoder + decoder pair.

Loading (`load_pretrained`) reads the source's `config.json` first: its `model_type` picks the
backend (`finecap.models.pretrained.backends`), then the weights, tokenizer and image processor
load through `finecap.hub.from_pretrained` (offline without the weights: one sentence saying
what to download). Saving writes Hugging Face's own layout (config.json, model.safetensors,
generation_config.json, tokenizer, image processor), so an SCST-tuned model loads in
transformers as well as in finecap, plus `finecap.json` with how finecap trained it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from finecap.errors import UserError
from finecap.hub import from_pretrained
from finecap.models.captioner_model import CaptionModel
from finecap.models.pretrained.backends import create_backend, list_backends
from finecap.models.pretrained.config import (
    PretrainedDecoderConfig,
    PretrainedEncoderConfig,
    PretrainedModelConfig,
)
from finecap.models.pretrained.modules import HFTextDecoder, HFVisionEncoder
from finecap.models.pretrained.tokens import OFFSET, TokenizerVocab

WHAT = "captioner"
FACTS_FILE = "finecap.json"  # how finecap trained it, beside Hugging Face's files
SPECIALS_AT_ENDS = 2  # <bos> and <eos> take two of the position table's places


class UnsupportedCaptionerError(UserError, ValueError):
    """A Hugging Face model finecap has no backend for."""


class PretrainedCaptionModel(CaptionModel):
    """A loaded Hugging Face captioner behind `CaptionModel`'s interface: `encoder`,
    `decoder`, `encode`, teacher-forced `forward`; `vocab` is its tokenizer's adapter."""

    def __init__(self, hf: nn.Module, tokenizer: Any, processor: Any, source: str) -> None:
        nn.Module.__init__(self)  # CaptionModel builds parts from a config; these come built
        architecture = hf.config.model_type
        backend = create_backend(architecture)
        parts = backend.parts(hf)
        positions = parts.lm.config.max_position_embeddings
        self.config = PretrainedModelConfig(
            source=source,
            architecture=architecture,
            encoder=PretrainedEncoderConfig(name=parts.vision.config.model_type),
            decoder=PretrainedDecoderConfig(
                name=parts.lm.config.model_type, max_len=positions - SPECIALS_AT_ENDS
            ),
        )
        specials = backend.specials(hf, tokenizer)
        self.encoder = HFVisionEncoder(
            self.config.encoder, parts.vision, parts.projection, processor, parts.feature_dim
        )
        self.decoder = HFTextDecoder(
            self.config.decoder,
            parts.lm,
            specials,
            parts.feature_dim,
            image_mask=backend.image_mask,
            word_mask=backend.word_mask,
        )
        self.vocab = TokenizerVocab(tokenizer, self.decoder.vocab_size - OFFSET, specials)
        self.tokenizer, self.processor = tokenizer, processor
        # The whole model, for save_pretrained and generate(); kept out of the module tree so
        # its parameters (the parts') are named once, as encoder.* and decoder.*.
        self.__dict__["hf"] = hf
        self.facts: dict = {"task": f"pretrained {architecture}"}
        self.saved_decoding: dict | None = None  # finecap.json's `decoding`, unchecked

    def save_pretrained(
        self, folder: str | os.PathLike, facts: dict | None = None, decoding: dict | None = None
    ) -> None:
        """Hugging Face's layout in `folder` (which exists), plus finecap.json with `facts`
        and, if given, the model's own `decoding` (`finecap.decoding.ModelDecodingConfig`)."""
        folder = Path(folder)
        self.hf.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        meta = {"finecap": facts or {}} | ({"decoding": decoding} if decoding else {})
        (folder / FACTS_FILE).write_text(json.dumps(meta, indent=2))


def looks_like_hub_name(name: str) -> bool:
    """A valid hub repo id ("gpt2", "nlpconnect/vit-gpt2-image-captioning"); a path with more
    than one folder level is not one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_pretrained_source(name: str | os.PathLike) -> bool:
    """Whether `name` is a Hugging Face model: a folder whose config.json has a `model_type`
    (a finecap captioner's config.json has none), or, being no existing path, a hub name."""
    path = Path(name)
    if path.is_dir():
        try:
            data = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and "model_type" in data
    return not path.exists() and looks_like_hub_name(str(name))


def load_pretrained(source: str | os.PathLike) -> PretrainedCaptionModel:
    """A Hugging Face captioner from a hub name or folder, in eval mode."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    source = str(source)
    config = from_pretrained(AutoConfig, source, WHAT)
    if config.model_type not in list_backends():
        raise UnsupportedCaptionerError(
            f"{source}: a {config.model_type!r} model (config.json model_type); finecap drives "
            f"{' and '.join(list_backends())} captioners"
        )
    model_class = getattr(transformers, create_backend(config.model_type).model_class)
    hf = from_pretrained(model_class, source, WHAT)
    tokenizer = from_pretrained(AutoTokenizer, source, WHAT)
    processor = from_pretrained(AutoImageProcessor, source, WHAT)
    model = PretrainedCaptionModel(hf.eval(), tokenizer, processor, source)
    facts_file = Path(source) / FACTS_FILE
    if facts_file.is_file():
        try:
            saved = json.loads(facts_file.read_text(encoding="utf-8"))
            model.facts = saved["finecap"]
            model.saved_decoding = saved.get("decoding")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{facts_file}: not a finecap facts file ({err})") from None
    return model.eval()
