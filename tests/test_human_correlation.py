"""Metric meta-evaluation (`finecap.metrics.human`, `finecap evaluate --judgments`): Kendall tau
against a brute-force count, the three judgment formats on real Flickr8k lines, the Expert and
CrowdFlower protocols, hand-checked tables, the CLIP-S path on a tiny CLIP, and the errors."""

from __future__ import annotations

import json
import math
import shutil
from itertools import combinations

import numpy as np
import pytest

from finecap.cli import main
from finecap.data.formats import DatasetFormatError
from finecap.metrics import human
from finecap.metrics.human import (
    JudgmentsConfig,
    apply_protocol,
    correlate,
    correlate_with_humans,
    format_correlation_table,
    kendall_tau,
)
from finecap.metrics.judgments import JudgmentsError, dataset_captions, load_judgments

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")

# Real lines of Flickr8k.token.txt: the images the judgments below refer to.
TOKENS = """\
1056338697_4f7d7ce270.jpg#0\tA blond woman in a blue shirt appears to wait for a ride .
1056338697_4f7d7ce270.jpg#1\tA blond woman is on the street hailing a taxi .
1056338697_4f7d7ce270.jpg#2\tA woman is signaling is to traffic , as seen from behind .
1056338697_4f7d7ce270.jpg#3\tA woman with blonde hair wearing a blue tube top is waving on the side of the street .
1056338697_4f7d7ce270.jpg#4\tThe woman in the blue dress is holding out her arm at oncoming traffic .
114051287_dd85625a04.jpg#0\tA boy dressed in soccer attire and holding his shoes getting out of a car .
114051287_dd85625a04.jpg#1\tA boy in a red soccer strip is holding his boots in his hand whilst stepping out of a car .
114051287_dd85625a04.jpg#2\tA boy in glasses is wearing a red shirt .
114051287_dd85625a04.jpg#3\tA child getting out of the car wearing soccer shoes .
114051287_dd85625a04.jpg#4\tA young boy gets out of the van and prepares his shoes for wear during a soccer game .
1427391496_ea512cbe7f.jpg#0\tA child in a black shirt standing on a wooden dock near a picnic table .
1427391496_ea512cbe7f.jpg#1\tA little boy is smiling for the camera on a playground
1427391496_ea512cbe7f.jpg#2\tA young boy holds onto a blue handle on a pier .
1427391496_ea512cbe7f.jpg#3\tA young child stands on a wood dock next to the water .
1427391496_ea512cbe7f.jpg#4\tBoy in green sweater with white stripe on sleeve standing on wood planked floor with body of water in the background .
2549968784_39bfbe44f9.jpg#0\tA child wearing swim goggles .
2549968784_39bfbe44f9.jpg#1\tA small child wears goggles near a pool .
2549968784_39bfbe44f9.jpg#2\tA young child is wearing blue goggles and sitting in a float in a pool .
2549968784_39bfbe44f9.jpg#3\tA young child wearing blue goggles sits on a raft in a swimming pool .
2549968784_39bfbe44f9.jpg#4\tThe little child is wearing blue goggles .
2718495608_d8533e3ac5.jpg#0\ta brunette girl wearing sunglasses and a yellow shirt
2718495608_d8533e3ac5.jpg#1\tA girl in sunglasses smiles .
2718495608_d8533e3ac5.jpg#2\tA girl wearing a yellow shirt and sunglasses smiles .
2718495608_d8533e3ac5.jpg#3\ta girl wearing sunglasses smiles for the camera .
2718495608_d8533e3ac5.jpg#4\tA woman with a yellow shirt wears sunglasses and smiles .
3181701312_70a379ab6e.jpg#0\tA homeless man living on the street
3181701312_70a379ab6e.jpg#1\tA man covered with a blanket is asleep on the sidewalk .
3181701312_70a379ab6e.jpg#2\tA man sleeps under a blanket on a city street .
3181701312_70a379ab6e.jpg#3\tA man takes a nap on the sidewalk in a busy city .
3181701312_70a379ab6e.jpg#4\tThe man is sleeping under a blanket in the street as the crowds pass by .
"""  # noqa: E501 (real captions, one a line)
IMAGES = sorted({line.split("#")[0] for line in TOKENS.splitlines()})
WOMAN, BOY = "1056338697_4f7d7ce270.jpg", "114051287_dd85625a04.jpg"
# The first three lines of ExpertAnnotations.txt and of CrowdFlowerAnnotations.txt.
EXPERT_REAL = """\
1056338697_4f7d7ce270.jpg\t2549968784_39bfbe44f9.jpg#2\t1\t1\t1
1056338697_4f7d7ce270.jpg\t2718495608_d8533e3ac5.jpg#2\t1\t1\t2
1056338697_4f7d7ce270.jpg\t3181701312_70a379ab6e.jpg#2\t1\t1\t2
"""
CROWDFLOWER_REAL = """\
1056338697_4f7d7ce270.jpg\t1056338697_4f7d7ce270.jpg#2\t1\t3\t0
1056338697_4f7d7ce270.jpg\t114051287_dd85625a04.jpg#2\t0\t0\t3
1056338697_4f7d7ce270.jpg\t1427391496_ea512cbe7f.jpg#2\t0\t0\t3
"""
# Hand-made, in the Expert layout: the third pair's caption is the woman's own reference #2.
EXPERT_HAND = """\
1056338697_4f7d7ce270.jpg\t2549968784_39bfbe44f9.jpg#2\t1\t1\t2
1056338697_4f7d7ce270.jpg\t2718495608_d8533e3ac5.jpg#2\t2\t3\t3
1056338697_4f7d7ce270.jpg\t1056338697_4f7d7ce270.jpg#2\t4\t4\t4
114051287_dd85625a04.jpg\t3181701312_70a379ab6e.jpg#2\t4\t4\t4
"""
# The same pairs in the CrowdFlower layout, one share of "yes" each.
CROWDFLOWER_HAND = """\
1056338697_4f7d7ce270.jpg\t2549968784_39bfbe44f9.jpg#2\t0\t0\t3
1056338697_4f7d7ce270.jpg\t2718495608_d8533e3ac5.jpg#2\t0.5\t1\t1
1056338697_4f7d7ce270.jpg\t1056338697_4f7d7ce270.jpg#2\t1\t3\t0
114051287_dd85625a04.jpg\t3181701312_70a379ab6e.jpg#2\t0.5\t2\t2
"""
CAPTION = {  # caption id -> text, as the token file says
    key: text for key, text in (line.split("\t") for line in TOKENS.splitlines())
}
OWN = CAPTION[f"{WOMAN}#2"]
# The per-caption values of the fake metric of the hand-checked tables.
VALUE = {
    CAPTION["2549968784_39bfbe44f9.jpg#2"]: 0.1,
    CAPTION["2718495608_d8533e3ac5.jpg#2"]: 0.3,
    OWN: 0.9,
    CAPTION["3181701312_70a379ab6e.jpg#2"]: 0.2,
}


