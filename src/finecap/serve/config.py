"""The service's settings and the request / response shapes of its API (`/openapi.json`).

`ServerConfig` holds the limits and batching settings (`finecap serve` adds the models, host
and port on top of it). `CaptionRequest` is a captioning request's options, validated as every
finecap setting is (an unknown key or a bad value is one message naming the key: 422), and
`CaptionResponse` the answer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from finecap.config import NonNegativeFloat, PositiveFloat, PositiveInt, Settings
from finecap.data.images import DEFAULT_MAX_PIXELS

MAX_BEAM_SIZE = 16
"""Largest beam a request may ask for: a beam costs decoder rows for the whole batch."""


class ServerConfig(Settings):
    """Limits and dynamic batching of the captioning service."""

    max_batch: PositiveInt = 32
    """Most images captioned in one decoder batch (1 = no batching: one request at a time)."""
    batch_timeout_ms: NonNegativeFloat = 10.0
    """How long a request waits for others with the same options to share its batch."""
    max_upload_mb: PositiveFloat = 20.0
    """Largest image file accepted, in MB (10**6 bytes); larger: 413."""
    max_pixels: PositiveInt = DEFAULT_MAX_PIXELS
    """Largest image accepted, width x height, checked before decoding; larger: 422."""
    max_queue: PositiveInt = 256
    """Most requests waiting for the model; more: 503 with Retry-After."""
    timeout_s: PositiveFloat = 30.0
    """Longest a request may take from its image's decoding to its caption; longer: 504."""

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: one image at the upload limit, base64-encoded (4/3 of its
        size) in JSON, plus room for the form fields."""
        return self.max_upload_bytes * 4 // 3 + 64 * 1024


class CaptionRequest(Settings):
    """Options of `POST /v1/captions` (multipart form fields beside `image`, or JSON keys
    beside the base64 `image`)."""

    model: str | None = None
    """A loaded model's name (`GET /v1/models`); default: the first one."""
    beam_size: Annotated[int, Field(ge=1, le=MAX_BEAM_SIZE)] | None = None
    """Beams per image; 1 = greedy (default: the model's own, `GET /v1/models`' decoding, or
    n_best if larger), as `finecap caption`."""
    n_best: Annotated[int, Field(ge=1, le=MAX_BEAM_SIZE)] = 1
    """Captions returned, best first (at most beam_size)."""
    with_attention: bool = False
    """Add each word's attention map over the image's region grid."""
    with_scores: bool = False
    """Add each caption's CLIP-S (null when the service has no CLIP)."""
    filename: str | None = None
    """The image's file name in error messages (JSON requests; multipart sends its own)."""

    @model_validator(mode="after")
    def _n_best_fits(self) -> CaptionRequest:
        if self.beam_size is not None and self.n_best > self.beam_size:
            raise ValueError(
                f"n_best ({self.n_best}) must be at most beam_size ({self.beam_size}): "
                "beam search keeps at most one caption per beam"
            )
        return self

    def beams(self, model_beams: int) -> int:
        """The beam size to decode with, the model's own being `model_beams`: `finecap
        caption`'s rule for a missing one."""
        return self.beam_size or max(model_beams, self.n_best)


class Attention(BaseModel):
    rows: int
    cols: int
    maps: list[list[list[float]]]
    """(words, rows, cols): where the decoder looked for each word (each map sums to 1)."""


class CaptionOut(BaseModel):
    text: str
    score: float | None
    """CLIP-S (Hessel et al. 2021: 2.5 x max(cos, 0)) when the service has a CLIP and
    with_scores was asked; else null."""
    logprob: float
    """The model's own ranking score: the caption's summed log-probability; where the
    model's decoding has a length penalty (`GET /v1/models`) and it ran beam search (more
    than one beam, or trigrams blocked), that sum divided by ((5 + length) / 6) ** alpha, as
    beam search ranks it."""
    words: list[str]
    attention: Attention | None = None


class CaptionResponse(BaseModel):
    model: str
    captions: list[CaptionOut]
    """Best first; n_best of them."""
    ms: float
    """Time from the request's arrival to its answer, in milliseconds."""
    batch: int
    """How many images shared the decoder batch this one ran in."""


class ModelOut(BaseModel):
    name: str
    description: str
    """What it is and how it was trained (the model card's one-line summary)."""
    default: bool
    encoder: str
    decoder: str
    max_len: int
    """Most words (a pretrained captioner's tokens) per caption: its decoding's max_len,
    capped at the decoder's."""
    decoding: str
    """How it decodes unless a request sets the beams: its config.json's `decoding`, in words
    ("beam search, 3 beams, no trigram repeated")."""


class ModelsResponse(BaseModel):
    models: list[ModelOut]
    clip: str | None
    """The CLIP scoring captions (CLIP-S), or null."""
    max_upload_mb: float
    max_batch: int


class Health(BaseModel):
    status: str
    """"ok" once every model is loaded and warmed up (before, nothing listens); "stopping"
    (with 503) while the service shuts down."""
    models: list[str]
    queued: int
    batches: int
    """Decoder batches run so far."""
    images: int
    """Images captioned so far (so images / batches is the mean batch size)."""
