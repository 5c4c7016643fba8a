"""Caption-aware training augmentation: changes of the picture that keep its captions true.

An augmentation that changes what a caption says must change the caption too, or the model
learns to say false things. Each step is on or off in the recipe (`data.augment`), and applies
to the training split only:

- `crop`: a random resized crop (Inception-style, aspect kept) that keeps every object in view:
  on the scenes world the crop contains all the scene's boxes (`dataset.json`'s `scene`); on
  data without boxes it keeps at least `crop_min_area` of the picture;
- `color_jitter`: brightness, contrast and saturation; the hue only for images whose captions
  name no colour (a "red circle" must stay red);
- `flip`: a horizontal flip of half the images, with "left" and "right" swapped in their
  captions (`scenes.language.mirror_text`) and the scene mirrored with its relations
  recomputed from the boxes (`scenes.world.mirror_scene`), so they stay true of the picture;
- `synonyms`: each word or phrase of a synonym group replaced by another member with
  probability `synonym_p` (EDA's synonym replacement, Wei & Zou 2019): the groups of a user
  file, or else the scenes world's own word lists (`scenes.language`).

    augment = Augmenter(AugmentConfig(flip=True, synonyms=True))
    image, record = augment(image, record)   # record: a copy with its captions (and scene) changed
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from pydantic import Field

from finecap.config import ConfigError, PathStr, Probability, Settings
from finecap.data.formats import ImageRecord
from finecap.scenes import language
from finecap.scenes.world import Scene, SceneObject, as_scene, compute_relations, mirror_scene

# Basic colour terms (Berlin & Kay's eleven and common variants) plus the scenes world's words.
BASIC_COLORS = "black white red green yellow blue brown orange pink purple grey gray violet"
COLOR_WORDS = frozenset(BASIC_COLORS.split()) | frozenset(
    w for words in language.COLOR_WORDS.values() for w in words
)


class AugmentConfig(Settings):
    """Caption-aware augmentation of the training images (each step on or off)."""

    crop: bool = False
    """Random resized crop that keeps every object of the scene in view."""
    crop_min_area: Probability = 0.6
    """Smallest share of the picture a crop keeps (the only bound on data without boxes)."""
    color_jitter: bool = False
    """Brightness, contrast and saturation; hue only when no caption names a colour."""
    brightness: Probability = 0.2
    """Brightness factor drawn from [1 - b, 1 + b] (contrast and saturation likewise)."""
    contrast: Probability = 0.2
    saturation: Probability = 0.2
    hue: float = Field(0.04, ge=0, le=0.5)
    """Hue shift drawn from [-hue, hue] of the colour circle (images naming no colour only)."""
    flip: bool = False
    """Mirror half the images, "left" and "right" swapped in the captions and the relations."""
    synonyms: bool = False
    """Replace words by synonyms: synonym_file's groups, else the scenes world's word lists."""
    synonym_p: Probability = 0.3
    """Chance that each word or phrase of a group is replaced."""
    synonym_file: PathStr | None = None
    """JSON: a list of groups [["big", "large"], ...] or {word: [synonyms, ...]}."""

    @property
    def any(self) -> bool:
        return self.crop or self.color_jitter or self.flip or self.synonyms


@dataclass
class Sample:
    """What one step changes: the picture, its captions and (scenes world) its scene."""

    image: Image.Image
    captions: list[str]
    scene: Scene | None


Step = Callable[[Sample, random.Random], Sample]


def _union_box(sample: Sample) -> tuple[float, float, float, float] | None:
    """The box around every object, in the image's pixels (the cache may have shrunk it)."""
    if sample.scene is None or not sample.scene.objects:
        return None
    scale = sample.image.width / sample.scene.image_size
    boxes = np.array([o.bbox for o in sample.scene.objects], dtype=float) * scale
    return (*boxes[:, :2].min(0), *boxes[:, 2:].max(0))


def crop_keeping_objects(sample: Sample, rnd: random.Random, min_area: float) -> Sample:
    """A crop of the picture's aspect, at least min_area of it and holding the scene's union
    box, resized back to the picture's size; the scene's boxes follow."""
    W, H = sample.image.size
    union = _union_box(sample)
    smallest = max(
        min_area**0.5, *(((union[2] - union[0]) / W, (union[3] - union[1]) / H) if union else ())
    )
    z = rnd.uniform(min(smallest, 1.0), 1.0)  # crop side / picture side
    w, h = z * W, z * H
    lo_x, hi_x = (max(0.0, union[2] - w), min(union[0], W - w)) if union else (0.0, W - w)
    lo_y, hi_y = (max(0.0, union[3] - h), min(union[1], H - h)) if union else (0.0, H - h)
    x0, y0 = rnd.uniform(lo_x, max(lo_x, hi_x)), rnd.uniform(lo_y, max(lo_y, hi_y))
    image = sample.image.resize((W, H), Image.Resampling.BICUBIC, box=(x0, y0, x0 + w, y0 + h))
    scene = sample.scene
    if scene is not None:
        side = scene.image_size
        px = W / side  # image pixels per scene unit

        def moved(o: SceneObject) -> SceneObject:
            x_0, y_0, x_1, y_1 = (
                (v * px - off) / z / px for v, off in zip(o.bbox, (x0, y0, x0, y0), strict=True)
            )
            box = (round(x_0), round(y_0), round(x_1), round(y_1))
            return SceneObject(o.shape, o.color, o.size, o.pattern, box)

        objects = [moved(o) for o in scene.objects]
        scene = Scene(scene.background, objects, compute_relations(objects, side), side)
    return Sample(image, sample.captions, scene)


