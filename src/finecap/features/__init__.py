"""The feature store: a frozen encoder's region features and CLIP image embeddings of every
image, extracted once (`finecap features extract`) and read lazily by training, the CLIP
rewards, evaluation and reproduce. `store` has the layout and the reader, `extract` the
extraction, `training` the batches read from a store."""

from finecap.features.store import (
    FeatureStore,
    ForeignStoreError,
    StoreError,
    clip_fingerprint,
    encoder_fingerprint,
    open_store,
)

__all__ = [
    "FeatureStore",
    "ForeignStoreError",
    "StoreError",
    "clip_fingerprint",
    "encoder_fingerprint",
    "open_store",
]
