"""CIDEr-D reward (Vedantam et al. 2015; as an SCST reward: Rennie et al. 2017).

Wraps the metrics package's `CiderD`, built once, at construction, on the *training*
references: the document frequencies and each image's reference vectors are cached, never
recomputed per batch. Captions and references go through the COCO
evaluation tokenizer (`ptb_tokenize`), and, as in the reference SCST code, an end token is
appended to every reference and candidate (`append_eos`). Candidates are scored against the
references of their image id, so `RewardBatch.image_ids` must be training image ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from finecap import __version__
from finecap.config import PathStr, PositiveFloat
from finecap.rewards.base import Reward, RewardBatch, RewardConfig, register_reward


class CiderConfig(RewardConfig):
    name: Literal["cider"] = "cider"
    dataset: PathStr | None = None
    """Dataset whose `split` references score the captions; in a recipe, the recipe's own
    training data unless given."""
    split: str = "train"
    append_eos: bool = True
    """Append an end token to candidates and references (the reference SCST code's reward)."""
    sigma: PositiveFloat = 6.0
    """CIDEr-D's length penalty width."""
    cache: bool = True
    """Keep the scorer built on `dataset`'s references (document frequencies, reference
    vectors) in `$FINECAP_CACHE/cider/` (default `~/.cache/finecap`), keyed by the dataset
    file's SHA-256, split and settings, and load it in later runs, as the reference SCST code
    precomputes its document frequencies once (`prepro_ngrams.py`)."""

    LOADED: ClassVar[tuple[str, ...]] = ("references",)


def cache_dir() -> Path:
    """Where finecap keeps what it can rebuild: `$FINECAP_CACHE`, or `~/.cache/finecap`."""
    return Path(os.environ.get("FINECAP_CACHE") or Path.home() / ".cache" / "finecap")


def scorer_cache_path(cfg: CiderConfig) -> Path | None:
    """The cache file of `cfg`'s scorer, or None when its references are not one JSON file
    (a Flickr8k token file's splits live in other files, which the key would not cover)."""
    dataset = Path(cfg.dataset) if cfg.dataset is not None else None
    if dataset is None or dataset.suffix.lower() != ".json" or not dataset.is_file():
        return None
    from finecap.metrics.cider import SAVE_FORMAT

    digest = hashlib.sha256()
    with dataset.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    key = json.dumps(
        [SAVE_FORMAT, __version__, digest.hexdigest(), cfg.split, cfg.sigma, cfg.append_eos]
    )
    return cache_dir() / "cider" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"


def load_references(dataset: str, split: str = "train") -> dict[Any, list[str]]:
    from finecap.data.formats import load_corpus

    return {r.image_id: list(r.captions) for r in load_corpus(dataset).split(split)}


class CiderReward(Reward):
    name = "cider"

    def __init__(
        self, cfg: CiderConfig, references: Mapping[Any, Sequence[str]] | None = None
    ) -> None:
        """`references`: image id -> raw training references, instead of `cfg.dataset`."""
        from finecap.metrics.cider import CiderD
        from finecap.metrics.tokenizer import tokenize_captions

        if (references is None) == (cfg.dataset is None):
            raise ValueError("cider reward: give exactly one of `references` or `dataset`")
        self.cfg = cfg
        cached = scorer_cache_path(cfg) if references is None and cfg.cache else None
        if cached is not None and cached.is_file():
            try:
                self.scorer = CiderD.load(cached)
                return
            except ValueError as err:  # torn or foreign: build it again and replace it
                warnings.warn(f"cider reward: rebuilding the cached scorer: {err}", stacklevel=2)
        refs = references if references is not None else load_references(cfg.dataset, cfg.split)
        self.scorer = CiderD(tokenize_captions(refs), sigma=cfg.sigma, append_eos=cfg.append_eos)
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                self.scorer.save(cached)
            except (OSError, TypeError) as err:  # a read-only home, or ids JSON cannot hold
                warnings.warn(f"cider reward: scorer not cached ({err})", stacklevel=2)

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        from finecap.metrics.tokenizer import ptb_tokenize

        candidates = [ptb_tokenize(c) for c in batch.captions]
        scores = self.scorer.score(batch.caption_image_ids(), candidates)  # (B*K,)
        return torch.as_tensor(scores, dtype=torch.float32)


register_reward("cider", config=CiderConfig)(CiderReward)
