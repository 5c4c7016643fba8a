"""The scenes world: determinism, file formats, and that the text is true of the picture."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from finecap.cli import main as cli_main
from finecap.cli import parse
from finecap.data.vocab import simple_tokenize
from finecap.scenes import (
    BACKGROUNDS,
    COLORS,
    PATTERNS,
    RELATIONS,
    SHAPES,
    SIZES,
    WorldConfig,
    generate_world,
    salient_object,
)
from finecap.scenes.facts import score_caption
from finecap.scenes.language import SHAPE_WORDS

N = 30


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("scenes"), n=N, seed=7, image_size=64)


@pytest.fixture(scope="module")
def dataset(world: Path) -> dict:
    return json.loads(world.read_text())


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_vocabulary_sizes() -> None:
    assert len(BACKGROUNDS) >= 6 and len(SHAPES) >= 6 and len(COLORS) >= 8
    assert {"plain", "striped", "dotted"} <= set(PATTERNS) and set(SIZES) == {"small", "large"}
    assert set(RELATIONS) == {"left of", "right of", "above", "below", "next to"}


def test_deterministic_for_a_seed(world: Path, tmp_path: Path) -> None:
    again = generate_world(tmp_path / "again", n=N, seed=7, image_size=64)
    assert _digest(again.parent) == _digest(world.parent)
    other = generate_world(tmp_path / "other", n=N, seed=8, image_size=64)
    assert other.read_bytes() != world.read_bytes()


def test_karpathy_structure(world: Path, dataset: dict) -> None:
    assert dataset["dataset"] == "scenes"
    images = dataset["images"]
    assert len(images) == N
    assert Counter(e["split"] for e in images) == {"train": 24, "val": 3, "test": 3}
    sentids = set()
    for k, e in enumerate(images):
        assert e["imgid"] == k
        assert [s["sentid"] for s in e["sentences"]] == e["sentids"]
        assert len(e["sentences"]) == 5
        sentids.update(e["sentids"])
        for s in e["sentences"]:
            assert s["imgid"] == k
            assert s["tokens"] == simple_tokenize(s["raw"]) and s["tokens"]
        assert e["descriptions"] and all(isinstance(d, str) for d in e["descriptions"])
        scene = e["scene"]
        assert scene["background"] in BACKGROUNDS and 1 <= len(scene["objects"]) <= 4
        for o in scene["objects"]:
            assert (o["shape"], o["color"]) in {(s, c) for s in SHAPES for c in COLORS}
            assert o["size"] in SIZES and o["pattern"] in PATTERNS and len(o["bbox"]) == 4
        for i, rel, j in scene["relations"]:
            assert rel in RELATIONS and 0 <= i < j < len(scene["objects"])
    assert len(sentids) == 5 * N


def test_images_exist_with_configured_size(world: Path, dataset: dict) -> None:
    for e in dataset["images"]:
        with Image.open(world.parent / e["filepath"] / e["filename"]) as img:
            assert img.mode == "RGB" and img.size == (64, 64)


def test_captions_name_the_salient_object(dataset: dict) -> None:
    hits = total = 0
    for e in dataset["images"]:
        shape = e["scene"]["objects"][salient_object(e["scene"])]["shape"]
        words = SHAPE_WORDS[shape]
        for s in e["sentences"]:
            total += 1
            hits += any(f" {w} " in f" {' '.join(s['tokens'])} " for w in words)
    assert hits / total > 0.7


def test_salient_is_largest_then_central() -> None:
    def obj(shape: str, size: str, bbox: list[int]) -> dict:
        return {"shape": shape, "color": "red", "size": size, "pattern": "plain", "bbox": bbox}

    objects = [
        obj("star", "small", [40, 40, 58, 58]),
        obj("heart", "large", [0, 0, 35, 35]),
        obj("cross", "large", [55, 55, 90, 90]),
    ]
    scene = {"background": "grass", "objects": objects, "relations": []}
    assert salient_object(scene) == 2  # both large; the cross is nearer the centre (48, 48)


def test_descriptions_mention_every_object(dataset: dict) -> None:
    for e in dataset["images"]:
        for d in e["descriptions"]:
            text = " ".join(simple_tokenize(d))
            bg = e["scene"]["background"]
            assert bg in text
            for o in e["scene"]["objects"]:
                assert f"{o['color']} {o['pattern']} {o['shape']}" in text


def test_partial_descriptions_name_one_object_more_each_and_are_true(dataset: dict) -> None:
    for e in dataset["images"]:
        scene, texts = e["scene"], e["partial_descriptions"]
        assert len(texts) == len(scene["objects"])
        assert texts[-1] == e["descriptions"][0].split(".")[0] + "."
        salient = scene["objects"][salient_object(scene)]
        assert texts[0].startswith(f"a {salient['size']} {salient['color']}")
        for n, text in enumerate(texts, start=1):
            counts = score_caption(text, scene)
            assert counts.stated == counts.correct, text  # every stated fact is true
            assert counts.correct["object"] == n and counts.correct["background"] == 1, text


def test_relations_match_boxes(dataset: dict) -> None:
    def center(o: dict) -> tuple[float, float]:
        x0, y0, x1, y1 = o["bbox"]
        return (x0 + x1) / 2, (y0 + y1) / 2

    for e in dataset["images"]:
        objs = e["scene"]["objects"]
        for a, b in ((x["bbox"], y["bbox"]) for i, x in enumerate(objs) for y in objs[i + 1 :]):
            overlap = min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
            assert not overlap
        for i, rel, j in e["scene"]["relations"]:
            (xi, yi), (xj, yj) = center(objs[i]), center(objs[j])
            checks = {
                "left of": xi < xj,
                "right of": xi > xj,
                "above": yi < yj,
                "below": yi > yj,
                "next to": True,
            }
            assert checks[rel], (e["filename"], i, rel, j)


def test_finecapeval_csv(world: Path, dataset: dict) -> None:
    with open(world.parent / "finecapeval.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "caption", "background", "object", "relation"]
    per_image = Counter(r["image"] for r in rows)
    evaluated = {e["filename"] for e in dataset["images"] if e["split"] in ("val", "test")}
    assert set(per_image) == evaluated and set(per_image.values()) == {5}
    n_objects = {e["filename"]: len(e["scene"]["objects"]) for e in dataset["images"]}
    assert any("\\;" in r["object"] for r in rows)
    for r in rows:
        assert r["caption"] and r["background"] and r["relation"]
        assert len(r["object"].split("\\;")) == n_objects[r["image"]]


def test_test_split_has_shared_salient_groups(tmp_path: Path) -> None:
    path = generate_world(tmp_path, n=40, seed=3, val=0, test=20, group_size=5, image_size=48)
    test = [e for e in json.loads(path.read_text())["images"] if e["split"] == "test"]
    keys = []
    for e in test:
        obj = e["scene"]["objects"][salient_object(e["scene"])]
        keys.append((obj["shape"], obj["color"]))
    for g in range(0, 20, 5):
        assert len(set(keys[g : g + 5])) == 1, keys[g : g + 5]
    scenes = [json.dumps(e["scene"], sort_keys=True) for e in test]
    assert len(set(scenes)) == len(scenes)  # the rest differs


def test_cli_generate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = cli_main(["scenes", "generate", "--out", str(tmp_path), "--n", "6", "--no-progress"])
    assert rc == 0 and (tmp_path / "dataset.json").is_file()
    assert "6 images" in capsys.readouterr().out
    assert cli_main(["scenes", "generate", "--out", str(tmp_path), "--n", "2", "--test", "5"]) == 2
    assert "exceed n (2)" in capsys.readouterr().err


def test_cli_generate_default_out_is_where_the_recipes_read(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main(["scenes", "generate", "--n", "4", "--no-progress"]) == 0
    assert (tmp_path / "data" / "scenes" / "dataset.json").is_file()


def test_cli_generate_help_and_bad_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["scenes", "generate", "--help"]) == 0
    assert "--no-progress" in capsys.readouterr().out
    args = ["scenes", "generate", "--out", str(tmp_path / "w"), "--no-progress"]
    assert cli_main([*args, "--group-size", "0"]) == 2
    assert re.search(r"group[_-]size", capsys.readouterr().err)
    assert cli_main([*args, "--n", "-1"]) == 2
    assert "greater than or equal to 1" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_world_config_checks_and_split_sizes() -> None:
    assert WorldConfig(n=25).split_sizes() == {"train": 21, "val": 2, "test": 2}
    assert WorldConfig(n=10, val=0, test=10).split_sizes() == {"train": 0, "val": 0, "test": 10}
    for bad in ({"n": 0}, {"n": 4, "val": 3, "test": 2}, {"image_size": 16}, {"val": -1}):
        with pytest.raises(ValueError):
            WorldConfig(**bad)


def test_cli_flags_reach_the_config() -> None:
    _, options, _ = parse(["scenes", "generate", "--out", "o", "--n", "50", "--seed", "2",
                           "--image-size", "48", "--val", "5", "--test", "10",
                           "--group-size", "2", "--no-progress"])  # fmt: skip
    assert options.out == "o" and options.progress is False
    assert options.world == WorldConfig(n=50, seed=2, image_size=48, val=5, test=10, group_size=2)
