"""CLIP-S and RefCLIP-S rewards (Hessel et al. 2021; used as rewards by Cho et al. 2022).

Both call the evaluation suite's own functions, `finecap.metrics.clipscore.clip_s` and
`refclip_s`, on embeddings from `finecap.clip.ClipEmbedder`, so a reward equals the CLIP-S
that `finecap evaluate` reports for the same caption, image and CLIP.

`ClipScorer` is the CLIP a reward scores with plus a cache of image embeddings keyed by
image id: during SCST every image is seen many times, and its embedding never changes.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

import torch
from pydantic import ValidationInfo, model_validator

from finecap.config import PathStr, PositiveFloat
from finecap.metrics.clipscore import (
    CLIP_S_PREFIX,
    CLIP_S_WEIGHT,
    clip_s,
    embed_references,
    refclip_s,
)
from finecap.rewards.base import (
    Reward,
    RewardBatch,
    RewardConfig,
    TrainingImages,
    register_reward,
    reward_config_class,
)


class ClipScorer:
    """A loaded CLIP (`ClipEmbedder`) + image embeddings cached by image id."""

    def __init__(self, embedder, cache_images: bool = True) -> None:
        self.embedder = embedder
        self.cache_images = cache_images
        self._images: dict = {}  # image id -> (P,)
        self.store, self._store_key = None, None  # a feature store of this CLIP's embeddings

    @classmethod
    def load(cls, clip: str, device: str = "cpu", batch_size: int = 64) -> ClipScorer:
        from finecap.clip.embed import ClipEmbedder, load_clip

        return cls(ClipEmbedder(load_clip(clip, device=device), batch_size=batch_size))

    @property
    def logit_scale(self) -> float:
        return self.embedder.bundle.model.logit_scale.detach().exp().item()

    def read_features(self, folder: str) -> None:
        """Take image embeddings from a feature store, by image id; refused unless this CLIP
        (its vision tower and preprocessing) made them (`finecap.features`)."""
        from finecap.features.store import clip_fingerprint, open_store

        store = open_store(folder)
        bundle = self.embedder.bundle
        self._store_key = store.clip_key(clip_fingerprint(bundle), bundle.name)
        self.store = store

    def image_embeddings(self, batch: RewardBatch) -> torch.Tensor:
        """(B, P) unit image embeddings: given, cached by id, read from the feature store by
        id, or embedded from batch.images."""
        if batch.image_embeddings is not None:
            return batch.image_embeddings.float().cpu()
        ids = batch.image_ids
        if ids is not None and all(i in self._images for i in ids):
            return torch.stack([self._images[i] for i in ids])
        if self.store is not None and ids is not None:
            return self._stored(ids)
        if batch.images is None:
            raise ValueError("a CLIP reward needs images, image_embeddings or cached image_ids")
        emb = self.embedder.embed_images(batch.images)  # (B, P)
        if ids is not None and self.cache_images:
            self._images.update(zip(ids, emb, strict=True))
        return emb

    def _stored(self, ids: list) -> torch.Tensor:
        from finecap.features.store import torch_rows

        return torch_rows(self.store.clip_embeddings(ids, self._store_key))  # (B, P)

    def embed_training_images(self, images: TrainingImages, chunk: int) -> torch.Tensor:
        """(N, P) embeddings of the training images: from the store, or `chunk` at a time."""
        if self.store is not None:
            return self._stored(images.ids)
        return torch.cat([self.embedder.embed_images(imgs) for _, imgs in images.chunks(chunk)])

    def text_embeddings(self, texts: list[str], prefix: str) -> torch.Tensor:
        """(N, P) unit text embeddings through the evaluation suite's `ClipEmbedder`.

        Texts go in sorted by length so each of the embedder's batches pads to similar lengths
        (a batch of sampled captions mixes short and long ones: ~3x less work); rows come back
        in input order. Per text the result is the embedder's own, up to float rounding.
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        emb = self.embedder.embed_texts([texts[i] for i in order], prefix=prefix)  # sorted
        return emb[torch.argsort(torch.tensor(order, dtype=torch.long))]


def as_scorer(clip, features: str | None = None) -> ClipScorer:
    """`clip` may be a folder / hub name, a `ClipScorer` or a `ClipEmbedder`; `features`: a
    feature store to read its image embeddings from."""
    if isinstance(clip, ClipScorer):
        scorer = clip
    elif isinstance(clip, str):
        scorer = ClipScorer.load(clip)
    else:
        scorer = ClipScorer(clip)
    if features is not None:
        scorer.read_features(features)
    return scorer


class ClipRewardConfig(RewardConfig):
    """Settings of a reward that scores with a CLIP."""

    clip: PathStr | None = None
    """CLIP folder or hub name (Hugging Face format); `create_reward` also takes a loaded
    `ClipScorer` / `ClipEmbedder`."""
    prefix: str = ""
    """Text put before every caption before it is embedded."""
    features: PathStr | None = None
    """Feature store holding this CLIP's image embeddings (`finecap features extract`): read
    by image id instead of embedding the batch's images (a store made with another CLIP is
    refused). In a recipe it defaults to data.features."""

    LOADED: ClassVar[tuple[str, ...]] = ("clip",)
    REQUIRED: ClassVar[tuple[str, ...]] = ("clip",)


