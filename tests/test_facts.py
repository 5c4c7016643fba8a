"""The scene fact judge (`finecap.scenes.facts`): parsing hard captions, exact precision,
recall and CHAIR against hand-built scenes, and its metrics in `finecap evaluate`."""

from __future__ import annotations

import json

import pytest

from finecap.cli import main
from finecap.metrics.facts import FACT_METRICS
from finecap.metrics.suite import EvalData, System, run_suite
from finecap.scenes.facts import (
    FACT_KINDS,
    correct_spelling,
    parse_caption,
    score_caption,
    score_corpus,
)
from finecap.scenes.world import Scene, SceneObject

BOX = (0, 0, 10, 10)  # boxes do not matter: relations are given by hand


def _scene(background, objects, relations=()) -> Scene:
    return Scene(background, [SceneObject(*o, BOX) for o in objects], list(relations))


# A star left of two circles. 16 ground-truth facts: 3 objects x 4, 3 relations, background.
STAR_CIRCLES = _scene(
    "grass",
    [("star", "red", "large", "striped"), ("circle", "blue", "small", "plain"),
     ("circle", "green", "small", "dotted")],
    [(0, "left of", 1), (0, "left of", 2), (1, "above", 2)],
)  # fmt: skip
# The same, but the star is right of the blue circle: only the green one is right of it.
STAR_RIGHT_OF_BLUE = _scene(
    "grass",
    [(o.shape, o.color, o.size, o.pattern) for o in STAR_CIRCLES.objects],
    [(0, "right of", 1), (0, "left of", 2), (1, "above", 2)],
)
# 11 facts: 2 x 4, 2 relations, background.
BOX_BALL = _scene(
    "sand",
    [("square", "red", "large", "plain"), ("circle", "yellow", "small", "dotted")],
    [(0, "left of", 1), (0, "next to", 1)],
)
# 15 facts: 3 x 4, 2 relations, background.
HEARTS = _scene(
    "snow",
    [("heart", "pink", "small", "plain"), ("heart", "purple", "large", "striped"),
     ("hexagon", "black", "large", "dotted")],
    [(0, "left of", 1), (1, "above", 2)],
)  # fmt: skip
# 5 facts: 4 of the object, the background; no relation.
PURPLE_BALL = _scene("grass", [("circle", "purple", "small", "plain")])


def _said(caption: str) -> list[tuple]:
    """(shape, {kind: values said}) per mention."""
    return [
        (m.shape, {k: v for k, v in m.attributes.items() if v})
        for m in parse_caption(caption).mentions
    ]


def test_parsing_synonyms_plurals_counts_and_spelling():
    assert _said("a red and blue star") == [("star", {"color": ["red", "blue"]})]
    assert _said("A big dark blue box with stripes") == [
        ("square", {"size": ["large"], "color": ["blue"], "pattern": ["striped"]})
    ]
    assert _said("a polka dot six sided shape") == [("hexagon", {"pattern": ["dotted"]})]
    assert _said("two hearts, stars and boxes") == [("heart", {})] * 2 + [
        ("star", {}),
        ("square", {}),
    ]
    assert _said("three red crosses") == [("cross", {"color": ["red"]})] * 3
    assert _said("no hearts") == []
    assert _said("a hexagn beside a triangel") == [("hexagon", {}), ("triangle", {})]
    assert _said("something blue") == [(None, {"color": ["blue"]})]
    assert _said("the ball is red") == [("circle", {})]  # predicates are not read
    assert (correct_spelling("hexagn"), correct_spelling("triangel")) == ("hexagon", "triangle")
    assert correct_spelling("rad") == "rad"  # 3 letters: never fuzzed


@pytest.mark.parametrize(
    ("phrase", "backgrounds"),
    [
        ("on the beach", {"sand"}),
        ("in a grassy field", {"grass"}),
        ("against a blue sky", {"sky"}),
        ("on snowy ground", {"snow"}),
        ("in front of a red brick wall", {"brick wall"}),
        ("on the wood floor", {"wooden floor"}),
        ("on the floor", {"wooden floor", "tiled floor"}),
    ],
)
def test_background_phrasings(phrase, backgrounds):
    facts = parse_caption(f"a ball {phrase}")
    assert facts.backgrounds == [frozenset(backgrounds)]
    assert facts.mentions[0].attributes["color"] == []  # "blue sky", "red brick wall"


def test_two_colours_of_one_star_at_most_one_right():
    s = score_caption("a red and blue star", STAR_CIRCLES)
    assert (s.stated["object"], s.stated["color"], s.correct["color"]) == (1, 2, 1)
    assert s.precision() == pytest.approx(2 / 3)
    assert s.recall() == pytest.approx(2 / 16)
    assert s.chair_i == 0 and s.chair_s == 0


def test_relation_holds_for_either_circle():
    s = score_caption("a star left of a circle", STAR_CIRCLES)
    assert s.precision() == 1 and s.recall() == pytest.approx(3 / 16)
    # "a circle" aligns to the blue one, but the star is left of the green one: still right.
    s = score_caption("a star left of a circle", STAR_RIGHT_OF_BLUE)
    assert s.correct["relation"] == 1 and s.recalled["relation"] == 1
    s = score_caption("a blue circle left of a star", STAR_CIRCLES)
    assert (s.stated["relation"], s.correct["relation"]) == (1, 0)
    assert s.precision() == pytest.approx(3 / 4)