@pytest.fixture
def flickr(tmp_path):
    """A Flickr8k text folder of the five images (all in the test split)."""
    root = tmp_path / "flickr8k"
    root.mkdir()
    (root / "Flickr8k.token.txt").write_text(TOKENS)
    (root / "Flickr_8k.trainImages.txt").write_text("")
    (root / "Flickr_8k.devImages.txt").write_text("")
    (root / "Flickr_8k.testImages.txt").write_text("\n".join(IMAGES) + "\n")
    return root


def _write(folder, name: str, text: str):
    path = folder / name
    path.write_text(text)
    return path


def _brute_tau(x, y, variant: str) -> float:
    """Kendall tau straight from its definition, over all pairs."""
    c = d = tx = ty = 0
    for i, j in combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        c, d = c + (sx * sy > 0), d + (sx * sy < 0)
        tx, ty = tx + (sx == 0), ty + (sy == 0)
    total = len(x) * (len(x) - 1) / 2
    if variant == "b":
        return (c - d) / math.sqrt((total - tx) * (total - ty))
    m = min(len(set(x)), len(set(y)))
    return 2 * (c - d) / (len(x) ** 2 * (m - 1) / m)


# ---------------------------------------------------------------------------------------------
# Kendall tau


@pytest.mark.parametrize("variant", ["b", "c"])
def test_kendall_tau_equals_its_definition_and_scipy(variant):
    rng = np.random.default_rng(0)
    for n, levels in [(6, 2), (7, 3), (60, 5), (80, 80)]:
        x = rng.integers(0, levels, n).astype(float)
        y = (x + rng.integers(0, 3, n)).astype(float)  # correlated, with ties
        ours = kendall_tau(x, y, variant)
        assert ours == pytest.approx(_brute_tau(x, y, variant), abs=1e-12), (n, levels)
        try:
            from scipy.stats import kendalltau
        except ImportError:
            continue
        assert ours == pytest.approx(kendalltau(x, y, variant=variant).statistic, abs=1e-12)
    assert math.isnan(kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], variant))


