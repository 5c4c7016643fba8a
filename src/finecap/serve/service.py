"""What the service serves: the loaded captioners (+ an optional CLIP) and the one function
the model thread runs on a batch, `CaptionService.run_batch`.

It is a thin user of the library: `Captioner.caption` decodes (as `finecap caption` does, so
a file gets the same caption through both) and `finecap.metrics.clipscore.clip_s` scores, the
same function `finecap evaluate` reports CLIP-S with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from PIL import Image

from finecap.captioner import BUNDLED_MODELS, Caption, Captioner
from finecap.errors import UserError
from finecap.metrics.clipscore import CLIP_S_PREFIX, clip_s
from finecap.model_card import describe
from finecap.serve.config import MAX_BEAM_SIZE, Attention, CaptionOut, ModelOut

DEFAULT_NAME = "default"
"""The bundled default model's name in the API (`--model` absent)."""
ATTENTION_DECIMALS = 4  # JSON size: 4 decimals keep every map's shape, at a third of the bytes


class ModelLoadError(UserError, ValueError):
    """A --model value that does not load; the message names it."""


def resolve_model(name: str | None) -> Captioner:
    """The captioner a `--model` value names: a saved captioner folder, or None for the
    bundled default model. Named bundled models resolve here too, through
    `Captioner.from_pretrained`: this is the one place `finecap serve` turns names into models."""
    try:
        return Captioner.from_pretrained(name)
    except UserError:
        raise  # already one sentence naming the folder and what is missing
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"--model {name}: cannot load the model ({err})") from None


def model_names(values: list[str]) -> dict[str, str | None]:
    """{API name: --model value} for the given values (none: the bundled default, and beside it
    the bundled MLE model it was trained from, when installed)."""
    if not values:
        mle = BUNDLED_MODELS["mle"]
        return {DEFAULT_NAME: None, "mle": "mle"} if mle.is_dir() else {DEFAULT_NAME: None}
    names: dict[str, str | None] = {}
    for value in values:
        name = os.path.normpath(value)  # `runs/a/model/` and `runs/a/model` are one model
        if name in names:
            raise ModelLoadError(f"--model {value}: given twice")
        names[name] = value
    return names


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to be decoded in one batch."""

    model: str
    beam_size: int
    n_best: int
    with_attention: bool


@dataclass
class Job:
    """One request's image, on its way through the batcher."""

    image: Image.Image
    with_scores: bool
    deadline: float = float("inf")  # event-loop time by which it must be answered (or 504)


@dataclass
class Result:
    captions: list[CaptionOut]
    batch: int  # how many images shared the decoder batch


class CaptionService:
    def __init__(self, models: dict[str, Captioner], clip=None) -> None:
        """`models`: {name: captioner}, the first the default; `clip`: a
        `finecap.clip.ClipBundle` for CLIP-S, or None."""
        if not models:
            raise ValueError("a service needs at least one model")
        for name, captioner in models.items():
            if captioner.decoding.beam_size > MAX_BEAM_SIZE:
                raise ModelLoadError(
                    f"model {name}: its decoding has {captioner.decoding.beam_size} beams, more "
                    f"than the {MAX_BEAM_SIZE} a request may ask for; lower its decoding's "
                    "beam_size (config.json; finecap.json for a Hugging Face captioner)"
                )
        self.models = models
        self.clip = clip
        self.embedder = None
        if clip is not None:
            from finecap.clip import ClipEmbedder

            self.embedder = ClipEmbedder(clip)

    @property
    def default_model(self) -> str:
        return next(iter(self.models))

    def model_list(self) -> list[ModelOut]:
        return [
            ModelOut(
                name=name,
                description=describe(captioner.info) if captioner.info else "no training facts",
                default=name == self.default_model,
                encoder=captioner.config.encoder.name,
                decoder=captioner.config.decoder.name,
                max_len=captioner.decoding.max_len,
                decoding=captioner.decoding.describe(),
            )
            for name, captioner in self.models.items()
        ]

    def warm_up(self) -> None:
        """Caption one blank image with every model (the first call of a model is slow)."""
        blank = Image.new("RGB", (64, 64), (255, 255, 255))
        for name in self.models:
            self.run_batch(BatchKey(name, 1, 1, False), [Job(blank, self.clip is not None)])

    def run_batch(self, key: BatchKey, jobs: list[Job]) -> list[Result]:
        """Caption a batch of images alike (runs in the model thread)."""
        captioner = self.models[key.model]
        # The model's own decoding (its config.json's), with the request's beams.
        decoding = captioner.decoding.replace(beam_size=key.beam_size, n_best=key.n_best)
        captions = captioner.caption(
            [job.image for job in jobs],
            decoding=decoding,
            batch_size=len(jobs),
            with_attention=key.with_attention,
        )
        ranked = [[caption, *caption.alternatives] for caption in captions]
        scores = self._clip_scores(jobs, ranked)
        return [
            Result([_caption_out(c, s) for c, s in zip(each, per_image, strict=True)], len(jobs))
            for each, per_image in zip(ranked, scores, strict=True)
        ]

    def _clip_scores(
        self, jobs: list[Job], ranked: list[list[Caption]]
    ) -> list[list[float | None]]:
        """CLIP-S of every caption of the jobs that asked for it (None elsewhere)."""
        out: list[list[float | None]] = [[None] * len(each) for each in ranked]
        wanted = [i for i, job in enumerate(jobs) if job.with_scores]
        if self.embedder is None or not wanted:
            return out
        images = self.embedder.embed_images([jobs[i].image for i in wanted])  # (W, P)
        texts = [c.text for i in wanted for c in ranked[i]]
        text_emb = self.embedder.embed_texts(texts, prefix=CLIP_S_PREFIX)  # (sum n_i, P)
        counts = torch.tensor([len(ranked[i]) for i in wanted])
        scores = clip_s(images.repeat_interleave(counts, dim=0), text_emb).tolist()
        start = 0
        for i in wanted:
            out[i] = scores[start : start + len(ranked[i])]
            start += len(ranked[i])
        return out


def _caption_out(caption: Caption, score: float | None) -> CaptionOut:
    return CaptionOut(
        text=caption.text,
        score=score,
        logprob=caption.score,
        words=caption.words,
        attention=_attention(caption),
    )


def _attention(caption: Caption) -> Attention | None:
    """The caption's per-word maps as (words, rows, cols) nested lists (its <eos> row left
    out); a region set that is no square grid is one row of R cells."""
    if caption.attention is None:
        return None
    weights = caption.attention[: len(caption.words)]  # (words, R)
    rows, cols = caption.grid or (1, weights.shape[1])
    grids = weights.double().reshape(
        len(caption.words), rows, cols
    )  # float64: 4 decimals print as such
    grids = grids.round(decimals=ATTENTION_DECIMALS)
    return Attention(rows=rows, cols=cols, maps=grids.tolist())
