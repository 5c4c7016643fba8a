"""pycocoevalcap users' habits in `finecap evaluate`: per-image scores that average to the
corpus score where the corpus score is a mean, bootstrap intervals and paired tests, a Reference
row scored against the same references as the systems (leave-one-out), the fast default
selection, and Flickr8k file names as image ids."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from finecap.cli import main
from finecap.errors import UserError
from finecap.evaluation import EvaluationConfig, InputError, evaluate
from finecap.metrics.bootstrap import Resamples, mean_replicates, median_replicates, paired_p
from finecap.metrics.official import official_scores, start_meteor
from finecap.metrics.suite import EvalData, SuiteConfig, System, resolve_selection, run_suite

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")

COLORS = ["red", "blue", "green", "yellow", "purple", "black", "white", "pink"]
SHAPES = ["ball", "star", "box", "heart", "cross", "ring", "hexagon", "diamond"]
PLACES = ["grass", "sand", "snow", "floor", "street", "field"]


def _world(n: int, seed: int = 0) -> tuple[EvalData, list[str], list[str]]:
    """n images with 5 templated references each; a good system (a sixth description of the
    same scene) and a bad one (a random other scene)."""
    rng = random.Random(seed)
    refs, good, bad = [], [], []
    for _ in range(n):
        color, shape, place = rng.choice(COLORS), rng.choice(SHAPES), rng.choice(PLACES)
        say = [
            f"a {color} {shape} on the {place}",
            f"there is a {color} {shape}",
            f"a {shape} that is {color} lying on {place}",
            f"a {color} {shape} in a {place}",
            f"the {shape} is {color}",
        ]
        refs.append(say)
        good.append(f"a {color} {shape} on a {place}" if rng.random() < 0.8 else f"a {shape}")
        bad.append(f"a {rng.choice(COLORS)} {rng.choice(SHAPES)} near {rng.choice(PLACES)}")
    data = EvalData(list(range(n)), refs, [f"{i}.png" for i in range(n)])
    return data, good, bad


# --------------------------------------------------------------------------- per image


@needs_java
def test_per_image_scores_average_to_the_corpus_score_where_they_are_means():
    data, good, _ = _world(30)
    result = run_suite(
        [System("good", good)], data, metrics=["BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "diversity"]
    )
    scores, per_image = result.systems["good"], result.per_image["good"]
    for metric in ("ROUGE-L", "CIDEr", "Repetition", "Mean-Length"):  # exact means
        assert result.aggregation[metric] == "mean of per_image"
        assert np.mean(per_image[metric]) == pytest.approx(scores[metric], rel=1e-12)
    for metric in ("BLEU-1", "BLEU-4"):  # pooled counts: the mean is another number
        assert "summed over images" in result.aggregation[metric]
        assert len(per_image[metric]) == 30
        assert abs(np.mean(per_image[metric]) - scores[metric]) > 1e-3
    assert "no per-image value" in result.aggregation["Distinct-2"]
    assert "Distinct-2" not in per_image
    doc = result.to_json()
    assert doc["image_ids"] == list(range(30)) and doc["per_image"]["good"]["CIDEr"][0] >= 0


@needs_java
def test_pooled_metrics_are_recomputed_exactly_from_their_statistics():
    """BLEU from per-image counts and METEOR from the jar's summed statistics: a resample
    holding every image once is the corpus score (a caption equal to a reference included:
    METEOR counts no chunk for a perfect match)."""
    data, good, _ = _world(12)
    good[0] = data.references[0][1]
    refs = {i: r[:1] + r[2:] + [r[1]] for i, r in enumerate(data.references)}
    preds = dict(enumerate(good))
    both = Resamples(np.vstack([np.ones(12, int), np.r_[np.full(6, 2), np.zeros(6, int)]]), 0)
    meteor = start_meteor()  # one JVM for both
    out = official_scores(refs, preds, ["BLEU", "METEOR"], both, meteor)
    six = [{i: x[i] for i in range(6)} for x in (refs, preds)]
    half = official_scores(*six, ["BLEU", "METEOR"], meteor=meteor)
    for metric in ("BLEU-1", "BLEU-4", "METEOR"):
        assert out.replicates[metric][0] == pytest.approx(out.scores[metric], rel=1e-9)
        # counted twice each, six images score as those six alone
        assert out.replicates[metric][1] == pytest.approx(half.scores[metric], rel=1e-9)


def test_a_group_claiming_a_mean_that_is_not_one_is_refused(monkeypatch):
    from finecap.metrics import suite
    from finecap.metrics.suite import GroupScores, register_metric

    monkeypatch.setattr(suite, "_GROUPS", dict(suite._GROUPS))

    @register_metric("liar", ("Lie",))
    def _liar(ctx, system, wanted):
        """Says 1 while its images say 0."""
        return GroupScores({"Lie": 1.0}, per_image={"Lie": np.zeros(len(system.captions))})

    data, good, _ = _world(3)
    with pytest.raises(ValueError, match="Lie is 1.0 but the mean of its per-image values is 0"):
        run_suite([System("s", good)], data, metrics=["Lie"])


# --------------------------------------------------------------------------- bootstrap


def test_resampled_means_and_medians():
    values = np.array([1.0, 2.0, np.nan, 4.0])
    resamples = Resamples(np.array([[1, 1, 1, 1], [0, 2, 2, 0], [4, 0, 0, 0]]), 0)
    np.testing.assert_allclose(mean_replicates(values, resamples), [7 / 3, 2.0, 1.0])
    ranks = np.array([3.0, 1.0, 2.0, 10.0])
    np.testing.assert_allclose(median_replicates(ranks, resamples), [2.5, 1.5, 3.0])
    drawn = Resamples.draw(50, 200, seed=1)
    assert drawn.counts.shape == (200, 50) and (drawn.counts.sum(1) == 50).all()
    np.testing.assert_array_equal(drawn.counts, Resamples.draw(50, 200, seed=1).counts)
    assert paired_p(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5


@needs_java
def test_intervals_contain_the_estimate_and_shrink_with_more_images():
    widths = {}
    for n in (40, 400):
        data, good, _ = _world(n)
        config = SuiteConfig(bootstrap=500, bootstrap_seed=0)
        result = run_suite([System("good", good)], data, config, ["BLEU-4", "CIDEr", "ROUGE-L"])
        assert set(result.replicates["good"]) == {"BLEU-4", "CIDEr", "ROUGE-L"}
        for metric, (low, high) in result.intervals["good"].items():
            assert low <= result.systems["good"][metric] <= high, (n, metric)
        widths[n] = {m: high - low for m, (low, high) in result.intervals["good"].items()}
    for metric in widths[40]:  # about sqrt(10) narrower
        assert widths[400][metric] < 0.6 * widths[40][metric], metric


@needs_java
def test_paired_test_tells_a_better_system_and_not_identical_ones():
    data, good, bad = _world(60)
    systems = [System("good", good), System("bad", bad), System("twin", list(good))]
    config = SuiteConfig(bootstrap=300, bootstrap_seed=7)
    metrics = ["BLEU-4", "CIDEr", "diversity"]
    result = run_suite(systems, data, config, metrics)
    paired = result.paired
    assert paired["good"]["bad"]["CIDEr"]["p"] < 0.01
    assert paired["good"]["bad"]["BLEU-4"]["p"] < 0.01
    assert paired["bad"]["twin"]["CIDEr"]["p"] > 0.99  # the reverse direction
    assert paired["good"]["twin"]["CIDEr"] == {"delta": 0.0, "p": 0.5}
    assert paired["good"]["bad"]["CIDEr"]["delta"] == pytest.approx(
        result.systems["good"]["CIDEr"] - result.systems["bad"]["CIDEr"]
    )
    # set statistics are not bootstrapped, and say why
    assert "resample repeats captions" in result.bootstrap_unavailable["Distinct-2"]
    doc = result.to_json()
    assert {"intervals", "paired", "bootstrap_unavailable"} <= set(doc)
    assert doc["settings"]["bootstrap"] == 300 and doc["settings"]["bootstrap_seed"] == 7
    # seeded: the same seed gives the same intervals, another seed others
    again = run_suite(systems[:1], data, config, ["CIDEr"])
    assert again.intervals["good"]["CIDEr"] == result.intervals["good"]["CIDEr"]
    other = run_suite(systems[:1], data, SuiteConfig(bootstrap=300, bootstrap_seed=8), ["CIDEr"])
    assert other.intervals["good"]["CIDEr"] != result.intervals["good"]["CIDEr"]


# --------------------------------------------------------------------------- references


def _dataset(tmp_path, references: list[list[str]]) -> str:
    images = [
        {
            "imgid": i,
            "filename": f"img{i}.jpg",
            "split": "test",
            "sentences": [{"raw": r} for r in refs],
        }
        for i, refs in enumerate(references)
    ]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"images": images}))
    return str(path)


TWO_IMAGES = [
    ["a red ball on the grass", "a red ball lying on grass", "the ball is red", "a ball"],
    ["two blue stars", "a pair of blue stars", "blue stars on the sand", "stars on sand"],
]
SYSTEM = ["a red ball on grass", "two stars on the sand"]


@needs_java
def test_reference_row_and_systems_use_the_same_references(tmp_path):
    """Hand-made two images, four references each: with --reference-row the Reference row is
    reference 1 and every row is scored against references 2-4; with --leave-one-out each
    reference is held out in turn and the scores are the means over the four folds."""
    dataset = _dataset(tmp_path, TWO_IMAGES)
    preds = tmp_path / "sys.json"
    preds.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in enumerate(SYSTEM)]))
    metrics = ["BLEU-4", "ROUGE-L", "CIDEr"]

    def direct(captions, held_out):
        refs = {i: r[:held_out] + r[held_out + 1 :] for i, r in enumerate(TWO_IMAGES)}
        return official_scores(refs, dict(enumerate(captions)), ["BLEU", "ROUGE-L", "CIDEr"])

    one = evaluate(EvaluationConfig(predictions=[preds], dataset=dataset, reference_row=True,
                                    metrics=metrics))  # fmt: skip
    settings = one.result.settings
    assert settings["references_per_image"] == {
        "sys": {"min": 3, "max": 3},
        "Reference": {"min": 3, "max": 3},
    }
    assert settings["reference_folds"] == 1
    firsts = [refs[0] for refs in TWO_IMAGES]
    for metric in metrics:
        assert one.result.systems["sys"][metric] == pytest.approx(direct(SYSTEM, 0).scores[metric])
        assert one.result.systems["Reference"][metric] == pytest.approx(
            direct(firsts, 0).scores[metric]
        )

    loo = evaluate(EvaluationConfig(predictions=[preds], dataset=dataset, reference_row=True,
                                    leave_one_out=True, metrics=metrics))  # fmt: skip
    assert loo.result.settings["reference_folds"] == 4
    assert loo.result.settings["references_per_image"]["Reference"] == {"min": 3, "max": 3}
    for metric in metrics:
        mean = np.mean([direct(SYSTEM, k).scores[metric] for k in range(4)])
        assert loo.result.systems["sys"][metric] == pytest.approx(mean)
        humans = [direct([r[k] for r in TWO_IMAGES], k).scores[metric] for k in range(4)]
        assert loo.result.systems["Reference"][metric] == pytest.approx(np.mean(humans))
    # without a Reference row, every system against all four
    plain = evaluate(EvaluationConfig(predictions=[preds], dataset=dataset, metrics=["CIDEr"]))
    assert plain.result.settings["references_per_image"] == {"sys": {"min": 4, "max": 4}}


@needs_java
def test_reference_row_alone_and_its_limits(tmp_path, capsys):
    dataset = _dataset(tmp_path, TWO_IMAGES)
    out = tmp_path / "m.json"
    args = ["evaluate", "--dataset", dataset, "--reference-row", "--metrics", "BLEU-4"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "references per image: Reference 3 (the Reference row is each image's first" in printed
    assert list(json.loads(out.read_text())["systems"]) == ["Reference"]
    assert main(["evaluate", "--dataset", dataset]) == 2
    assert "--predictions required" in capsys.readouterr().err
    single = _dataset(tmp_path, [["only one"], ["a", "b"]])
    with pytest.raises(InputError, match="image_id 0 has one reference"):
        evaluate(EvaluationConfig(dataset=single, reference_row=True, metrics=["BLEU-4"]))


# --------------------------------------------------------------------------- selection


def test_default_selection_leaves_out_the_slow_groups(capsys):
    default = resolve_selection(None)
    assert "bertscore" not in default and "similarity" not in default
    assert {"official", "clipscore", "retrieval", "finecapeval", "facts", "diversity"} <= set(
        default
    )
    assert resolve_selection(["default"]) == default
    everything = resolve_selection(["all"])
    assert {"bertscore", "similarity"} <= set(everything)
    assert set(resolve_selection(["default", "BERTScore"])) == set(default) | {"bertscore"}
    assert main(["evaluate", "--list-metrics"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marks = {line.split()[0]: line.split()[1] for line in lines if " needs " in line}
    assert marks["official"] == "default" and marks["bertscore"] == "on"  # "on request"
    assert marks["similarity"] == "on"


# --------------------------------------------------------------------------- Flickr8k ids


NAMES = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg"]


def _flickr8k(tmp_path):
    """Flickr8k's layout: the token file (with a stray '.jpg.1' entry in no split) and the
    three split files; the three test images as files."""
    from helpers.tiny_captioners import random_images

    lines = [f"{name}#{k}\t{c}" for name in NAMES for k, c in enumerate(
        ["a dog runs on the grass .", "a brown dog outside .", "a dog on a lawn ."])]  # fmt: skip
    lines.append("0000000000_stray.jpg.1#0\ta stray entry listed in no split file")
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("\n".join(NAMES) + "\n")
    for name, image in zip(NAMES, random_images(3), strict=True):
        image.save(tmp_path / name, format="JPEG")
    return tmp_path / "Flickr8k.token.txt"


def test_flickr8k_file_names_are_image_ids(tmp_path):
    from finecap.data.formats import load_corpus

    token = _flickr8k(tmp_path)
    corpus = load_corpus(token)
    ids = {r.path: r.image_id for r in corpus.split("test")}
    assert ids == {NAMES[0]: 1, NAMES[1]: 2, NAMES[2]: 3}  # the stray name sorts first: id 0
    captions = ["a dog on the grass", "a dog", "a brown dog"]
    spellings = {
        "ids": [ids[n] for n in NAMES],
        "file names": NAMES,
        "stems": [n.removesuffix(".jpg") for n in NAMES],
        "mixed": [ids[NAMES[0]], NAMES[1], NAMES[2].removesuffix(".jpg")],
    }
    scores = {}
    for how, keys in spellings.items():
        path = tmp_path / f"{how}.json"
        entries = [{"image_id": k, "caption": c} for k, c in zip(keys, captions, strict=True)]
        path.write_text(json.dumps(entries))
        config = EvaluationConfig(predictions=[path], dataset=token, metrics=["diversity"])
        evaluation = evaluate(config)
        assert evaluation.systems[0].captions == captions, how
        scores[how] = evaluation.result.systems[how]
    assert len({json.dumps(s, sort_keys=True) for s in scores.values()}) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": "nope.jpg", "caption": "x"}]))
    with pytest.raises(UserError, match="'nope.jpg' is not an image of the dataset .*file name"):
        evaluate(EvaluationConfig(predictions=[bad], dataset=token, metrics=["diversity"]))


def test_ambiguous_names_are_refused():
    from finecap.data.formats import CaptionCorpus, ImageRecord
    from finecap.data.predictions import PredictionsError, align_predictions

    corpus = CaptionCorpus(
        "pairs",
        [ImageRecord(0, "1.jpg", "test", ["x"]), ImageRecord(1, "2.jpg", "test", ["y"]),
         ImageRecord(2, "a/3.jpg", "test", ["z"]), ImageRecord(3, "b/3.jpg", "test", ["w"])],
    )  # fmt: skip
    names = corpus.ids_by_name()
    split_of = dict.fromkeys(range(4), "test")
    align = lambda preds: align_predictions(  # noqa: E731
        preds, [0, 1, 2, 3], split_of, "p.json", "test", allow_missing=True, names=names
    )
    assert align({0: "a", "2.jpg": "b", "a/3.jpg": "c"})[0] == {0: "a", 1: "b", 2: "c"}
    assert align({"1.jpg": "a", 1: "b"})[0] == {0: "a", 1: "b"}  # a number is always an id
    with pytest.raises(PredictionsError, match="'1' is ambiguous: the id of one image and"):
        align({"1": "a"})
    with pytest.raises(PredictionsError, match="'3.jpg' is the file name of several images"):
        align({"3.jpg": "a"})


def test_caption_writes_ids_that_evaluate_reads_on_flickr8k(tmp_path, capsys):
    from helpers.tiny_captioners import make_talkative, make_tiny_captioner

    token = _flickr8k(tmp_path)
    model = tmp_path / "model"
    make_talkative(make_tiny_captioner("transformer", seed=1, max_len=6)).save_pretrained(model)
    out = tmp_path / "preds.json"
    args = ["caption", "--dataset", str(token), "--out", str(out), "--model", str(model)]
    assert main(args) == 0
    capsys.readouterr()
    written = [e["image_id"] for e in json.loads(out.read_text())]
    assert written == [1, 2, 3]
    config = EvaluationConfig(predictions=[out], dataset=token, metrics=["diversity"])
    assert evaluate(config).data.image_ids == [1, 2, 3]


def test_bootstrap_from_the_command_line(tmp_path, capsys):
    dataset = _dataset(tmp_path, TWO_IMAGES)
    files = []
    for name, captions in (("a", SYSTEM), ("b", ["a ball ball", "stars"])):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps([{"image_id": i, "caption": c} for i, c in enumerate(
            captions)]))  # fmt: skip
    out = tmp_path / "m.json"
    args = ["evaluate", "--dataset", dataset, "--predictions", *map(str, files)]
    args += ["--metrics", "diversity", "--bootstrap", "50", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "95% bootstrap intervals (50 resamples)" in printed
    assert "paired bootstrap p (A > B)" in printed and "\na > b " in printed
    assert "not bootstrapped: Distinct-1: a statistic of the whole set" in printed
    doc = json.loads(out.read_text())
    assert doc["paired"]["a"]["b"]["Repetition"]["p"] > 0.5  # b repeats itself
    low, high = doc["intervals"]["a"]["Mean-Length"]
    assert low <= doc["systems"]["a"]["Mean-Length"] <= high
    assert '"Mean-Length": [' in out.read_text()  # per-image lists on one line