class ClipSConfig(ClipRewardConfig):
    name: Literal["clip_s"] = "clip_s"
    w: PositiveFloat = CLIP_S_WEIGHT
    """Hessel et al.'s rescaling w of CLIP-S = w * max(cos, 0)."""
    prefix: str = CLIP_S_PREFIX
    clip_from: Literal["clip", "grammar"] = "clip"
    """Which CLIP scores: "clip", the `clip` field's; "grammar", the fine-tuned CLIP of the
    same reward list's grammar term (its `model` folder), the text encoder the grammar head
    sits on, as Cho et al.'s `loss_wrapper.py` computes CLIP-S in their CLIP-S + Grammar row.
    With "grammar", `clip` stays unset."""

    @model_validator(mode="after")
    def _required_given(self, info: ValidationInfo) -> ClipSConfig:
        # Replaces RewardConfig's check: with clip_from "grammar" the CLIP comes from the
        # grammar term (`with_grammar_clips`), so `clip` must not name a second one.
        if self.clip_from == "clip":
            return super()._required_given(info)
        if self.clip is not None:
            raise ValueError(
                f"the {self.name} reward takes its CLIP from the grammar term "
                f"(clip_from: grammar): leave `clip` unset (it is {self.clip!r})"
            )
        return self


class ClipSReward(Reward):
    """CLIP-S(c, v) = w * max(cos(E_text(prefix + c), E_img(v)), 0), per caption."""

    name = "clip_s"

    def __init__(self, cfg: ClipSConfig, clip: object | None = None) -> None:
        self.cfg = cfg
        self.scorer = as_scorer(clip if clip is not None else cfg.clip, cfg.features)

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        img = self.scorer.image_embeddings(batch)[batch.image_index()]  # (B*K, P)
        txt = self.scorer.text_embeddings(batch.captions, self.cfg.prefix)  # (B*K, P)
        return clip_s(img, txt, w=self.cfg.w)


class RefClipSConfig(ClipSConfig):
    name: Literal["refclip_s"] = "refclip_s"  # type: ignore[assignment]
    variant: Literal["hessel", "cho"] = "hessel"
    """"hessel" (raw max cosine) or "cho" (max w * relu(cos)); see finecap.metrics.clipscore."""


class RefClipSReward(Reward):
    """RefCLIP-S: harmonic mean of CLIP-S and the best reference match (variant named)."""

    name = "refclip_s"

    def __init__(self, cfg: RefClipSConfig, clip: object | None = None) -> None:
        self.cfg = cfg
        self.scorer = as_scorer(clip if clip is not None else cfg.clip, cfg.features)

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        if batch.references is None:
            raise ValueError("refclip_s needs RewardBatch.references")
        index = batch.image_index()
        img = self.scorer.image_embeddings(batch)[index]  # (B*K, P)
        txt = self.scorer.text_embeddings(batch.captions, self.cfg.prefix)  # (B*K, P)
        refs, mask = embed_references(self.scorer.embedder, batch.references, self.cfg.prefix)
        return refclip_s(img, txt, refs[index], mask[index], variant=self.cfg.variant, w=self.cfg.w)


def with_grammar_clips(terms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reward term settings with `clip` filled in for each term whose `clip_from` is
    "grammar": the grammar term's model folder (a Hugging Face CLIP, `load_clip` reads it),
    or the loaded grammar model's own CLIP. Other terms are returned as they are."""
    from finecap.rewards.grammar import GrammarRewardConfig

    wanting = [t for t in terms if t.get("clip_from") == "grammar"]
    if not wanting:
        return terms
    grammar = [t for t in terms if _configured_by(t["name"], GrammarRewardConfig)]
    if len(grammar) != 1 or grammar[0].get("model") is None:
        raise ValueError(
            "clip_from: grammar needs exactly one grammar reward term with a `model` "
            f"in the same reward list (found {len(grammar)})"
        )
    model = grammar[0]["model"]  # a folder, or a loaded finecap.clip.grammar.GrammarModel
    if isinstance(model, str | os.PathLike):
        clip: Any = str(model)
    else:
        from finecap.clip.embed import ClipEmbedder

        clip = ClipScorer(ClipEmbedder(model.bundle))
    return [{**t, "clip": clip} if t.get("clip_from") == "grammar" else t for t in terms]


def _configured_by(name: str, config: type[RewardConfig]) -> bool:
    try:
        return issubclass(reward_config_class(name), config)
    except KeyError:  # a reward registered without a settings class
        return False


register_reward("clip_s", config=ClipSConfig)(ClipSReward)
register_reward("refclip_s", config=RefClipSConfig)(RefClipSReward)
