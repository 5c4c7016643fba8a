"""Training data of the scenes CLIP: cached preprocessed pixels and the (image, text, hard
negative, patch labels) examples, re-drawn every epoch, with mirror and shift augmentation.

Why descriptions: the scenes world's reference captions are generic ("one black triangle");
its descriptions name every object, attribute and relation. Hard negatives (NegCLIP) are the
same text with one fact changed (`finecap.scenes.changes`); patch labels feed the dense scene
supervision (`finecap.clip.dense`).
"""

from __future__ import annotations

import random
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from finecap.clip.config import CLIP_PROMPT, ClipTrainConfig
from finecap.clip.dense import (
    ATTRIBUTES,
    bag_labels,
    patch_labels,
    position_labels,
    relation_labels,
)
from finecap.data.formats import CaptionCorpus, ImageRecord
from finecap.data.images import load_image
from finecap.scenes.changes import changed_example, short_description
from finecap.scenes.language import describe_scene, mirror_text, stated_relations
from finecap.scenes.world import Scene, as_scene, mirror_scene


class RecordPixels:
    """Preprocessed pixels of `records`, index -> (3, S, S) float32.

    Small sets (the scenes world: 4,000 images at 96 px = 221 MB in float16) are decoded and
    preprocessed once and kept; larger ones (COCO at 224 px) are loaded lazily per item.
    """

    def __init__(
        self,
        corpus: CaptionCorpus,
        records: list[ImageRecord],
        processor,
        cache_limit_bytes: int = 2 << 30,
    ) -> None:
        self.corpus, self.records, self.processor = corpus, records, processor
        self.cached: torch.Tensor | None = None  # (N, 3, S, S) float16
        side = _processor_side(processor)
        if len(records) * 3 * side * side * 2 <= cache_limit_bytes:
            self.cached = torch.cat([chunk.half() for chunk in self.batches()])

    def _load(self, indices) -> torch.Tensor:
        images = [load_image(self.corpus.image_path(self.records[i])) for i in indices]
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[i].float()
        return self._load([i])[0]

    def batches(self, size: int = 256):
        """(<=size, 3, S, S) float32 chunks in order."""
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            if self.cached is not None:
                yield self.cached[start:stop].float()
            else:
                yield self._load(range(start, stop))


def _processor_side(processor) -> int:
    crop = getattr(processor, "crop_size", None) or {}
    size = getattr(processor, "size", None) or {}
    return int(crop.get("height") or size.get("shortest_edge") or size.get("height") or 224)


def descriptions_of(record: ImageRecord) -> list[str]:
    return [d for d in record.extra.get("descriptions", []) if d]


Relations = list[tuple[int, str, int]]
Said = tuple[Scene | None, Relations]
"""A scene and relations between its objects: the arguments of `relation_labels`."""
NOTHING_SAID: Said = (None, [])


class DrawnText(NamedTuple):
    """A training text, its hard negative ("" when none) and the relations each states."""

    text: str
    negative: str = ""
    said: Said = NOTHING_SAID
    said_by_negative: Said = NOTHING_SAID


