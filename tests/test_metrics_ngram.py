"""Golden tests: the fast n-gram tier and the official tier against pycocoevalcap itself.

The fixture is 500 images x 5 COCO-style references (tests/fixtures/caption_grammar.py) with
noisy and odd predictions, plus tokenizer fuzz. pycocoevalcap's Java tokenizer runs once per
module; METEOR's JVM takes ~15 s to start, so its test is marked slow.
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from finecap.metrics import CiderD, fast_scores, official_scores, ptb_tokenize, tokenize_captions
from finecap.metrics import official as official_module
from finecap.metrics.bleu import bleu
from finecap.metrics.cider import cider_d
from finecap.metrics.rouge import lcs_length, rouge_l
from fixtures.caption_grammar import make_corpus, random_strings, tricky_captions

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")
TOL = 1e-6

# Hand-picked captions for the tokenizer: every rule family the lexer has for caption text.
EDGE_CAPTIONS = [
    "",
    " ",
    "A man's dog isn't here. It's a \"test\" (really) [yes] {no}.",
    "I can't, won't, don't; cannot gonna wanna gotta lemme 'twas 'tis",
    "black-and-white 3.5 1,000 10:30 $5 50% A&B &amp; 1/2 ½ 5 1/2 e-mail",
    "St. Mr. Dr. U.S. etc. tv. the st. louis arch",
    "Hello... world!! what?! -- - ; : `back` 'single'",
    "dogs' toys, the boys' room ... 'cause o'clock rock'n'roll ma'am y'all",
    "Café naïve — – “curly” ‘quotes’ … · é 😀",
    "plan B. The dog",
    "the letter a.",
    "A dog on the U.S. flag",
    "x etc.a b inc.ab c mr.a b",
    "a dog., a cat; dog.; t-shirt., 10x.,",
    ":) :-) ;) :D :( ^_^ <3 <unk> a <b and c> d",
    "www.google.com http://foo.com/bar foo@bar.com #hashtag @user",
    "fig. 3 no. 5 approx. 5 ca.",
    "12",
    "Two Dogs Playing In The Snow!!!",
    "A CAT'S TOY ISN'T ON THE TABLE",
    "a 2-year-old boy w/ his/her 24/7 non-U.S. U.S.-based toy",
]


def pycoco_tokenize(captions: dict) -> dict:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def pycoco_scores(gts: dict, res: dict) -> dict[str, tuple[float, np.ndarray]]:
    """pycocoevalcap's BLEU, ROUGE-L and CIDEr on tokenized input, by our metric names."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    res = {k: [v] for k, v in res.items()}
    out = {}
    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        out[f"BLEU-{k + 1}"] = (score[k], np.asarray(scores[k]))
    out["ROUGE-L"] = Rouge().compute_score(gts, res)
    out["CIDEr"] = Cider().compute_score(gts, res)
    return out


@pytest.fixture(scope="module")
def corpus() -> tuple[dict, dict]:
    refs, preds = make_corpus(500, n_refs=5, seed=0, odd_fraction=0.05)
    preds[0], preds[1], preds[2] = "", "zzz qqq zzz a man xyzzy", "..."
    refs[3] = refs[3][:3]  # images may have different numbers of references
    return refs, preds


@pytest.fixture(scope="module")
def java(corpus) -> dict:
    """pycocoevalcap's Java tokenization of the corpus and of the fuzz lines, computed once."""
    if shutil.which("java") is None:
        pytest.skip("needs Java")
    refs, preds = corpus
    fuzz = EDGE_CAPTIONS + tricky_captions(1500, seed=1) + random_strings(1500, seed=2)
    gts = pycoco_tokenize(refs)
    res = {k: v[0] for k, v in pycoco_tokenize({k: [v] for k, v in preds.items()}).items()}
    return {"gts": gts, "res": res, "fuzz": fuzz, "fuzz_tok": pycoco_tokenize({0: fuzz})[0]}


@pytest.fixture(scope="module")
def reference_scores(java) -> dict:
    return pycoco_scores(java["gts"], java["res"])


# ---------------------------------------------------------------------------------------------
# tokenizer


@needs_java
def test_tokenizer_matches_ptb_on_corpus(corpus, java):
    refs, preds = corpus
    assert tokenize_captions(refs) == java["gts"]
    ours = tokenize_captions({k: [v] for k, v in preds.items()})
    assert {k: v[0] for k, v in ours.items()} == java["res"]


