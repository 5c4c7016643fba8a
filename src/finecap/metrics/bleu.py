"""BLEU-1..4 (Papineni et al. 2002) exactly as pycocoevalcap's ``Bleu(4)`` computes it.

pycocoevalcap uses the "closest" effective reference length (ties -> the shorter reference),
clipped n-gram counts, and smoothing constants ``tiny = 1e-15`` (numerator) and ``small = 1e-9``
(denominator). The corpus score pools counts and lengths over all images; the per-image scores
apply the same formula to each image alone (cumulative product of precisions, k-th root).
Corpus BLEU is not the mean of the per-image scores; `BleuStatistics` keeps what it pools,
so a bootstrap resample of the images is rescored exactly.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from finecap.metrics.ngram import MAX_ORDER, ReferenceNgrams, Text

_TINY, _SMALL = 1e-15, 1e-9


@dataclass
class BleuStatistics:
    """BLEU's sufficient statistics per candidate: corpus BLEU of any weighting of the
    candidates (a bootstrap resample) pools them, `corpus(weights)`."""

    correct: np.ndarray  # (B, n) clipped n-gram matches
    guess: np.ndarray  # (B, n) candidate n-grams
    testlen: np.ndarray  # (B,) candidate words
    reflen: np.ndarray  # (B,) closest reference length

    def per_image(self) -> np.ndarray:
        """(n, B) BLEU-1..n of each candidate alone."""
        return _bleu(self.correct, self.guess, self.testlen, self.reflen).T

    def corpus(self, weights: np.ndarray) -> np.ndarray:
        """(W, n) corpus BLEU-1..n with the candidates counted `weights` (W, B) times each;
        a row of ones is the corpus score."""
        weights = np.asarray(weights, np.float64)
        return _bleu(
            weights @ self.correct, weights @ self.guess, weights @ self.testlen,
            weights @ self.reflen,
        )  # fmt: skip


def bleu_statistics(
    table: ReferenceNgrams, image_ids: Sequence[Hashable], candidates: Sequence[Text]
) -> BleuStatistics:
    """Per-candidate BLEU statistics of `candidates` against `table` (pycocoevalcap's rules)."""
    n = table.n
    rows = table.rows(image_ids)
    c = table.match(rows, candidates)
    num = len(rows)
    hit = c.key >= 0
    clipped = np.zeros(len(c.tf), np.int64)
    clipped[hit] = np.minimum(c.tf[hit], table.tf[c.key[hit]].max(axis=1))
    correct = np.bincount(c.cand * n + c.order, weights=clipped, minlength=num * n)
    correct = correct.reshape(num, n)  # (B, n) clipped matches
    testlen = c.lengths.astype(np.float64)  # (B,)
    guess = np.maximum(0, c.lengths[:, None] - np.arange(n)).astype(np.float64)  # (B, n)
    # closest reference length, ties to the shorter one: minimise (|l - testlen|, l)
    ref_len = table.ref_lengths[rows]  # (B, K), -1 = no reference
    dist = np.where(ref_len >= 0, np.abs(ref_len - c.lengths[:, None]), np.iinfo(np.int64).max)
    closest = np.where(dist == dist.min(axis=1, keepdims=True), ref_len, np.iinfo(np.int64).max)
    reflen = closest.min(axis=1).astype(np.float64)  # (B,)
    return BleuStatistics(correct, guess, testlen, reflen)


def bleu_from_table(
    table: ReferenceNgrams, image_ids: Sequence[Hashable], candidates: Sequence[Text]
) -> tuple[list[float], np.ndarray]:
    """BLEU-1..n of `candidates` against `table`: (corpus scores [n], per-image scores (n, B))."""
    stats = bleu_statistics(table, image_ids, candidates)
    corpus = stats.corpus(np.ones((1, len(stats.testlen))))[0]
    return [float(x) for x in corpus], stats.per_image()


def _bleu(
    correct: np.ndarray, guess: np.ndarray, testlen: np.ndarray, reflen: np.ndarray
) -> np.ndarray:
    """pycocoevalcap's formula on rows of counts: (X, n) -> (X, n) BLEU-1..n."""
    precision = np.cumprod((correct + _TINY) / (guess + _SMALL), axis=1)
    bleu = precision ** (1.0 / np.arange(1, correct.shape[1] + 1))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    with np.errstate(divide="ignore", over="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return bleu * penalty[:, None]


def bleu(
    refs: Mapping[Hashable, Sequence[Text]], preds: Mapping[Hashable, Text], n: int = MAX_ORDER
) -> tuple[list[float], np.ndarray]:
    """BLEU-1..n of tokenized `preds` against tokenized `refs`: (corpus [n], per image (n, I))."""
    table = ReferenceNgrams(refs, n)
    return bleu_from_table(table, table.image_ids, [preds[i] for i in table.image_ids])
