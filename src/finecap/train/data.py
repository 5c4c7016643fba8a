"""Batches for caption training: each image is encoded once and decoded with C captions.

A training batch holds B images and B*C captions (C = `captions_per_image`, the
"seq_per_img" of the self-critical codebases): the encoder runs once per image and its
output is repeated for the captions, which is most of the speed of MLE training on a CPU.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from finecap.data.augment import Augmenter
from finecap.data.formats import (
    CaptionCorpus,
    DatasetFormatError,
    ImageRecord,
    OutsideRootError,
    load_corpus,
)
from finecap.data.images import ImageLoadError, check_image, load_image, shrink
from finecap.data.vocab import Vocab, simple_tokenize
from finecap.train.config import DataConfig


@dataclass
class CaptionBatch:
    pixels: Tensor | None  # (B, 3, S, S); None when `regions` come from a feature store
    tokens: Tensor  # (B*C, T): <bos> words <eos> <pad>...
    image_ids: list[int]  # (B,)
    references: list[list[str]]  # (B,) raw reference captions of each image
    images: list[Image.Image] | None  # (B,) RGB images (CLIP rewards embed them once, by id)
    regions: Tensor | None = None  # (B, R, D) stored backbone features (data.features)
    learned: Tensor | None = None  # (B*C,) bool: the caption is a `data.learn_from` text


def encode_captions(vocab: Vocab, captions: list[str], max_len: int) -> Tensor:
    """Captions -> (N, T) ids with <bos> ... <eos> and <pad> to the longest."""
    rows = [[vocab.bos_id, *vocab.encode(c, max_len), vocab.eos_id] for c in captions]
    tokens = torch.full((len(rows), max(map(len, rows))), vocab.pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens


class ImageCaptions(Dataset):
    """(image, its captions) per item. Images are decoded when a batch needs them (in the
    DataLoader's workers when there are any) and, with `cache_side`, kept shrunk to that side
    (the encoder's input size): memory grows with the number of images at the model's input
    size, never at the files' size (a 1024 px photo is 3 MB decoded, 27 KB at 96 px).
    `augment` (`finecap.data.augment.Augmenter`) changes each item after the cache, anew
    every time it is drawn."""

    def __init__(
        self,
        corpus: CaptionCorpus,
        records: list[ImageRecord],
        cache_side: int | None = None,
        augment: Callable[[Image.Image, ImageRecord], tuple[Image.Image, ImageRecord]]
        | None = None,
    ) -> None:
        self.corpus = corpus
        self.records = records
        self.cache_side = cache_side
        self.cache: dict[int, Image.Image] = {}
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> Image.Image:
        if index in self.cache:
            return self.cache[index]
        image = load_image(self.corpus.image_path(self.records[index]))
        if self.cache_side is not None:
            image = shrink(image, self.cache_side)
            self.cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[Image.Image, ImageRecord]:
        if self.augment is not None:
            return self.augment(self.image(index), self.records[index])
        return self.image(index), self.records[index]


def extra_sentences(record: ImageRecord, config: DataConfig) -> list[list[str]]:
    """With `data.learn_from`: the words of the first sentence of each text under that key
    that fits in max_len words (with `data.learn_longest`, the longest of them only)."""
    if config.learn_from is None:
        return []
    given = record.extra.get(config.learn_from) or []
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DatasetFormatError(
            f"{record.path}: data.learn_from key {config.learn_from!r} must hold a text or a "
            f"list of texts, not {type(given).__name__}"
        )
    sentences = [simple_tokenize(t.split(".")[0]) for t in texts]
    fit = [words for words in sentences if 0 < len(words) <= config.max_len]
    if config.learn_longest and fit:
        return [max(fit, key=len)]
    return fit


def texts_to_learn(record: ImageRecord, config: DataConfig, vocab: Vocab) -> list[str]:
    """An image's training texts: its captions and its `extra_sentences`, their words outside
    the vocabulary left out (a reference's <unk> stands for a rare word; these texts have no
    rare words to learn, and a model initialised from another keeps its vocabulary)."""
    texts = [c for c in record.captions if c.strip()]
    for words in extra_sentences(record, config):
        texts.append(" ".join(w for w in words if w in vocab.stoi))
    return texts


def learned_mask(records: list[ImageRecord], captions: list[str]) -> Tensor:
    """(B*C,) True where a sampled caption is not one of its image's captions (so it came
    from `data.learn_from`)."""
    per_image = len(captions) // len(records)
    own = [records[i // per_image].captions for i in range(len(captions))]
    return torch.tensor([bool(c) and c not in refs for c, refs in zip(captions, own, strict=True)])


def sample_captions(texts: list[list[str]], per_image: int, rng: random.Random) -> list[str]:
    """Exactly C captions per image from each image's texts, grouped per image: all of them
    in a shuffled order when there are enough, otherwise some drawn twice."""
    captions = []
    for refs in texts:
        refs = refs or [""]
        if len(refs) >= per_image:
            captions += rng.sample(refs, per_image)
        else:
            captions += [rng.choice(refs) for _ in range(per_image)]
    return captions


def make_collate(
    preprocess: Callable[[list[Image.Image]], Tensor],
    vocab: Vocab,
    config: DataConfig,
    rng: random.Random,
) -> Callable[[list], CaptionBatch]:
    def collate(items: list[tuple[Image.Image, ImageRecord]]) -> CaptionBatch:
        texts = [texts_to_learn(record, config, vocab) for _, record in items]
        captions = sample_captions(texts, config.captions_per_image, rng)
        return CaptionBatch(
            preprocess([image for image, _ in items]),
            encode_captions(vocab, captions, config.max_len),
            [record.image_id for _, record in items],
            [record.captions for _, record in items],
            [image for image, _ in items],
            learned=learned_mask([record for _, record in items], captions),
        )

    return collate


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; a worker that died of it would end the run
    # before the trainer saves its checkpoint (finecap.train.checkpoints.GracefulStop).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class CaptionDataModule(L.LightningDataModule):
    """Train/val loaders; set `vocab`, `preprocess` and `cache_side` (the encoder's) before
    fitting. Every image of both splits is checked when the module is made (header, size,
    structure: seconds for 20,000 images), so a bad file stops the run before it starts (or is
    left out, with `bad_images: skip`) instead of an epoch later."""

    def __init__(self, config: DataConfig) -> None:
        super().__init__()
        self.config = config
        self.preprocess: Callable[[list[Image.Image]], Tensor] | None = None
        self.cache_side: int | None = None
        self.corpus = load_corpus(
            config.dataset,
            fmt=config.format,
            image_root=config.image_root,
            allow_outside_root=config.allow_outside_root,
        )
        self.store = None  # a feature store (data.features): no image file is read then
        if config.features is not None:
            from finecap.features.store import open_store

            self.store = open_store(config.features)
        self.train_records = self._checked(self.corpus.split(config.train_split))
        self.val_records = self._checked(self.corpus.split(config.val_split)[: config.val_images])
        if not self.train_records:
            raise DatasetFormatError(f"{config.dataset}: no images in split {config.train_split!r}")
        key = config.learn_from
        if key is not None and not any(key in r.extra for r in self.train_records):
            raise DatasetFormatError(
                f"{config.dataset}: data.learn_from: no training entry has the key {key!r}"
            )
        self.vocab: Vocab | None = None

    def _checked(self, records: list[ImageRecord]) -> list[ImageRecord]:
        if self.store is not None:
            from finecap.features.training import check_stored

            check_stored(self.store, records, self.config.dataset)
            return records
        bad: list[str] = []
        good = []
        for record in tqdm(records, desc="checking images", unit="img", leave=False, disable=None):
            try:
                check_image(self.corpus.image_path(record))
                good.append(record)
            except (ImageLoadError, OutsideRootError) as err:
                bad.append(str(err))
        if bad and self.config.bad_images == "stop":
            shown = "\n  ".join(bad[:10]) + (
                f"\n  ... {len(bad) - 10} more" if len(bad) > 10 else ""
            )
            raise ImageLoadError(
                f"{self.config.dataset}: {len(bad)} unreadable images (data.bad_images: skip "
                f"leaves them out):\n  {shown}"
            )
        if bad:
            print(f"{self.config.dataset}: left out {len(bad)} unreadable images", flush=True)
        return good

    def build_vocab(self) -> Vocab:
        captions = [c for r in self.train_records for c in r.captions]
        captions += [
            " ".join(w) for r in self.train_records for w in extra_sentences(r, self.config)
        ]
        return Vocab.build(captions, self.config.min_word_count)

    def setup(self, stage: str) -> None:
        if self.store is not None:
            from finecap.features.training import StoredImages

            self.train_set = StoredImages(self.store, self.corpus, self.train_records)
            self.val_set = StoredImages(self.store, self.corpus, self.val_records)
            return
        side = self.cache_side if self.config.cache_images else None
        augment = Augmenter(self.config.augment) if self.config.augment.any else None
        self.train_set = ImageCaptions(self.corpus, self.train_records, side, augment)
        self.val_set = ImageCaptions(self.corpus, self.val_records, side)

    def _loader(self, dataset: Dataset, shuffle: bool, rng: random.Random) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            self.config.batch_size,
            shuffle=shuffle,
            collate_fn=self._collate(rng),
            num_workers=workers,
            persistent_workers=workers > 0,  # each worker keeps its cache across epochs
            worker_init_fn=_leave_signals_to_the_trainer if workers else None,
        )

    def _collate(self, rng: random.Random) -> Callable[[list], CaptionBatch]:
        if self.store is not None:
            from finecap.features.training import make_stored_collate

            return make_stored_collate(self.vocab, self.config, rng)
        return make_collate(self.preprocess, self.vocab, self.config, rng)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, random.Random(torch.initial_seed()))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, random.Random(0))
