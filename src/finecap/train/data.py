"""Batches for caption training: each image is encoded once and decoded with C captions.

A training batch holds B images and B*C captions (C = `captions_per_image`, the
"seq_per_img" of the self-critical codebases): the encoder runs once per image and its
output is repeated for the captions, which is most of the speed of MLE training on a CPU.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from finecap.data.formats import CaptionCorpus, ImageRecord, load_corpus
from finecap.data.images import load_image
from finecap.data.vocab import Vocab
from finecap.train.config import DataConfig


@dataclass
class CaptionBatch:
    pixels: Tensor  # (B, 3, S, S)
    tokens: Tensor  # (B*C, T): <bos> words <eos> <pad>...
    image_ids: list[int]  # (B,)
    references: list[list[str]]  # (B,) raw reference captions of each image
    images: list[Image.Image]  # (B,) the RGB images (CLIP rewards embed them once, by id)


def encode_captions(vocab: Vocab, captions: list[str], max_len: int) -> Tensor:
    """Captions -> (N, T) ids with <bos> ... <eos> and <pad> to the longest."""
    rows = [[vocab.bos_id, *vocab.encode(c, max_len), vocab.eos_id] for c in captions]
    tokens = torch.full((len(rows), max(map(len, rows))), vocab.pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens


class ImageCaptions(Dataset):
    """(image, its captions) per item; images are decoded once and kept in memory."""

    def __init__(
        self, corpus: CaptionCorpus, records: list[ImageRecord], cache: bool = True
    ) -> None:
        self.corpus = corpus
        self.records = records
        self.cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> Image.Image:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        image = load_image(self.corpus.image_path(self.records[index]))
        if self.cache is not None:
            self.cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[Image.Image, ImageRecord]:
        return self.image(index), self.records[index]


def make_collate(
    preprocess: Callable[[list[Image.Image]], Tensor],
    vocab: Vocab,
    config: DataConfig,
    rng: random.Random,
) -> Callable[[list], CaptionBatch]:
    def collate(items: list[tuple[Image.Image, ImageRecord]]) -> CaptionBatch:
        captions = []
        for _, record in items:
            refs = [c for c in record.captions if c.strip()] or [""]
            # Exactly C captions per image: all of them in a shuffled order when there are
            # enough, otherwise some drawn twice.
            if len(refs) >= config.captions_per_image:
                captions += rng.sample(refs, config.captions_per_image)
            else:
                captions += [rng.choice(refs) for _ in range(config.captions_per_image)]
        return CaptionBatch(
            preprocess([image for image, _ in items]),
            encode_captions(vocab, captions, config.max_len),
            [record.image_id for _, record in items],
            [record.captions for _, record in items],
            [image for image, _ in items],
        )

    return collate


class CaptionDataModule(L.LightningDataModule):
    """Train/val loaders; set `vocab` and `preprocess` (the encoder's) before fitting."""

    def __init__(self, config: DataConfig) -> None:
        super().__init__()
        self.config = config
        self.preprocess: Callable[[list[Image.Image]], Tensor] | None = None
        self.corpus = load_corpus(config.dataset, fmt=config.format, image_root=config.image_root)
        self.train_records = self.corpus.split(config.train_split)
        self.val_records = self.corpus.split(config.val_split)[: config.val_images]
        if not self.train_records:
            raise ValueError(f"{config.dataset}: no images in split {config.train_split!r}")
        self.train_set = ImageCaptions(self.corpus, self.train_records)
        self.val_set = ImageCaptions(self.corpus, self.val_records)
        self.vocab: Vocab | None = None

    def build_vocab(self) -> Vocab:
        captions = (c for r in self.train_records for c in r.captions)
        return Vocab.build(captions, self.config.min_word_count)

    def train_dataloader(self) -> DataLoader:
        rng = random.Random(torch.initial_seed())
        collate = make_collate(self.preprocess, self.vocab, self.config, rng)
        return DataLoader(
            self.train_set,
            self.config.batch_size,
            shuffle=True,
            collate_fn=collate,
            num_workers=self.config.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        collate = make_collate(self.preprocess, self.vocab, self.config, random.Random(0))
        return DataLoader(self.val_set, self.config.batch_size, collate_fn=collate)
