"""CIDEr-D (Vedantam et al. 2015), as computed by pycocoevalcap's ``CiderScorer``, vectorised.

For each image: the candidate and every reference become tf-idf vectors of their 1..4-grams,
``tf * (log(#images) - log(max(1, df)))``; per n-gram order the clipped cosine
``sum(min(c, r) * r) / (|c| |r|)`` is damped by ``exp(-(len_c - len_r)**2 / (2 sigma**2))``
(lengths counted as pycocoevalcap does: number of bigrams), summed over references, averaged
over orders, divided by the number of references and multiplied by 10.

The document frequencies come from the reference corpus the scorer is built on, once:

* eval mode -- build on the references being scored (``CiderD(refs).score(all ids, preds)``):
  equals pycocoevalcap's ``Cider`` (COCO's "CIDEr"); a single image scores 0.
* reward mode -- build on the training references and score batches of training images
  (Rennie et al. 2017 SCST; the df is cached, never recomputed per batch). The reference
  implementation (ruotianluo/self-critical.pytorch) appends the end token to every reference and
  candidate: ``append_eos=True``.

Each image's reference vectors (n-gram weights, norms, lengths) are computed at construction,
so scoring a batch only touches the candidates. `save` / `load` keep a built scorer in a
safetensors file, as the reference SCST code precomputes its document frequencies once
(ruotianluo/self-critical.pytorch, `scripts/prepro_ngrams.py`): the CIDEr-D reward caches the
scorer of its training references there (`finecap.rewards.cider`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from finecap.io import atomic_write_bytes
from finecap.metrics.ngram import MAX_ORDER, ReferenceNgrams, Text

SAVE_FORMAT = "finecap-cider-1"
_SAVED_ARRAYS = ("codes", "keys", "tf", "num_refs", "idf", "ref_norm", "ref_len")


class CiderD:
    """CIDEr-D scorer with document frequencies and reference vectors precomputed once.

    Args:
        refs_corpus: ``{image_id: [tokenized reference, ...]}`` (space-separated strings or
            token lists; run :func:`finecap.metrics.tokenizer.tokenize_captions` on raw text).
        n: largest n-gram order.
        sigma: standard deviation of the Gaussian length penalty.
        append_eos: append `eos_token` to every reference and candidate (reward mode of the
            SCST reference code); leave off for evaluation numbers equal to pycocoevalcap.
        eos_token: the end token appended when `append_eos` is set.
    """

    def __init__(
        self,
        refs_corpus: Mapping[Hashable, Sequence[Text]],
        *,
        n: int = MAX_ORDER,
        sigma: float = 6.0,
        append_eos: bool = False,
        eos_token: str = "<eos>",
    ) -> None:
        self.n, self.sigma = n, sigma
        self.table = ReferenceNgrams(refs_corpus, n, (eos_token,) if append_eos else ())
        t = self.table
        num_images, k_max = t.ref_lengths.shape
        # idf of each reference n-gram; an n-gram no reference has gets log(#images)
        self.log_num_images = float(np.log(float(max(num_images, 1))))
        self.idf = self.log_num_images - np.log(np.maximum(1.0, t.df.astype(np.float64)))  # (G,)
        # ref_norm (I, K, n): L2 norm of each reference's tf-idf vector per n-gram order
        key, slot, count = t.entries  # one entry per (image, n-gram, reference)
        ngram = t.key_ngram[key]
        w = count * self.idf[ngram]
        segment = (t.key_image[key] * k_max + slot) * n + t.order[ngram]
        norm_sq = np.bincount(segment, weights=w * w, minlength=num_images * k_max * n)
        norm_sq = norm_sq.reshape(num_images, k_max, n)
        self.ref_norm = np.sqrt(norm_sq)
        # pycocoevalcap's "length" is the number of bigrams: max(0, words - 1)
        self.ref_len = np.maximum(t.ref_lengths - 1, 0).astype(np.float64)  # (I, K)

    @property
    def image_ids(self) -> list[Hashable]:
        return self.table.image_ids

    def save(self, path: str | os.PathLike) -> None:
        """Write what `score` needs to one safetensors file (temp file, then rename). Image ids
        must be JSON values (ints or strings): a `TypeError` otherwise."""
        t = self.table
        arrays = {
            "codes": t.codes, "keys": t.keys, "tf": t.tf, "num_refs": t.num_refs,
            "idf": self.idf, "ref_norm": self.ref_norm, "ref_len": self.ref_len,
        }  # fmt: skip
        metadata = {
            "format": SAVE_FORMAT,
            "n": str(self.n),
            "sigma": repr(self.sigma),
            "suffix": json.dumps(list(t.suffix)),
            "words": json.dumps(list(t.words)),
            "image_ids": json.dumps(t.image_ids),
        }
        atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                      metadata=metadata))  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike) -> CiderD:
        """A scorer written by `save`; scores equal the saved scorer's. A file that is not one
        raises `ValueError` naming it."""
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                arrays = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        except Exception as err:  # safetensors' own error type for a torn or foreign file
            raise ValueError(f"{path}: not a saved CIDEr-D scorer ({err})") from None
        if metadata.get("format") != SAVE_FORMAT or set(arrays) != set(_SAVED_ARRAYS):
            raise ValueError(f"{path}: not a saved CIDEr-D scorer (format {SAVE_FORMAT})")
        scorer = cls.__new__(cls)
        scorer.n, scorer.sigma = int(metadata["n"]), float(metadata["sigma"])
        image_ids = json.loads(metadata["image_ids"])
        scorer.table = ReferenceNgrams.for_scoring(
            image_ids,
            json.loads(metadata["words"]),
            tuple(json.loads(metadata["suffix"])),
            scorer.n,
            arrays,
        )
        scorer.log_num_images = float(np.log(float(max(len(image_ids), 1))))
        scorer.idf, scorer.ref_norm, scorer.ref_len = (
            arrays["idf"], arrays["ref_norm"], arrays["ref_len"],
        )  # fmt: skip
        return scorer

    def score(self, image_ids: Sequence[Hashable], candidates: Sequence[Text]) -> np.ndarray:
        """CIDEr-D of each candidate against its image's references, shape (B,)."""
        if len(image_ids) != len(candidates):
            raise ValueError(f"{len(image_ids)} image ids for {len(candidates)} candidates")
        t, n = self.table, self.n
        rows = t.rows(image_ids)  # (B,)
        c = t.match(rows, candidates)
        num_cands, k_max = len(rows), t.tf.shape[1]
        idf = np.where(c.ngram >= 0, self.idf[np.maximum(c.ngram, 0)], self.log_num_images)
        w = c.tf * idf  # (E,) candidate tf-idf weights
        seg = c.cand * n + c.order  # (E,) segment (candidate, order)
        cand_norm = np.sqrt(np.bincount(seg, weights=w * w, minlength=num_cands * n))
        hit = c.key >= 0
        ref_w = t.tf[c.key[hit]] * idf[hit, None]  # (E_hit, K) reference weights
        clipped = np.minimum(w[hit, None], ref_w) * ref_w  # (E_hit, K)
        val = np.stack(
            [
                np.bincount(seg[hit], weights=clipped[:, k], minlength=num_cands * n)
                for k in range(k_max)
            ],
            axis=-1,
        ).reshape(num_cands, n, k_max)
        ref_norm = self.ref_norm[rows].transpose(0, 2, 1)  # (B, n, K)
        cand_norm = cand_norm.reshape(num_cands, n, 1)
        both = (cand_norm != 0) & (ref_norm != 0)
        val = np.where(both, val / np.where(both, cand_norm * ref_norm, 1.0), val)
        delta = np.maximum(c.lengths - 1, 0)[:, None] - self.ref_len[rows]  # (B, K)
        val = val * np.exp(-(delta**2) / (2 * self.sigma**2))[:, None, :]
        return val.sum(axis=2).mean(axis=1) / t.num_refs[rows] * 10.0


def cider_d(
    refs: Mapping[Hashable, Sequence[Text]], preds: Mapping[Hashable, Text]
) -> tuple[float, np.ndarray]:
    """Eval-mode CIDEr-D of tokenized `preds` (df over `refs`): (corpus mean, per image)."""
    scorer = CiderD(refs)
    per_image = scorer.score(scorer.image_ids, [preds[i] for i in scorer.image_ids])
    return float(per_image.mean()) if len(per_image) else 0.0, per_image