def test_correlate_repeats_each_value_for_each_rating():
    # x = .1 .1 .1 | .3 .3 .3 | .2 .2 .2 ; y = 1 1 2 | 2 3 3 | 4 4 4
    # groups 1 vs 2: 8 concordant, 1 tie; 1 vs 3: 9 concordant; 2 vs 3: 9 discordant.
    # C - D = 8; tau-c = 2 * 8 / (9^2 * (3 - 1) / 3) = 16/54; tau-b = 8 / sqrt(27 * 30).
    ratings = [[1, 1, 2], [2, 3, 3], [4, 4, 4]]
    c = correlate([0.1, 0.3, 0.2], ratings, "c")
    assert (c.tau, c.variant, c.n) == (pytest.approx(16 / 54), "c", 9)
    assert correlate([0.1, 0.3, 0.2], ratings, "b").tau == pytest.approx(8 / math.sqrt(27 * 30))


# ---------------------------------------------------------------------------------------------
# formats


def test_expert_and_crowdflower_files_parse(tmp_path):
    expert = load_judgments(_write(tmp_path, "e.txt", EXPERT_REAL), CAPTION)
    assert expert.format == "expert"
    assert (expert.protocol.own_reference, expert.protocol.tau_variant) == ("drop_pair", "c")
    first = expert.pairs[0]
    assert (first.image, first.caption_id, first.ratings, first.line) == (
        WOMAN,
        "2549968784_39bfbe44f9.jpg#2",
        [1.0, 1.0, 1.0],
        1,
    )
    assert first.caption == CAPTION["2549968784_39bfbe44f9.jpg#2"]
    assert expert.n_ratings == 9

    crowd = load_judgments(_write(tmp_path, "c.txt", CROWDFLOWER_REAL), CAPTION)
    assert crowd.format == "crowdflower"
    assert (crowd.protocol.own_reference, crowd.protocol.tau_variant) == (
        "remove_from_references",
        "b",
    )
    assert [p.ratings for p in crowd.pairs] == [[1.0], [0.0], [0.0]]
    assert crowd.pairs[0].caption == OWN


def test_csv_file_parses_and_groups_ratings_of_a_pair(tmp_path):
    path = _write(
        tmp_path,
        "j.csv",
        "image,caption,score,rater\n"
        f'{WOMAN},"A woman waves, at a taxi .",0.8,r1\n'
        f"{BOY},A boy in a car .,2,r1\n"
        f'{WOMAN},"A woman waves, at a taxi .",0.6,r2\n',
    )
    judged = load_judgments(path, {})
    assert judged.format == "csv" and judged.protocol.tau_variant == "b"
    assert [(p.image, p.caption, p.ratings, p.line) for p in judged.pairs] == [
        (WOMAN, "A woman waves, at a taxi .", [0.8, 0.6], 2),
        (BOY, "A boy in a car .", [2.0], 3),
    ]