def names_a_color(captions: list[str]) -> bool:
    words = {w for c in captions for w in re.findall(r"[a-z]+", c.lower())}
    return bool(words & COLOR_WORDS)


def jitter_colors(sample: Sample, rnd: random.Random, config: AugmentConfig) -> Sample:
    """Brightness, contrast, saturation by factors around 1; hue only if no colour is named."""
    image = sample.image
    for enhance, amount in (
        (ImageEnhance.Brightness, config.brightness),
        (ImageEnhance.Contrast, config.contrast),
        (ImageEnhance.Color, config.saturation),
    ):
        if amount:
            image = enhance(image).enhance(rnd.uniform(1 - amount, 1 + amount))
    if config.hue and not names_a_color(sample.captions):
        hsv = np.asarray(image.convert("HSV")).copy()
        shift = round(rnd.uniform(-config.hue, config.hue) * 256)
        hsv[..., 0] = (hsv[..., 0].astype(int) + shift) % 256
        image = Image.fromarray(hsv, "HSV").convert("RGB")
    return Sample(image, sample.captions, sample.scene)


def flip_with_captions(sample: Sample, rnd: random.Random) -> Sample:
    """Half the time: the mirror image, its captions' left/right swapped, its scene mirrored."""
    if rnd.random() >= 0.5:
        return sample
    scene = mirror_scene(sample.scene) if sample.scene is not None else None
    image = sample.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return Sample(image, [language.mirror_text(c) for c in sample.captions], scene)


def world_synonyms() -> list[list[str]]:
    """The scenes world's synonym groups: shape, colour, size, pattern and relation words."""
    tables = (
        language.SHAPE_WORDS,
        language.COLOR_WORDS,
        language.SIZE_WORDS,
        language.PATTERN_WORDS,
        language.RELATION_WORDS,
    )
    groups = [list(dict.fromkeys(words)) for table in tables for words in table.values()]
    return [group for group in groups if len(group) > 1]


def read_synonyms(path: str | os.PathLike) -> list[list[str]]:
    """A synonym file: a JSON list of groups, or {word: [synonyms]} (each entry one group)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the synonym file ({err})") from None
    groups = data
    if isinstance(data, dict):
        groups = [[k, *v] if isinstance(v, list) else None for k, v in data.items()]
    ok = isinstance(groups, list) and all(
        isinstance(g, list) and all(isinstance(w, str) and w.strip() for w in g) for g in groups
    )
    if not ok:
        raise ConfigError(
            f'{path}: expected a list of groups of words ([["big", "large"], ...]) or '
            "{word: [synonyms, ...]}"
        )
    return [list(dict.fromkeys(w.strip().lower() for w in g)) for g in groups if len(g) > 1]


class SynonymReplacer:
    """Replace each phrase of a group by another member of its group with probability p
    (longest phrases first, so "dark blue" is one phrase, not "blue")."""

    def __init__(self, groups: list[list[str]], p: float) -> None:
        self.p = p
        self.group_of: dict[str, list[str]] = {}
        for group in groups:
            for phrase in group:
                self.group_of.setdefault(phrase, group)
        phrases = sorted(self.group_of, key=len, reverse=True)
        self.pattern = re.compile(r"\b(" + "|".join(map(re.escape, phrases)) + r")\b")

    def __call__(self, text: str, rnd: random.Random) -> str:
        def swap(match: re.Match) -> str:
            phrase = match.group(1)
            others = [w for w in self.group_of[phrase] if w != phrase]
            return rnd.choice(others) if others and rnd.random() < self.p else phrase

        return language.fix_articles(self.pattern.sub(swap, text)) if self.group_of else text


class Augmenter:
    """The configured steps in order: crop, colours, flip, synonyms. Called on a training
    item, it returns the changed image and a copy of its record (captions, scene)."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        steps: list[Step] = []
        if config.crop:
            steps.append(lambda s, rnd: crop_keeping_objects(s, rnd, config.crop_min_area))
        if config.color_jitter:
            steps.append(lambda s, rnd: jitter_colors(s, rnd, config))
        if config.flip:
            steps.append(flip_with_captions)
        if config.synonyms:
            groups = read_synonyms(config.synonym_file) if config.synonym_file else world_synonyms()
            replacer = SynonymReplacer(groups, config.synonym_p)
            steps.append(
                lambda s, rnd: Sample(s.image, [replacer(c, rnd) for c in s.captions], s.scene)
            )
        self.steps = steps
        self._random: random.Random | None = None
        self._pid: int | None = None

    def _rng(self) -> random.Random:
        """This process's stream: a DataLoader worker seeds its own from torch's per-worker seed
        (Lightning's seed_everything makes them reproducible), not a copy of the parent's."""
        if self._pid != os.getpid():
            import torch

            self._random, self._pid = random.Random(torch.initial_seed()), os.getpid()
        return self._random

    def __call__(
        self, image: Image.Image, record: ImageRecord, rnd: random.Random | None = None
    ) -> tuple[Image.Image, ImageRecord]:
        rnd = rnd or self._rng()
        scene = record.extra.get("scene")
        sample = Sample(image, list(record.captions), as_scene(scene) if scene else None)
        for step in self.steps:
            sample = step(sample, rnd)
        extra = (
            record.extra
            if sample.scene is None
            else {**record.extra, "scene": sample.scene.to_dict()}
        )
        return sample.image, replace(record, captions=sample.captions, extra=extra)
