"""Caption-aware augmentation (`finecap.data.augment`) on the scenes world: the flip swaps
left/right in the captions and the flipped scene's relations are true of the flipped picture;
crops keep every object in view; colour jitter keeps the hue when captions name colours;
synonym replacement stays within its groups; the recipe's `data.augment` reaches training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finecap.config import ConfigError
from finecap.data.augment import (
    AugmentConfig,
    Augmenter,
    Sample,
    SynonymReplacer,
    crop_keeping_objects,
    flip_with_captions,
    jitter_colors,
    read_synonyms,
    world_synonyms,
)
from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.scenes import generate_world
from finecap.scenes.world import as_scene
from finecap.train.config import load_config
from finecap.train.data import CaptionDataModule

CONFIGS = Path(__file__).parents[1] / "src" / "finecap" / "configs"


class Always(random.Random):
    """random() always 0: every coin flip comes up "do it"."""

    def random(self) -> float:
        return 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world") / "w", 24, seed=2)


def _samples(world: Path) -> list[Sample]:
    corpus = load_corpus(world)
    return [
        Sample(load_image(corpus.image_path(r)), list(r.captions), as_scene(r.extra["scene"]))
        for r in corpus.images
    ]


def _pixels(image: Image.Image, box: tuple[int, ...]) -> np.ndarray:
    return np.asarray(image.crop(box))


def test_flip_swaps_left_and_right_and_its_relations_are_true_of_the_picture(world) -> None:
    sides = 0
    for sample in _samples(world):
        flipped = flip_with_captions(sample, Always())
        W = sample.image.width
        for before, after in zip(sample.scene.objects, flipped.scene.objects, strict=True):
            x0, y0, x1, y1 = before.bbox
            # Where the object is in the flipped picture: its pixels, mirrored, W - x1 .. W - x0.
            assert after.bbox == (W - x1, y0, W - x0, y1)
            np.testing.assert_array_equal(
                _pixels(flipped.image, after.bbox), _pixels(sample.image, before.bbox)[:, ::-1]
            )
        centres = [o.center for o in flipped.scene.objects]  # checked against the pixels above
        for i, relation, j in flipped.scene.relations:
            (xi, yi), (xj, yj) = centres[i], centres[j]
            holds = {
                "left of": xi < xj,
                "right of": xi > xj,
                "above": yi < yj,
                "below": yi > yj,
                "next to": True,
            }
            assert holds[relation], (i, relation, j)
            sides += relation in ("left of", "right of")
        for caption, mirrored in zip(sample.captions, flipped.captions, strict=True):
            words, swapped = caption.split(), mirrored.split()
            swap = {"left": "right", "right": "left"}
            assert swapped == [swap.get(w, w) for w in words]
    assert sides  # the world had left/right relations to flip
    text = "a red ball to the left of a blue star, right of the box"
    flipped = flip_with_captions(Sample(Image.new("RGB", (8, 8)), [text], None), Always())
    assert flipped.captions == ["a red ball to the right of a blue star, left of the box"]


def _directional(scene) -> set:  # noqa: ANN001
    return {r for r in scene.relations if r[1] in ("left of", "right of", "above", "below")}


def test_crop_keeps_every_object_in_view(world) -> None:
    rnd = random.Random(0)
    zoomed = 0
    for sample in _samples(world):
        for _ in range(3):
            cropped = crop_keeping_objects(sample, rnd, min_area=0.3)
            side = sample.scene.image_size
            assert cropped.image.size == sample.image.size
            for before, after in zip(sample.scene.objects, cropped.scene.objects, strict=True):
                x0, y0, x1, y1 = after.bbox
                assert 0 <= x0 < x1 <= side and 0 <= y0 < y1 <= side
                zoomed += (x1 - x0) > before.bbox[2] - before.bbox[0] + 1
            # A crop moves no object past another: the directional relations stay.
            assert _directional(cropped.scene) == _directional(sample.scene)
    assert zoomed
    whole = crop_keeping_objects(_samples(world)[0], rnd, min_area=1.0)
    np.testing.assert_array_equal(np.asarray(whole.image), np.asarray(_samples(world)[0].image))


def _hue_change(a: Image.Image, b: Image.Image) -> float:
    """Median hue difference (of 256) over pixels colourful in both images."""
    ha, hb = np.asarray(a.convert("HSV")).astype(int), np.asarray(b.convert("HSV")).astype(int)
    colourful = (ha[..., 1] > 80) & (hb[..., 1] > 80) & (ha[..., 2] > 60) & (hb[..., 2] > 60)
    diff = np.abs(ha[..., 0] - hb[..., 0])[colourful]
    return float(np.median(np.minimum(diff, 256 - diff)))


def test_colour_jitter_keeps_the_hue_when_captions_name_colours(world) -> None:
    # Default strengths (0.2); a hue range that would show. Brightness can still clip a
    # channel at 255 (as torchvision's does), which moves a hue by a unit or two at most.
    config = AugmentConfig(color_jitter=True, hue=0.3)
    sample = _samples(world)[1]
    assert "brown" in sample.captions[0]
    rnd = random.Random(1)
    for _ in range(5):
        jittered = jitter_colors(sample, rnd, config)
        assert not np.array_equal(np.asarray(jittered.image), np.asarray(sample.image))
        assert _hue_change(sample.image, jittered.image) <= 2
    plain = Sample(sample.image, ["a shape on a floor"], None)
    changes = [_hue_change(plain.image, jitter_colors(plain, rnd, config).image) for _ in range(5)]
    assert max(changes) > 10  # no colour named: the hue may move


def test_synonyms_stay_within_their_group(tmp_path: Path) -> None:
    groups = world_synonyms()
    group_of = {w: g for g in groups for w in g}
    assert ["blue", "dark blue"] in groups and "ball" in group_of["circle"]
    always = SynonymReplacer(groups, 1.0)
    out = always("a big dark blue ball to the left of a tiny box", random.Random(0))
    assert "dark" not in out.split() or "dark blue" in out  # "dark blue" is one phrase
    assert out.split()[1] in group_of["big"] and out.split()[1] != "big"
    assert SynonymReplacer(groups, 0.0)("a big ball", random.Random(0)) == "a big ball"
    listed, mapped, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    listed.write_text(json.dumps([["couch", "sofa"], ["dog", "puppy", "hound"]]))
    mapped.write_text(json.dumps({"couch": ["sofa"]}))
    bad.write_text(json.dumps({"couch": "sofa"}))
    assert read_synonyms(listed)[1] == ["dog", "puppy", "hound"]
    assert SynonymReplacer(read_synonyms(mapped), 1.0)("a dog on a couch", random.Random(0)) == (
        "a dog on a sofa"
    )
    with pytest.raises(ConfigError, match=str(bad)):
        read_synonyms(bad)


def test_recipe_augment_reaches_the_training_split_only(world) -> None:
    config = load_config(
        CONFIGS / "scenes_lstm.yaml",
        [f"data.dataset={world}", "data.augment.flip=true", "data.augment.synonyms=true"],
    )
    assert config.data.augment.flip and config.data.augment.any
    data = CaptionDataModule(config.data)
    data.setup("fit")
    assert isinstance(data.train_set.augment, Augmenter) and data.val_set.augment is None
    records = data.train_set.records
    changed = sum(data.train_set[i][1].captions != records[i].captions for i in range(len(records)))
    assert changed  # flips and synonyms changed some training captions
    assert all(data.val_set[i][1] is data.val_records[i] for i in range(len(data.val_records)))
    with pytest.raises(ConfigError, match="data.augment.flipp: unknown key"):
        load_config(CONFIGS / "scenes_lstm.yaml", [f"data.dataset={world}", "data.augment.flipp=1"])