@pytest.mark.parametrize(
    ("fmt", "text", "line", "fault"),
    [
        ("expert", EXPERT_REAL + f"{WOMAN}\t{WOMAN}#1\t1\t2\n", 4, "expected 5 tab-separated"),
        ("expert", EXPERT_REAL.replace("\t1\t1\t2\n", "\t1\t5\t2\n", 1), 2, "integers 1..4"),
        ("expert", EXPERT_REAL + f"{WOMAN}\tnope.jpg#0\t1\t1\t1\n", 4, "caption id 'nope.jpg#0'"),
        ("expert", EXPERT_REAL + EXPERT_REAL.splitlines()[0], 4, "already judged on line 1"),
        ("crowdflower", CROWDFLOWER_REAL.replace("\t0\t0\t3", "\t0.5\t0\t3", 1), 2, "n_yes"),
        ("crowdflower", CROWDFLOWER_REAL.replace("\t0\t0\t3", "\tx\t0\t3", 1), 2, "a number"),
        ("csv", "image,caption,score\na.jpg,a dog,1\nb.jpg,a cat,high\n", 3, "not a number"),
        ("csv", "image,caption,score\na.jpg,a dog,1,2\n", 2, "4 fields"),
        ("csv", "image,caption\na.jpg,a dog\n", 1, "must name columns"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, fmt, text, line, fault):
    path = _write(tmp_path, f"j.{fmt}", text)
    with pytest.raises(DatasetFormatError) as err:
        load_judgments(path, CAPTION, fmt)
    assert f"{path} line {line}: " in str(err.value) and fault in str(err.value)


def test_unrecognised_file_is_an_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="not a judgments file"):
        load_judgments(_write(tmp_path, "j.txt", "a b c\n"), CAPTION)


def test_caption_ids_come_from_the_token_file(flickr):
    captions = dataset_captions(flickr / "Flickr8k.token.txt")
    assert captions.by_id == CAPTION
    assert captions.references[WOMAN] == [CAPTION[f"{WOMAN}#{k}"] for k in range(5)]


# ---------------------------------------------------------------------------------------------
# protocols


def test_expert_protocol_drops_own_reference_pairs(flickr):
    captions = dataset_captions(flickr)
    judged = load_judgments(_write(flickr, "e.txt", EXPERT_HAND), captions.by_id)
    items = apply_protocol(judged, captions.references)
    assert items.dropped == 1
    assert [p.line for p in items.pairs] == [1, 2, 4]
    assert all(
        refs == captions.references[p.image]
        for p, refs in zip(items.pairs, items.references, strict=True)
    )
    assert items.ratings() == [[1, 1, 2], [2, 3, 3], [4, 4, 4]]


def test_own_reference_is_matched_by_text_not_id(flickr):
    # The boy's caption #2 given the woman's own caption #2 text: an own reference too.
    tokens = TOKENS.replace(CAPTION[f"{BOY}#2"], "  " + OWN.replace(" ", "  "))
    (flickr / "Flickr8k.token.txt").write_text(tokens)
    captions = dataset_captions(flickr)
    judged = load_judgments(
        _write(flickr, "e.txt", f"{WOMAN}\t{BOY}#2\t1\t1\t1\n{WOMAN}\t{BOY}#0\t1\t1\t1\n"),
        captions.by_id,
    )
    items = apply_protocol(judged, captions.references)
    assert items.dropped == 1 and [p.caption_id for p in items.pairs] == [f"{BOY}#0"]


def test_crowdflower_protocol_removes_the_caption_from_its_references(flickr):
    captions = dataset_captions(flickr)
    judged = load_judgments(_write(flickr, "c.txt", CROWDFLOWER_HAND), captions.by_id)
    items = apply_protocol(judged, captions.references)
    assert items.dropped == 0 and len(items.pairs) == 4
    woman = captions.references[WOMAN]
    # Out of the woman's references for all three of her pairs (Hessel's download.py), not only
    # for the pair judging it: her candidates all meet the same four references.
    assert items.references[:3] == [[r for r in woman if r != OWN]] * 3
    assert len(items.references[0]) == 4
    assert items.references[3] == captions.references[BOY]  # no own caption judged: all five
    assert items.ratings() == [[0.0], [0.5], [1.0], [0.5]]


def test_judged_image_outside_the_dataset_names_the_line(flickr):
    captions = dataset_captions(flickr)
    judged = load_judgments(
        _write(flickr, "e.txt", EXPERT_HAND + f"zzz.jpg\t{BOY}#1\t1\t1\t1\n"), captions.by_id
    )
    with pytest.raises(DatasetFormatError, match=r"e\.txt line 5: image 'zzz\.jpg' is not"):
        apply_protocol(judged, captions.references)


# ---------------------------------------------------------------------------------------------
# the whole run, with a metric whose per-caption values are set by hand


@pytest.fixture
def fake_metric(monkeypatch):
    """CIDEr := VALUE[caption]; records what it was asked to score."""
    seen = []

    def scores(items, wanted):
        seen.append(([p.caption for p in items.pairs], items.references))
        return {"CIDEr": np.array([VALUE[p.caption] for p in items.pairs])}, {}

    monkeypatch.setattr(human, "official_pair_scores", scores)
    return seen


def test_expert_table_by_hand(flickr, fake_metric):
    config = JudgmentsConfig(
        judgments=_write(flickr, "e.txt", EXPERT_HAND), dataset=flickr, metrics=["CIDEr"]
    )
    result = correlate_with_humans(config)
    assert OWN not in fake_metric[0][0]  # the dropped pair is never scored
    # Values .1 .3 .2 for ratings (1 1 2) (2 3 3) (4 4 4): tau-c = 16/54 (see above).
    assert result.to_json()["human_correlation"] == {
        "CIDEr": {"tau": pytest.approx(16 / 54), "variant": "c", "n": 9}
    }
    s = result.settings
    assert (s["n_pairs_read"], s["n_pairs_scored"], s["n_pairs_dropped_own_reference"]) == (4, 3, 1)
    table = format_correlation_table(result)
    assert "3 pairs, 9 ratings, 1 pairs dropped" in table
    assert table.splitlines()[-1].split() == ["CIDEr", "29.6", "tau-c", "9"]


def test_crowdflower_table_by_hand(flickr, fake_metric):
    config = JudgmentsConfig(
        judgments=_write(flickr, "c.txt", CROWDFLOWER_HAND), dataset=flickr, metrics=["cider"]
    )
    result = correlate_with_humans(config)
    # x = .1 .3 .9 .2, y = 0 .5 1 .5: 5 concordant, 0 discordant, 1 pair tied in y.
    corr = result.correlations["CIDEr"]
    assert (corr.tau, corr.variant, corr.n) == (pytest.approx(5 / math.sqrt(6 * 5)), "b", 4)
    assert OWN not in fake_metric[0][1][2]


def test_cli_writes_the_table_and_metrics_json(flickr, fake_metric, capsys):
    judgments, out = _write(flickr, "e.txt", EXPERT_HAND), flickr / "metrics.json"
    args = [
        "evaluate",
        "--judgments",
        str(judgments),
        "--dataset",
        str(flickr / "Flickr8k.token.txt"),
    ]
    assert main([*args, "--metrics", "CIDEr,CLIP-S", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CIDEr        29.6   tau-c       9" in printed
    assert "unavailable: CLIP-S: needs --clip" in printed
    doc = json.loads(out.read_text())
    assert doc["human_correlation"]["CIDEr"]["tau"] == pytest.approx(16 / 54)
    assert doc["unavailable"] == {"CLIP-S": human.NEED_REASONS["clip"]}
    assert main(args) == 0  # --out is optional, every metric by default

    assert main([*args, "--predictions", "p.json"]) == 2
    assert "--predictions: not used with --judgments" in capsys.readouterr().err
    assert main([*args, "--metrics", "BERTScore"]) == 2
    assert "not correlated with human judgments" in capsys.readouterr().err
    assert main([*args, "--out", str(judgments)]) == 2


# ---------------------------------------------------------------------------------------------
# real metrics


@needs_java
def test_official_scores_are_per_pair(flickr):
    """BLEU-4 / CIDEr of each pair: BLEU scored alone equals its per-pair value; the same
    caption judged for two images is two items."""
    from finecap.metrics.official import official_scores

    captions = dataset_captions(flickr)
    text = EXPERT_HAND + f"{BOY}\t2549968784_39bfbe44f9.jpg#2\t1\t1\t1\n"
    judged = load_judgments(_write(flickr, "e.txt", text), captions.by_id)
    items = apply_protocol(judged, captions.references)
    values, unavailable = human.official_pair_scores(items, ["BLEU-4", "CIDEr"])
    assert set(values) == {"BLEU-4", "CIDEr"} and not unavailable
    for i, (pair, refs) in enumerate(zip(items.pairs, items.references, strict=True)):
        alone = official_scores({0: refs}, {0: pair.caption}, metrics=("BLEU",))
        assert values["BLEU-4"][i] == pytest.approx(alone.per_image["BLEU-4"][0], abs=1e-12)
    assert values["CIDEr"][0] != values["CIDEr"][3]  # one caption, two images


# ---------------------------------------------------------------------------------------------
# CLIP-S and RefCLIP-S on a tiny CLIP


def test_clip_columns_with_images_and_a_clip(flickr, tmp_path):
    from PIL import Image

    from finecap.clip import ClipEmbedder, load_clip
    from finecap.metrics.clipscore import CLIP_S_PREFIX, clip_s, embed_references, refclip_s
    from helpers.tiny_models import make_tiny_clip

    clip_dir = make_tiny_clip(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in (WOMAN, BOY):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / name)
    judgments = _write(flickr, "c.txt", CROWDFLOWER_HAND)
    config = JudgmentsConfig(
        judgments=judgments, dataset=flickr, clip=clip_dir, images=images, metrics=["clipscore"]
    )
    result = correlate_with_humans(config, log=lambda message: None)

    # The straightforward computation: every pair's image, caption and references embedded.
    captions = dataset_captions(flickr, images)
    items = apply_protocol(load_judgments(judgments, captions.by_id), captions.references)
    embedder = ClipEmbedder(load_clip(clip_dir))
    img = embedder.embed_image_files([images / p.image for p in items.pairs])
    txt = embedder.embed_texts([p.caption for p in items.pairs], prefix=CLIP_S_PREFIX)
    ref_emb, mask = embed_references(embedder, items.references)
    expect = {"CLIP-S": clip_s(img, txt), "RefCLIP-S": refclip_s(img, txt, ref_emb, mask)}
    values, settings = human.clip_pair_scores(
        items, captions.image_paths([p.image for p in items.pairs]), config, ["CLIP-S", "RefCLIP-S"]
    )
    for metric, want in expect.items():
        np.testing.assert_allclose(values[metric], want.double().numpy(), atol=1e-6)
        assert result.correlations[metric] == correlate(values[metric], items.ratings(), "b")
    assert settings["refclip_variant"] == "hessel" and result.settings["clip"] == settings["clip"]
    assert set(result.correlations) >= {"CLIP-S", "RefCLIP-S"}

    (images / BOY).unlink()
    with pytest.raises(JudgmentsError, match=f"1 judged images not found.*{BOY}"):
        correlate_with_humans(config.replace(metrics=["CLIP-S"]))
