"""FineCapEval word recall: tokenization, stemming, `\\;` phrase splitting, hand-computed cases,
the "cho" variant against a port of the released `tools/eval_finecapeval.py`, and the variant
named in settings, the table and the command line."""

from __future__ import annotations

import csv
import random
import re
from typing import get_args

import pytest

from finecap.metrics.finecapeval import (
    CRITERIA,
    RULES,
    cho_split_phrases,
    cho_stem_words,
    image_recall,
    load_finecapeval,
    match_images,
    phrase_recall,
    recall_scores,
    split_phrases,
    stem_words,
)
from finecap.metrics.suite import EvalData, SuiteConfig, System, run_suite


def test_stemming_and_tokenizing():
    for stem in (stem_words, cho_stem_words):
        assert stem("Running dogs.") == ["run", "dog"]
        assert stem("A dog runs!") == ["a", "dog", "run"]
        assert stem("") == []
    assert cho_stem_words("a dog. two cats") == ["a", "dog", "two", "cat"]  # sentence split


def test_running_dogs_vs_a_dog_runs():
    (phrase,) = split_phrases("running dogs")
    assert phrase_recall(phrase, set(stem_words("a dog runs"))) == 1.0
    (phrase,) = cho_split_phrases("running dogs")  # "run" is in "runs", "dog" in "dog"
    assert phrase_recall(phrase, "a dog runs") == 1.0


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


def test_cho_a_snowy_city_street_scores_one_half():
    """Stems that are no word ("snowi", "citi") never match the unstemmed caption."""
    phrases = cho_split_phrases("snowy street\\;city street")
    assert phrases == [["snowi", "street"], ["citi", "street"]]
    cho, finecap = RULES["cho"], RULES["finecap"]
    assert cho.image_recall(phrases, "a snowy city street") == 0.5
    assert finecap.image_recall(split_phrases("snowy street\\;city street"),
                                "a snowy city street") == 1.0  # fmt: skip
    assert reference_recall(["snowy street\\;city street"], "a snowy city street") == 0.5


def test_cho_substrings_and_what_it_keeps():
    cho = RULES["cho"]
    assert cho.image_recall(cho_split_phrases("cat"), "a man catching a ball") == 1.0
    # " a" is two characters, so kept; "--" too, with no word left: it scores 0
    assert cho_split_phrases(" a\\;--\\;x") == [["a"], []]
    assert cho.image_recall(cho_split_phrases("dog\\;--"), "a dog") == 0.5
    assert cho.image_recall([], "a dog") == 0.0  # an image without phrases counts as 0
    assert cho.image_recall(cho_split_phrases("dog"), "A Dog") == 0.0  # raw caption: case


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "background", "object", "relation"])
        w.writerows(rows)


ROWS = [
    ["img1.jpg", "a dog on grass", "green grass\\;a park", "a brown dog", "dog on grass"],
    ["img1.jpg", "a brown dog", "grass", "brown dog", ""],
    ["img2.jpg", "a cat", "", "a cat", "cat on a sofa"],
]


def test_load_match_and_scores(tmp_path):
    path = tmp_path / "FineCapEval.csv"
    _write_csv(path, ROWS)
    entries = load_finecapeval(path)
    assert sorted(entries) == ["img1.jpg", "img2.jpg"]
    finecap = RULES["finecap"].annotations(entries["img1.jpg"])
    assert finecap.captions == ["a dog on grass", "a brown dog"]
    assert finecap.phrases["background"] == [["green", "grass"], ["a", "park"], ["grass"]]
    # dataset paths match by base name, or by stem (FineCapEval ids without extension)
    matched = match_images(entries, ["val2014/img1.jpg", "img2.png", "img3.jpg"])
    assert [m.image if m else None for m in matched] == ["img1.jpg", "img2.jpg", None]

    two = [entries["img1.jpg"], entries["img2.jpg"]]
    scores = recall_scores(two, ["a dog in a park", ""], "finecap")
    # img1 background: green grass 0/2, a park 2/2, grass 0/1 -> 1/3; img2 has no background
    assert scores["FineCapEval-background"] == pytest.approx(1 / 3)
    # object: img1 "a brown dog" 2/3, "brown dog" 1/2 -> 7/12; img2 "a cat" vs "" -> 0
    assert scores["FineCapEval-object"] == pytest.approx((7 / 12 + 0) / 2)
    # relation: img1 "dog on grass" 1/3; img2 "cat on a sofa" 0
    assert scores["FineCapEval-relation"] == pytest.approx((1 / 3 + 0) / 2)

    # cho: rows 2 and 3 have an empty field and are dropped, so img2 is not scored at all
    cho = RULES["cho"].annotations(entries["img1.jpg"])
    assert cho.captions == ["a dog on grass"] and RULES["cho"].annotations(two[1]) is None
    scores = recall_scores(two, ["a dog in a park", ""], "cho")
    # background: green grass 0/2, a park 2/2 ("a" is a substring of everything) -> 1/2
    assert scores["FineCapEval-background"] == pytest.approx(1 / 2)
    assert scores["FineCapEval-object"] == pytest.approx(2 / 3)  # a, dog of "a brown dog"
    assert scores["FineCapEval-relation"] == pytest.approx(1 / 3)  # dog of "dog on grass"


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
    for rule in RULES.values():
        annotations = rule.annotations(next(iter(entries.values())))
        assert len(annotations.captions) == 5 and annotations.phrases["object"]


