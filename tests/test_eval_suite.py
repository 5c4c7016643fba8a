"""The metric registry, selection, unavailable reasons, prediction alignment, and the official
tier called through the suite against pycocoevalcap called directly."""

from __future__ import annotations

import pytest

from finecap.data.predictions import PredictionsError, align_predictions
from finecap.metrics import suite
from finecap.metrics.suite import (
    EvalData,
    SuiteConfig,
    System,
    list_metrics,
    register_metric,
    resolve_selection,
    run_suite,
)

ISSUE_METRICS = """BLEU-1 BLEU-2 BLEU-3 BLEU-4 METEOR ROUGE-L CIDEr SPICE BERTScore CLIP-S RefCLIP-S
R@1 R@5 R@10 MedR FineCapEval-background FineCapEval-object FineCapEval-relation
FineCapEval-overall-CIDEr Caption-Similarity Repetition Distinct-1 Distinct-2 Vocabulary
Mean-Length Novel"""

REFS = [
    ["a dog runs on the grass", "a brown dog running outside", "dog on a lawn"],
    ["a red ball on the floor", "a small red ball", "a ball lying on a wooden floor"],
    ["two cats sleeping on a sofa", "cats asleep on a couch", "two cats on a sofa"],
]
CAPTIONS = ["a dog running on the grass", "a red ball on a floor", "a cat on a sofa"]


def _data(**kw) -> EvalData:
    return EvalData([1, 2, 3], REFS, ["1.png", "2.png", "3.png"], **kw)


def test_registry_has_every_metric_of_the_issue():
    names = {m for g in list_metrics() for m in g.metrics}
    assert set(ISSUE_METRICS.split()) <= names
    assert {"I2T-R@1", "BERTScore-P", "BERTScore-R", "Caption-Similarity-max"} <= names
    assert [g.name for g in list_metrics()][:3] == ["official", "clipscore", "retrieval"]


def test_selection_by_group_and_metric():
    assert resolve_selection(["clipscore"]) == {"clipscore": frozenset({"CLIP-S", "RefCLIP-S"})}
    sel = resolve_selection(["cider", "BLEU-4", "r@1"])
    assert sel == {"official": frozenset({"CIDEr", "BLEU-4"}), "retrieval": frozenset({"R@1"})}
    assert resolve_selection(["BERTScore"]) == {"bertscore": frozenset({"BERTScore"})}
    assert len(resolve_selection(["bertscore"])["bertscore"]) == 3
    with pytest.raises(ValueError, match="unknown metric or group 'nope'"):
        resolve_selection(["nope"])


def test_missing_inputs_are_listed_unavailable_with_reasons():
    result = run_suite(
        [System("sys", CAPTIONS)],
        _data(),  # no images, no FineCapEval, no train references
        SuiteConfig(text_encoder=None),
        metrics=["clipscore", "R@1", "finecapeval", "novelty", "diversity"],
    )
    assert result.unavailable["CLIP-S"].startswith("needs the image files (--images DIR)")
    assert "needs --clip MODEL" in result.unavailable["RefCLIP-S"]
    assert set(result.unavailable) == {
        "CLIP-S",
        "RefCLIP-S",
        "R@1",
        *[f"FineCapEval-{c}" for c in ("background", "object", "relation")],
        *[f"FineCapEval-overall-{m}" for m in ("BLEU-4", "ROUGE-L", "CIDEr")],
        "Novel",
    }
    assert "needs --finecapeval FILE.csv" in result.unavailable["FineCapEval-object"]
    assert set(result.systems["sys"]) == {
        "Repetition",
        "Distinct-1",
        "Distinct-2",
        "Distinct-Captions",
        "Vocabulary",
        "Mean-Length",
    }
    doc = result.to_json()
    assert set(doc) == {
        "systems",
        "unavailable",
        "settings",
        "image_ids",
        "per_image",
        "aggregation",
    }
    assert doc["settings"]["n_images"] == 3 and doc["settings"]["refclip_variant"] == "hessel"


def test_a_custom_group_registers_and_runs(monkeypatch):
    monkeypatch.setattr(suite, "_GROUPS", dict(suite._GROUPS))

    @register_metric("length-chars", ("Chars",), unscaled=("Chars",))
    def _chars(ctx, system, wanted):
        """Mean caption length in characters."""
        return {"Chars": sum(map(len, system.captions)) / len(system.captions)}

    assert list_metrics()[-1].description == "Mean caption length in characters."
    result = run_suite([System("s", ["ab", "abcd", ""])], _data(), metrics=["Chars"])
    assert result.systems == {"s": {"Chars": 2.0}} and "Chars" in result.unscaled
    with pytest.raises(ValueError, match="already registered"):
        register_metric("other", ("Chars",))(_chars)


def test_align_predictions_errors():
    split_of = {1: "test", 2: "test", 3: "test", 7: "train"}
    preds = {"1": "a", 2: "b", 3: "c", 7: "ignored"}
    aligned, elsewhere = align_predictions(preds, [1, 2, 3], split_of, "p.json", "test")
    assert aligned == {1: "a", 2: "b", 3: "c"} and elsewhere == 1
    with pytest.raises(PredictionsError, match="p.json: image_id 99 is not an image"):
        align_predictions({99: "x"}, [1, 2, 3], split_of, "p.json", "test")
    with pytest.raises(
        PredictionsError, match=r"2 of 3 test images have no caption \(image_id 2, 3\)"
    ):
        align_predictions({1: "a"}, [1, 2, 3], split_of, "p.json", "test")
    with pytest.raises(PredictionsError, match="image_id 1 has two captions"):
        align_predictions({1: "a", "1": "b"}, [1], split_of, "p.json", "test")
    aligned, _ = align_predictions({1: "a"}, [1, 2, 3], split_of, "p", "test", allow_missing=True)
    assert aligned == {1: "a"}
    # Captions of another split: the message says which split to pass.
    with pytest.raises(PredictionsError, match=r"captions are of train images: pass --split train"):
        align_predictions({7: "x"}, [1, 2, 3], split_of, "p.json", "test")


def test_official_tier_matches_pycocoevalcap_directly():
    pytest.importorskip("finecap.metrics.official", reason="official tier not built yet")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    result = run_suite([System("s", CAPTIONS)], _data(), metrics=["BLEU-4", "ROUGE-L", "CIDEr"])
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(REFS)})
    res = tok.tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTIONS)})
    bleu, _ = Bleu(4).compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    got = result.systems["s"]
    assert got["BLEU-4"] == pytest.approx(bleu[3])
    assert got["CIDEr"] == pytest.approx(cider)
    assert got["ROUGE-L"] == pytest.approx(rouge)
