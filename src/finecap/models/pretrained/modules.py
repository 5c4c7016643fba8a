"""A Hugging Face captioner's two halves behind finecap's encoder and decoder contracts.

`HFVisionEncoder`: the vision tower (and a VisionEncoderDecoder's projection onto the text
model's width) -> `EncoderOutput(regions = the hidden states the text model attends to)`.

`HFTextDecoder`: the language model with cross-attention (GPT-2, BLIP's BERT decoder) as a
finecap `Decoder`. Its state is Hugging Face's key/value cache taken apart into batch-first
tensors, so `reorder_state` reorders it as it reorders finecap's own decoders:
- `cross_k{i}`, `cross_v{i}` (N, h, R, d): the cross-attention keys/values of layer i,
  computed once per image in `init_state` and repeated for its beams/samples; a step returns
  the same tensors, so beam search leaves them alone (`decoding.beam_search`'s `constant`);
- `self_k{i}`, `self_v{i}` (N, h, t, d): the self-attention cache, one more position a step;
- `length` (N,): words fed so far.
Each step rebuilds an `EncoderDecoderCache` around these tensors (no copy) and runs the model
on one token per sequence. The text model then reads only the shape of
`encoder_hidden_states` (its keys and values come from the cache), so a zero-stride
placeholder stands in for the image features of every sequence.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from finecap.data.vocab import Vocab
from finecap.models.decoder import (
    Decoder,
    DecoderOutput,
    State,
    StepOutput,
    captions_per_image,
)
from finecap.models.encoders import Encoder, EncoderOutput
from finecap.models.pretrained.config import PretrainedDecoderConfig, PretrainedEncoderConfig
from finecap.models.pretrained.tokens import SpecialIds


class HFVisionEncoder(Encoder):
    """Pixels (B, 3, S, S) -> the text model's cross-attention inputs (B, R, D)."""

    def __init__(
        self,
        config: PretrainedEncoderConfig,
        vision: nn.Module,
        projection: nn.Module | None,
        processor: Any,
        feature_dim: int,
    ) -> None:
        super().__init__(config)
        self.vision = vision
        self.projection = projection if projection is not None else nn.Identity()
        self.processor = processor
        self.feature_dim = feature_dim
        self._freeze_if_asked(self)

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    @property
    def input_side(self) -> int:
        crop = getattr(self.processor, "crop_size", None) or {}
        size = getattr(self.processor, "size", None) or {}
        side = crop.get("height") or size.get("shortest_edge") or size.get("height")
        return int(side or getattr(self.vision.config, "image_size", 224))

    def backbone(self, pixels: Tensor) -> Tensor:
        hidden = self.vision(pixel_values=pixels)[0]  # (B, R, D_vision): last hidden state
        return self.projection(hidden)  # (B, R, D)


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5 calls the key/value cache `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_layer(keys: Tensor, values: Tensor) -> Any:
    from transformers.cache_utils import DynamicLayer

    layer = DynamicLayer()
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values  # the state's own tensors, not a copy
    return layer


class HFTextDecoder(Decoder):
    """A Hugging Face text model with cross-attention behind the decoder contract (see the
    module docstring). Logits come in finecap's columns (`SpecialIds.from_model`)."""

    gives_attention = False  # Hugging Face attention kernels return no weights: no maps

    def __init__(
        self,
        config: PretrainedDecoderConfig,
        lm: nn.Module,
        specials: SpecialIds,
        feature_dim: int,
        image_mask: bool,
        word_mask: bool,
    ) -> None:
        vocab_size = lm.get_output_embeddings().weight.shape[0]
        super().__init__(config, 4 + vocab_size, feature_dim)  # type: ignore[arg-type]
        self.lm = lm
        self.specials = specials
        # As the model's own generate() calls it: BLIP passes all-ones masks, GPT-2 none.
        self.image_mask, self.word_mask = image_mask, word_mask
        source, blocked = specials.from_model(vocab_size)
        self.register_buffer("to_model", specials.to_model(vocab_size), persistent=False)
        self.register_buffer("source", source, persistent=False)
        self.register_buffer("blocked", blocked, persistent=False)
        self.cache_kwarg = _cache_kwarg(lm)

    def finecap_logits(self, logits: Tensor) -> Tensor:
        """(..., V) model logits -> (..., 4 + V) in finecap's columns."""
        return logits.index_select(-1, self.source).masked_fill(self.blocked, float("-inf"))

    def _run(self, tokens: Tensor, memory: Tensor, cache: Any, masks_from: int = 0) -> Any:
        """The model on finecap tokens (N, T): memory (N, R, D) is what it attends to."""
        N, T = tokens.shape
        kwargs: dict[str, Any] = {}
        if self.image_mask:
            kwargs["encoder_attention_mask"] = torch.ones(
                memory.shape[:2], dtype=torch.long, device=tokens.device
            )
        if self.word_mask:
            kwargs["attention_mask"] = torch.ones(
                N, masks_from + T, dtype=torch.long, device=tokens.device
            )
        if cache is not None:
            kwargs[self.cache_kwarg] = cache
        return self.lm(
            input_ids=self.to_model[tokens],
            encoder_hidden_states=memory,
            use_cache=cache is not None,
            **kwargs,
        )

    def init_state(self, enc: EncoderOutput, group: int = 1) -> State:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        memory = enc.regions  # (B, R, D)
        start = torch.full((memory.shape[0], 1), Vocab.bos_id, device=memory.device)
        # One pass over <bos>, one row per image: it fills the cross-attention cache, whose
        # keys/values every later step reuses (the rest of this pass is not kept).
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self._run(start, memory, cache)
        cross = getattr(out, self.cache_kwarg).cross_attention_cache.layers
        N = memory.shape[0] * group
        state: State = {"length": torch.zeros(N, dtype=torch.long, device=memory.device)}
        for i, layer in enumerate(cross):
            state[f"cross_k{i}"] = layer.keys.repeat_interleave(group, 0)  # (N, h, R, d)
            state[f"cross_v{i}"] = layer.values.repeat_interleave(group, 0)
        return state

    def step(self, tokens: Tensor, state: State) -> StepOutput:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        layers = sum(key.startswith("cross_k") for key in state)
        fed = int(state["length"][0])
        own, cross = DynamicCache(), DynamicCache()
        cross.layers = [
            _cache_layer(state[f"cross_k{i}"], state[f"cross_v{i}"]) for i in range(layers)
        ]
        if fed:  # the words so far; before the first word the model starts the cache itself
            own.layers = [
                _cache_layer(state[f"self_k{i}"], state[f"self_v{i}"]) for i in range(layers)
            ]
        cache = EncoderDecoderCache(own, cross)  # its cross-attention marked as filled
        keys = state["cross_k0"]
        N, R = keys.shape[0], keys.shape[2]
        placeholder = keys.new_zeros(()).expand(N, R, self.feature_dim)
        out = self._run(tokens[:, None], placeholder, cache, masks_from=fed)
        new_state = dict(state)
        for i, layer in enumerate(getattr(out, self.cache_kwarg).self_attention_cache.layers):
            new_state[f"self_k{i}"], new_state[f"self_v{i}"] = layer.keys, layer.values
        new_state["length"] = state["length"] + 1
        logits = self.finecap_logits(out.logits[:, -1])  # (N, 4 + V)
        return StepOutput(logits, new_state, logits.new_zeros(N, 0))

    def forward(self, enc: EncoderOutput, tokens: Tensor) -> DecoderOutput:
        """Teacher forcing: tokens (B*G, T) from <bos>; the words after a caption's <eos>
        (<pad>) are masked out of attention (the causal mask keeps them from earlier words)."""
        G = captions_per_image(enc, tokens)
        memory = enc.regions.repeat_interleave(G, 0)  # (B*G, R, D)
        kwargs = {}
        if self.image_mask:
            kwargs["encoder_attention_mask"] = torch.ones(
                memory.shape[:2], dtype=torch.long, device=tokens.device
            )
        out = self.lm(
            input_ids=self.to_model[tokens],
            attention_mask=(tokens != Vocab.pad_id).long(),
            encoder_hidden_states=memory,
            use_cache=False,
            **kwargs,
        )
        logits = self.finecap_logits(out.logits)  # (B*G, T, 4 + V)
        return DecoderOutput(logits, logits.new_zeros(*tokens.shape, 0))