@needs_java
def test_tokenizer_matches_ptb_on_fuzz(java):
    ours = tokenize_captions({0: java["fuzz"]})[0]
    wrong = [
        (c, j, o) for c, j, o in zip(java["fuzz"], java["fuzz_tok"], ours, strict=True) if j != o
    ]
    assert not wrong, wrong[:5]


def test_tokenizer_examples():
    assert ptb_tokenize("A man's dog isn't here.") == "a man 's dog is n't here"
    assert ptb_tokenize("It's a (red) car!") == "it 's a -lrb- red -rrb- car"
    assert ptb_tokenize("Mr. Smith can't go to the U.S. today...") == (
        "mr. smith ca n't go to the u.s. today"
    )
    assert ptb_tokenize("") == ""
    assert ptb_tokenize("two\rlines") == "two lines"  # one caption stays one line


# ---------------------------------------------------------------------------------------------
# fast tier == pycocoevalcap


@needs_java
def test_fast_scorers_equal_pycocoevalcap_on_same_tokens(java, reference_scores):
    gts, res = java["gts"], java["res"]
    corpus_bleu, image_bleu = bleu(gts, res)
    ours = {f"BLEU-{k + 1}": (corpus_bleu[k], image_bleu[k]) for k in range(4)}
    ours["ROUGE-L"] = rouge_l(gts, res)
    ours["CIDEr"] = cider_d(gts, res)
    for name, (score, per_image) in reference_scores.items():
        assert ours[name][0] == pytest.approx(score, abs=TOL), name
        np.testing.assert_allclose(ours[name][1], per_image, rtol=0, atol=TOL, err_msg=name)


@needs_java
def test_fast_scores_equal_pycocoevalcap_end_to_end(corpus, reference_scores):
    refs, preds = corpus
    result = fast_scores(refs, preds)
    assert result.image_ids == list(refs)
    assert set(result.scores) == set(reference_scores)
    for name, (score, per_image) in reference_scores.items():
        assert result.scores[name] == pytest.approx(score, abs=TOL), name
        np.testing.assert_allclose(result.per_image[name], per_image, rtol=0, atol=TOL)
    assert result.per_image["CIDEr"][0] == 0.0  # the empty prediction


def test_fast_scores_pretokenized_and_token_lists():
    refs = {1: ["a man riding a horse", "a person on a horse"], 2: ["a dog", "a brown dog"]}
    preds = {1: "a man on a horse", 2: "a dog"}
    as_text = fast_scores(refs, preds, tokenizer=None)
    lists = cider_d({k: [r.split() for r in v] for k, v in refs.items()},
                    {k: v.split() for k, v in preds.items()})  # fmt: skip
    np.testing.assert_allclose(as_text.per_image["CIDEr"], lists[1])
    with pytest.raises(ValueError, match="METEOR"):
        fast_scores(refs, preds, metrics=("METEOR",))
    with pytest.raises(ValueError, match="different images"):
        fast_scores(refs, {1: "a dog"})


def test_empty_predictions_are_scored_not_crashed():
    refs = {1: ["a man riding a horse"], 2: ["a dog"]}
    result = fast_scores(refs, {1: "", 2: " . "})
    assert all(v == 0 for k, v in result.scores.items() if k != "ROUGE-L")
    assert result.scores["ROUGE-L"] == 0.0
    assert CiderD(refs).score([], []).shape == (0,)


def test_cider_single_image_scores_zero():
    # idf = log(#images) - log(df): with one image every reference n-gram has idf 0
    assert cider_d({0: ["a dog runs", "a dog"]}, {0: "a dog runs"})[0] == 0.0


def test_lcs_matches_dynamic_programming():
    from pycocoevalcap.rouge.rouge import my_lcs

    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 15))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 15))]
        assert lcs_length(a, b) == my_lcs(a, b)


# ---------------------------------------------------------------------------------------------
# CiderD as a reward


def _pycoco_cider_all(refs: dict, cands: dict) -> np.ndarray:
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    scorer = CiderScorer(n=4, sigma=6.0)
    for i in refs:
        scorer += (cands[i], refs[i])
    return np.asarray(scorer.compute_score()[1])