class ImageTextPairs(Dataset):
    """One (pixels, text, hard negative, labels) per image; the texts are re-drawn every
    epoch (`set_epoch`). The negative is "" when none was drawn (see `ClipTrainConfig`); the
    labels are {"patches": `finecap.clip.dense.patch_labels` (N, A) of a `grid` x `grid` patch
    layout, or (0, A) without `grid`; "bag": `finecap.clip.dense.bag_labels` (BAG_SIZE,);
    "position": `finecap.clip.dense.position_labels` (K, 3); "relation", "text_relation",
    "negative_relation": `finecap.clip.dense.relation_labels` (len(RELATION_KEYS), 2) of the
    scene, of the relations the text states and of those its hard negative states, all IGNORE
    unless `cfg.relation_weight`}.

    With a scene, the descriptions are `describe_scene`'s of it (what the dataset stores, for
    a world this code wrote), so each text is the one its relation labels are for."""

    def __init__(
        self,
        pixels: RecordPixels,
        records: list[ImageRecord],
        cfg: ClipTrainConfig,
        grid: int | None = None,
    ):
        self.pixels, self.records, self.cfg, self.grid = pixels, records, cfg, grid
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, str, dict[str, torch.Tensor]]:
        rng = random.Random(self.cfg.seed * 1_000_003 + self.epoch * 100_003 + i)
        record = self.records[i]
        pixels = self.pixels[i]
        scene = record.extra.get("scene")
        descriptions = descriptions_of(record)
        refs = [c for c in record.captions if c]
        if scene is not None and rng.random() < self.cfg.flip_prob:
            pixels, scene = pixels.flip(-1), mirror_scene(scene)
            descriptions, refs = describe_scene(scene), [mirror_text(c) for c in refs]
        dx = dy = 0
        if self.cfg.max_shift and pixels is not None:
            most = self.cfg.max_shift
            dx, dy = rng.randint(-most, most), rng.randint(-most, most)
            pixels = shift(pixels, dx, dy, most)
        truth = scene and as_scene(scene)  # None without a scene
        if truth and descriptions:
            descriptions = describe_scene(truth)
        patches = torch.empty(0, len(ATTRIBUTES), dtype=torch.long)
        if self.grid is not None:
            patches = patch_labels(truth, self.grid, pixels.shape[-1], (-dx, -dy))
        side = pixels.shape[-1] if pixels is not None else truth and truth.image_size
        labels = {
            "patches": patches,
            "bag": bag_labels(truth),
            "position": position_labels(truth, side, (-dx, -dy)),  # no pixels: no shift
            "relation": self._relation_labels((truth, truth.relations if truth else [])),
        }
        if descriptions and (not refs or rng.random() < self.cfg.description_prob):
            text, negative, said, said_by_negative = self._description(rng, truth, descriptions)
        else:  # a reference: what relations it states is not parsed
            text, negative, said, said_by_negative = DrawnText(rng.choice(refs))
        labels["text_relation"] = self._relation_labels(said)
        labels["negative_relation"] = self._relation_labels(said_by_negative)
        if rng.random() < self.cfg.prompt_prob:
            text = CLIP_PROMPT + text
            negative = CLIP_PROMPT + negative if negative else ""
        return pixels, text, negative, labels

    def _relation_labels(self, said: Said) -> torch.Tensor:
        """`relation_labels` of `said`; all IGNORE when no relation term is trained."""
        return relation_labels(*(said if self.cfg.relation_weight > 0 else NOTHING_SAID))

    def _description(
        self, rng: random.Random, scene: Scene | None, descriptions: list[str]
    ) -> DrawnText:
        """A detailed (or short) description and, maybe, its one-fact-changed negative, with
        the relations each states (a short text states none)."""
        register = "short" if scene and rng.random() < self.cfg.short_prob else "description"
        variant = rng.randrange(len(descriptions))
        said: Said = (scene, _relations_stated(scene, register, variant))
        if scene is None or rng.random() >= self.cfg.hard_negative_prob:
            if register == "short":
                return DrawnText(short_description(scene), said=said)
            return DrawnText(descriptions[variant], said=said)
        kinds = list(self.cfg.hard_negative_kinds)
        rng.shuffle(kinds)
        for kind in kinds:  # the first kind this scene can take in this register
            example = changed_example(scene, kind, rng, register=register, variant=variant)
            if example is not None:
                true, false, changed = example
                said_by_negative = (changed, _relations_stated(changed, register, variant))
                return DrawnText(true, false, said, said_by_negative)
        text = short_description(scene) if register == "short" else descriptions[variant]
        return DrawnText(text, said=said)


def _relations_stated(scene: Scene | None, register: str, variant: int) -> Relations:
    """The relations a text of `scene` in `register` states (`stated_relations`)."""
    if scene is None or register == "short":
        return []
    return stated_relations(scene)[variant]


def shift(pixels: torch.Tensor, dx: int, dy: int, most: int) -> torch.Tensor:
    """(3, S, S) with its content moved by (-dx, -dy) pixels (|dx|, |dy| <= most), the edge
    pixels repeated."""
    padded = F.pad(pixels[None], (most, most, most, most), mode="replicate")[0]
    side_y, side_x = pixels.shape[-2:]
    return padded[:, most + dy : most + dy + side_y, most + dx : most + dx + side_x]
