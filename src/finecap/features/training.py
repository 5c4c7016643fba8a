"""Training batches from a feature store (`data.features: DIR`) instead of images.

Each item is an image's stored backbone features (R, D) and its record; the collate function
draws the C captions per image exactly as the pixel path does (`finecap.train.data`) and puts
the features in `CaptionBatch.regions`, which the tasks hand to `encoder.encode_features`:
the encoder is frozen, so this is what it would compute from the pixels. No image is opened.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from finecap.data.formats import CaptionCorpus, ImageRecord
from finecap.data.vocab import Vocab
from finecap.features.store import FeatureStore, StoreError, torch_rows
from finecap.train.config import DataConfig
from finecap.train.data import (
    CaptionBatch,
    encode_captions,
    learned_mask,
    sample_captions,
    texts_to_learn,
)


class StoredImages(Dataset):
    """(regions (R, D) float32, record) per image, read from the store when asked for."""

    def __init__(self, store: FeatureStore, corpus: CaptionCorpus, records: list[ImageRecord]):
        self.store, self.corpus, self.records = store, corpus, records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ImageRecord]:
        record = self.records[index]
        return torch_rows(self.store.regions([record.image_id])[0]), record


def make_stored_collate(
    vocab: Vocab, config: DataConfig, rng: random.Random
) -> Callable[[list], CaptionBatch]:
    def collate(items: list[tuple[torch.Tensor, ImageRecord]]) -> CaptionBatch:
        records = [record for _, record in items]
        texts = [texts_to_learn(r, config, vocab) for r in records]
        captions = sample_captions(texts, config.captions_per_image, rng)
        return CaptionBatch(
            pixels=None,
            tokens=encode_captions(vocab, captions, config.max_len),
            image_ids=[r.image_id for r in records],
            references=[r.captions for r in records],
            images=None,
            regions=torch.stack([regions for regions, _ in items]),  # (B, R, D)
            learned=learned_mask(records, captions),
        )

    return collate


def check_stored(store: FeatureStore, records: list[ImageRecord], source: str) -> None:
    """Every image of the run must be in the store (they are not read from files then)."""
    missing = store.missing([r.image_id for r in records])
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise StoreError(
            f"{source}: {len(missing)} images of the run are not in the feature store "
            f"{store.folder} (image ids {shown}); extract their splits too"
        )