def test_a_re_mention_is_the_same_object_and_a_relation_is_recalled_once():
    s = score_caption(
        "a star left of a circle. the green circle is right of the star.", STAR_CIRCLES
    )
    # 2 mentions (the second sentence names them again), "green" said of the circle.
    assert (s.stated["object"], s.stated["color"], s.stated["relation"]) == (2, 1, 2)
    assert s.precision() == 1
    assert (s.recalled["relation"], s.recall()) == (1, pytest.approx(4 / 16))


def test_synonyms_relation_and_background():
    s = score_caption("A big red box beside a ball on the beach.", BOX_BALL)
    assert s.precision() == 1 and s.recall() == pytest.approx(6 / 11)
    assert s.recall(["relation"]) == pytest.approx(1 / 2)
    assert s.recall(["background"]) == 1


def test_counts_and_hallucinated_objects():
    s = score_caption("two hearts and a hexagn on snowy ground", HEARTS)
    assert s.precision() == 1 and s.recall() == pytest.approx(4 / 15) and s.chair_i == 0
    s = score_caption("three hearts", HEARTS)  # one heart more than there are
    assert s.precision() == pytest.approx(2 / 3) and s.recall() == pytest.approx(2 / 15)
    assert (s.chair_i, s.chair_s) == (pytest.approx(1 / 3), 1)
    s = score_caption("a blue triangel and a red star", STAR_CIRCLES)
    # the triangle is hallucinated: its object and colour facts are wrong
    assert (s.stated["color"], s.correct["color"]) == (2, 1)
    assert s.precision() == pytest.approx(2 / 4) and s.recall() == pytest.approx(2 / 16)
    assert (s.chair_i, s.chair_s) == (pytest.approx(1 / 2), 1)


def test_generic_object_with_a_colour():
    s = score_caption("a purple object in the grass", PURPLE_BALL)
    assert (s.stated["color"], s.stated["background"], s.precision()) == (1, 1, 1)
    assert s.recall() == pytest.approx(2 / 5)
    assert s.chair_i is None and s.chair_s == 0  # no object named
    assert s.recall(["relation"]) is None  # the scene holds no relation
    assert score_caption("a green object in the grass", PURPLE_BALL).precision() == 0.5


def test_corpus_is_micro_averaged_and_a_silent_caption_only_adds_to_recall():
    total = score_corpus(["a red and blue star", "a picture"], [STAR_CIRCLES, STAR_CIRCLES])
    assert total.precision() == pytest.approx(2 / 3)  # as the first caption alone
    assert total.recall() == pytest.approx(2 / 32)
    assert (total.captions, total.chair_s) == (2, 0)
    assert score_caption("a picture", STAR_CIRCLES).precision() is None


def test_without_scenes_the_group_is_unavailable():
    data = EvalData([1], [["a ball"]], ["1.png"])
    result = run_suite([System("s", ["a ball"])], data, metrics=["facts"])
    assert set(result.unavailable) == set(FACT_METRICS) and not result.systems["s"]
    assert "needs ground-truth scenes" in result.unavailable["Facts-P"]


def test_evaluate_reports_fact_metrics(tmp_path, capsys):
    from finecap.scenes import generate_world

    dataset = generate_world(tmp_path, n=12, val=0, test=10, image_size=32)
    test = [e for e in json.loads(dataset.read_text())["images"] if e["split"] == "test"]
    wrong = "a red and blue ball next to two stars on the floor"
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": e["imgid"], "caption": wrong}
                                                   for e in test]))  # fmt: skip
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--dataset", str(dataset), "--out", str(out), "--metrics", "facts"]
    assert main([*args, "--predictions", str(tmp_path / "bad.json"), "--reference-row"]) == 0
    assert "Facts-P" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    expected = {"Facts-P", "Facts-R", "CHAIR-i", "CHAIR-s"}
    expected |= {f"Facts-{m}/{k}" for m in "PR" for k in FACT_KINDS}
    assert set(FACT_METRICS) == expected
    for scores in doc["systems"].values():
        assert set(scores) | set(doc["unavailable"]) == expected
    ref, bad = doc["systems"]["Reference"], doc["systems"]["bad"]
    assert ref["Facts-P"] >= 0.95 and ref["CHAIR-i"] == 0
    assert bad["Facts-P"] < 0.5 and bad["CHAIR-i"] > 0 and bad["CHAIR-s"] > 0


def test_salient_and_shapeless_shares():
    data = EvalData([1, 2, 3], [["r"]] * 3, ["1.png"] * 3, scenes=[PURPLE_BALL] * 3)
    captions = ["a purple ball on grass", "a purple object in the grass", "a red ball"]
    result = run_suite([System("s", captions)], data, metrics=["salience"])
    scores = result.systems["s"]
    assert scores["Salient"] == pytest.approx(1 / 3)  # the third names the wrong colour
    assert scores["Shapeless"] == pytest.approx(1 / 3)  # "object" is no shape