# ------------------------------------------------------------------ the released script


def _nltk_process(text: str) -> str:
    """The released script's `nltk_process`, with `word_tokenize` minus its punkt sentence
    splitter (a data download; the texts below hold no sentence end)."""
    from nltk.stem.porter import PorterStemmer
    from nltk.tokenize import NLTKWordTokenizer

    stemmer = PorterStemmer()
    tokens = [stemmer.stem(w) for w in NLTKWordTokenizer().tokenize(text)]
    return " ".join(re.sub(r"[^a-zA-Z0-9]", "", t) for t in tokens)


def _phrase_score(gt_phrases: list[str], pred_sent: str) -> float:
    """One image's score, as the script's `calculate_finegrained_scores` loop computes it."""
    score = 0.0
    for gt_phrase in gt_phrases:
        word_score = sum(1 for gt_word in gt_phrase.split() if gt_word in pred_sent)
        if len(gt_phrase.split()) > 0:
            score += word_score / len(gt_phrase.split())
    return score / len(gt_phrases) if gt_phrases else score


def reference_recall(fields: list[str], caption: str) -> float:
    """The released script's score of one caption against one image's phrase fields."""
    phrases = [_nltk_process(p) for f in fields for p in f.lower().split("\\;") if len(p) > 1]
    return _phrase_score(phrases, caption)


def reference_scores(csv_path, predictions: dict[str, str]) -> dict[str, float]:
    """Port of `tools/eval_finecapeval.py`: pandas reads the CSV, rows with a non-string field
    are skipped, phrases are processed, each criterion is averaged over images."""
    pd = pytest.importorskip("pandas")
    phrases: dict[str, dict[str, list[str]]] = {c: {} for c in CRITERIA}
    for row in pd.read_csv(csv_path).itertuples():
        image_id = row.image.split(".")[0]
        values = [row.caption, row.background, row.object, row.relation]
        if not all(isinstance(v, str) for v in values):
            continue
        for c in CRITERIA:
            pieces = getattr(row, c).lower().split("\\;")
            phrases[c].setdefault(image_id, []).extend(
                _nltk_process(p) for p in pieces if len(p) > 1
            )
    return {
        f"FineCapEval-{c}": sum(_phrase_score(ph, predictions[i]) for i, ph in by_id.items())
        / len(by_id)
        for c, by_id in phrases.items()
    }


WORDS = (  # noqa: SIM905  (inflections whose stems are not words, substrings, punctuation)
    "a the dog dogs running runs snowy city cities street cat catching man's red blue "
    "grass, on in tall trees x - ! leaves leaf sitting"
).split()


def _random_field(rng: random.Random) -> str:
    if rng.random() < 0.08:
        return rng.choice(["", "NA", "None"])  # what pandas reads as missing
    pieces = [" ".join(rng.choices(WORDS, k=rng.randint(0, 4))) for _ in range(rng.randint(1, 3))]
    return "\\;".join(pieces)


@pytest.mark.parametrize("seed", range(5))
def test_cho_equals_a_port_of_the_released_script(tmp_path, seed):
    rng = random.Random(seed)
    images = [f"img{i}.jpg" for i in range(12)]
    rows = [
        [image, _random_field(rng), *(_random_field(rng) for _ in CRITERIA)]
        for image in images
        for _ in range(5)
    ]
    path = tmp_path / "finecapeval.csv"
    _write_csv(path, rows)
    predictions = {im.split(".")[0]: " ".join(rng.choices(WORDS, k=8)) for im in images}
    entries = load_finecapeval(path)
    ours = recall_scores(list(entries.values()), [predictions[i.split(".")[0]] for i in entries])
    expected = reference_scores(path, predictions)
    assert ours == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ settings, table, CLI


def test_the_variant_is_named_in_settings_and_the_table(tmp_path):
    from finecap.report import format_table

    path = tmp_path / "FineCapEval.csv"
    _write_csv(path, ROWS)
    data = EvalData(
        image_ids=[1, 2],
        references=[["a dog"], ["a cat"]],
        file_names=["img1.jpg", "img2.jpg"],
        finecapeval=load_finecapeval(path),
    )
    systems = [System("s", ["a dog in a park", "a cat"])]
    for variant in get_args(SuiteConfig.model_fields["finecapeval_variant"].annotation):
        config = SuiteConfig(finecapeval_variant=variant)
        result = run_suite(systems, data, config, ["FineCapEval-object"])
        assert result.settings["finecapeval_variant"] == variant
        assert result.settings["finecapeval_images"] == (1 if variant == "cho" else 2)
        first = format_table(result).splitlines()[0]
        assert first.startswith(f"FineCapEval: variant {variant}"), first
    assert SuiteConfig().finecapeval_variant == "cho"
    assert set(RULES) == set(get_args(SuiteConfig.model_fields["finecapeval_variant"].annotation))


def test_command_line_flag():
    from finecap.cli import parse

    _, options, _ = parse(["evaluate", "--finecapeval-variant", "finecap"])
    assert options.finecapeval_variant == "finecap"
    _, options, _ = parse(["evaluate"])
    assert options.finecapeval_variant == "cho"
