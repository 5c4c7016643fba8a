"""FineCapEval word recall: tokenization, stemming, `\\;` phrase splitting, hand-computed cases."""

from __future__ import annotations

import csv

import pytest

from finecap.metrics.finecapeval import (
    image_recall,
    load_finecapeval,
    match_images,
    phrase_recall,
    recall_scores,
    split_phrases,
    stem_words,
)


def test_stemming_and_tokenizing():
    assert stem_words("Running dogs.") == ["run", "dog"]
    assert stem_words("A dog runs!") == ["a", "dog", "run"]
    assert stem_words("") == []


def test_running_dogs_vs_a_dog_runs():
    (phrase,) = split_phrases("running dogs")
    assert phrase_recall(phrase, set(stem_words("a dog runs"))) == 1.0


def test_phrase_separator_and_partial_recall():
    phrases = split_phrases("a red ball\\;the green grass\\; \\;x")
    # "x" and " " are at most one character: dropped, as in the released script
    assert phrases == [["a", "red", "ball"], ["the", "green", "grass"]]
    # a, red, ball (3/3: "balls" stems to "ball") and the, grass (2/3) -> (1 + 2/3) / 2
    assert image_recall(phrases, "A red balls on the grass") == pytest.approx((1 + 2 / 3) / 2)
    assert image_recall([], "anything") is None
    assert image_recall(phrases, "") == 0.0  # empty caption scores 0, no crash


def test_tokens_not_substrings():
    (phrase,) = split_phrases("cat")
    assert phrase_recall(phrase, set(stem_words("a man catching a ball"))) == 0.0


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "background", "object", "relation"])
        w.writerows(rows)


def test_load_match_and_scores(tmp_path):
    path = tmp_path / "FineCapEval.csv"
    _write_csv(
        path,
        [
            ["img1.jpg", "a dog on grass", "green grass\\;a park", "a brown dog", "dog on grass"],
            ["img1.jpg", "a brown dog", "grass", "brown dog", ""],
            ["img2.jpg", "a cat", "", "a cat", "cat on a sofa"],
        ],
    )
    entries = load_finecapeval(path)
    assert sorted(entries) == ["img1.jpg", "img2.jpg"]
    assert entries["img1.jpg"].captions == ["a dog on grass", "a brown dog"]
    assert entries["img1.jpg"].phrases["background"] == [
        ["green", "grass"],
        ["a", "park"],
        ["grass"],
    ]
    # dataset paths match by base name, or by stem (FineCapEval ids without extension)
    matched = match_images(entries, ["val2014/img1.jpg", "img2.png", "img3.jpg"])
    assert [m.image if m else None for m in matched] == ["img1.jpg", "img2.jpg", None]

    scores = recall_scores([entries["img1.jpg"], entries["img2.jpg"]], ["a dog in a park", ""])
    # img1 background: green grass 0/2, a park 2/2, grass 0/1 -> 1/3; img2 has no background
    assert scores["FineCapEval-background"] == pytest.approx(1 / 3)
    # object: img1 "a brown dog" 2/3, "brown dog" 1/2 -> 7/12; img2 "a cat" vs "" -> 0
    assert scores["FineCapEval-object"] == pytest.approx((7 / 12 + 0) / 2)
    # relation: img1 "dog on grass" 1/3; img2 "cat on a sofa" 0
    assert scores["FineCapEval-relation"] == pytest.approx((1 / 3 + 0) / 2)


def test_bad_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("image,caption\nx.jpg,hello\n")
    with pytest.raises(ValueError, match="missing column.*background"):
        load_finecapeval(path)
    with pytest.raises(FileNotFoundError):
        load_finecapeval(tmp_path / "none.csv")


def test_reads_scenes_world_csv(tmp_path):
    from finecap.scenes import generate_world

    generate_world(tmp_path, n=20, val=0, test=5, image_size=32)
    entries = load_finecapeval(tmp_path / "finecapeval.csv")
    assert len(entries) == 5
    e = next(iter(entries.values()))
    assert len(e.captions) == 5 and e.phrases["object"]