def test_reward_mode_uses_training_df_and_caches_it(corpus):
    refs, preds = corpus
    train = {i: [r.lower().rstrip(".") for r in caps] for i, caps in refs.items()}
    cands = {i: preds[i].lower() for i in train}
    expected = _pycoco_cider_all(train, cands)  # df over all training images
    scorer = CiderD(train)
    df_before, idf = scorer.table.df.copy(), scorer.idf
    batch = list(train)[10:60] * 5  # 50 images x 5 samples, as in SCST
    got = scorer.score(batch, [cands[i] for i in batch])
    row = {i: k for k, i in enumerate(train)}
    np.testing.assert_allclose(got, expected[[row[i] for i in batch]], rtol=0, atol=TOL)
    assert scorer.idf is idf and np.array_equal(scorer.table.df, df_before)  # never recomputed
    np.testing.assert_array_equal(scorer.score(batch, [cands[i] for i in batch]), got)


def test_reward_mode_appends_eos(corpus):
    refs, preds = corpus
    train = {i: [r.lower() for r in caps] for i, caps in list(refs.items())[:100]}
    cands = {i: preds[i].lower() for i in train}
    expected = _pycoco_cider_all(
        {i: [r + " <eos>" for r in v] for i, v in train.items()},
        {i: c + " <eos>" for i, c in cands.items()},
    )
    scorer = CiderD(train, append_eos=True)
    np.testing.assert_allclose(scorer.score(list(train), list(cands.values())), expected, atol=TOL)
    plain = CiderD(train).score(list(train), list(cands.values()))
    assert not np.allclose(plain, expected)
    with pytest.raises(KeyError, match="not in the reference corpus"):
        scorer.score(["no such image"], ["a dog"])


# ---------------------------------------------------------------------------------------------
# official tier


@needs_java
def test_official_equals_pycocoevalcap(corpus, reference_scores):
    refs, preds = corpus
    result = official_scores(refs, preds, metrics=("BLEU", "ROUGE-L", "CIDEr"))
    assert not result.unavailable
    for name, (score, per_image) in reference_scores.items():
        assert result.scores[name] == score, name
        np.testing.assert_array_equal(result.per_image[name], per_image)


@needs_java
def test_official_keeps_captions_aligned_across_line_breaks():
    refs = {1: ["a cat on a mat"], 2: ["a dog in a park"], 3: ["a bird in a tree"]}
    preds = {1: "a cat\ron a\u2028mat", 2: "a dog in a park", 3: "a bird in a tree"}
    result = official_scores(refs, preds, metrics=("BLEU",))
    np.testing.assert_allclose(result.per_image["BLEU-1"], 1.0)


def test_spice_without_corenlp_is_unavailable_not_downloaded(monkeypatch, tmp_path):
    (tmp_path / "spice" / "lib").mkdir(parents=True)
    monkeypatch.setattr(official_module, "pycocoevalcap_dir", lambda: tmp_path)

    def no_download(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr("urllib.request.urlretrieve", no_download)
    reason = official_module.spice_status()
    assert "stanford-corenlp-3.6.0" in reason and "get_stanford_models" in reason
    out = official_module.OfficialResult({}, {})
    official_module._spice({1: ["a dog"]}, {1: ["a dog"]}, out, None)
    assert out.unavailable["SPICE"] == reason and "SPICE" not in out.scores


def test_no_java_makes_every_official_metric_unavailable(monkeypatch):
    monkeypatch.setattr(official_module.shutil, "which", lambda name: None)
    result = official_scores({1: ["a dog"]}, {1: "a dog"})
    assert result.scores == {}
    assert set(result.unavailable) == {"BLEU-1..4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"}
    assert all("java" in reason for reason in result.unavailable.values())


@pytest.mark.slow
@needs_java
def test_official_meteor_equals_pycocoevalcap(corpus):
    from pycocoevalcap.meteor.meteor import Meteor

    refs, preds = corpus
    ids = list(refs)[:40]  # includes the empty and the unseen-word predictions
    refs, preds = {i: refs[i] for i in ids}, {i: preds[i] for i in ids}
    gts = pycoco_tokenize(refs)
    res = {k: v for k, v in pycoco_tokenize({k: [v] for k, v in preds.items()}).items()}
    score, scores = Meteor().compute_score(gts, res)
    result = official_scores(refs, preds, metrics=("METEOR",))
    assert result.scores["METEOR"] == score
    np.testing.assert_array_equal(result.per_image["METEOR"], scores)
    assert result.per_image["METEOR"][0] == 0.0  # empty hypothesis scores 0
