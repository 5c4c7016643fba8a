"""Packed n-gram tables shared by the fast BLEU and CIDEr-D.

Words get integer ids (1..65535) and an n-gram of up to four words is packed into one uint64
(16 bits a word, first word highest), so n-gram counting, document frequencies and matching a
candidate against its image's references are numpy sorts and searches instead of Python dicts
of tuples. Word splitting is ``str.split()``, as pycocoevalcap's BLEU and CIDEr do.

Shapes: I images, K the most references an image has, R references, G distinct reference
n-grams, M distinct (image, n-gram) pairs, B candidates, E distinct (candidate, n-gram) pairs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np

MAX_ORDER = 4
_BITS = 16
_CAPACITY = (1 << _BITS) - 1  # largest word id; ids above the vocabulary mark unseen words

Text = str | Sequence[str]  # a tokenized caption: space-separated string or list of tokens


def _split(text: Text, suffix: tuple[str, ...]) -> list[str]:
    words = text.split() if isinstance(text, str) else list(text)
    return words + list(suffix) if suffix else words


def _split_many(texts: Sequence[Text], suffix: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """The words of all `texts` in one flat list, and the number of words of each text."""
    try:  # the common case first: space-separated strings, no suffix
        if suffix:
            raise AttributeError
        split = [text.split() for text in texts]
    except AttributeError:
        split = [_split(text, suffix) for text in texts]
    return list(chain.from_iterable(split)), np.fromiter(map(len, split), np.int64, len(split))


def _pack(ids: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """All 1..n-grams of the sentences in `ids` (flat, (T,)) with `lengths` (S,).

    Returns codes (E,) uint64 and sentence index (E,), grouped by order: order k + 1 fills
    ``bounds[k]:bounds[k + 1]``.
    """
    sent = np.repeat(np.arange(len(lengths)), lengths)  # (T,)
    room = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(ids))  # words left from each
    padded = np.concatenate([ids.astype(np.uint64), np.zeros(n, np.uint64)])
    codes, sents = [], []
    code = np.zeros(len(ids), np.uint64)
    for k in range(n):
        code = (code << np.uint64(_BITS)) | padded[k : k + len(ids)]
        valid = room > k
        codes.append(code[valid])
        sents.append(sent[valid])
    bounds = np.cumsum([0] + [len(c) for c in codes])
    return np.concatenate(codes), np.concatenate(sents), bounds


def _runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start of each run of equal values in a sorted array, and each element's run index."""
    if len(sorted_values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    index = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(sorted_values)]))
    return starts, index


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` without its slow boolean cumsum."""
    perm = np.argsort(values)
    starts, index = _runs(values[perm])
    inverse = np.empty(len(values), np.int64)
    inverse[perm] = index
    return values[perm][starts], inverse


class ReferenceNgrams:
    """Per-image reference n-gram counts over a reference corpus, built once.

    Attributes: ``image_ids`` (I,) in corpus order; ``codes`` (G,) sorted distinct n-grams;
    ``df`` (G,) number of images whose references contain the n-gram; ``keys`` (M,) sorted
    ``g * I + row`` for each (n-gram, image) pair, ``key_ngram``/``key_image`` (M,) its parts;
    ``tf`` (M, K) count of the n-gram in each reference of the image;
    ``entries`` the nonzero ``tf`` as (row, slot, count) arrays; ``ref_lengths`` (I, K) words
    per reference (-1 where an image has fewer than K); ``num_refs`` (I,).
    """

    def __init__(
        self,
        refs: Mapping[Hashable, Sequence[Text]],
        n: int = MAX_ORDER,
        suffix: tuple[str, ...] = (),
    ) -> None:
        if not 1 <= n <= MAX_ORDER:
            raise ValueError(f"n-gram order must be in 1..{MAX_ORDER}, got {n}")
        self.n, self.suffix = n, suffix
        self.image_ids = list(refs)
        self.row = {image_id: i for i, image_id in enumerate(self.image_ids)}
        num_images = len(self.image_ids)
        self.num_refs = np.fromiter((len(refs[i]) for i in self.image_ids), np.int64, num_images)
        if num_images and self.num_refs.min() == 0:
            empty = [i for i in self.image_ids if len(refs[i]) == 0]
            raise ValueError(f"images without reference captions: {empty[:5]}")
        texts = [ref for i in self.image_ids for ref in refs[i]]  # (R,)
        words, lengths = _split_many(texts, suffix)
        self.words = {w: i for i, w in enumerate(dict.fromkeys(words), start=1)}
        if len(self.words) >= _CAPACITY - 256:
            raise ValueError(f"more than {_CAPACITY - 256} distinct words: n-grams no longer pack")
        ids = np.fromiter(map(self.words.__getitem__, words), np.uint64, len(words))
        ref_image = np.repeat(np.arange(num_images), self.num_refs)  # (R,)
        ref_slot = np.arange(len(texts)) - np.repeat(
            np.cumsum(self.num_refs) - self.num_refs, self.num_refs
        )
        k_max = int(self.num_refs.max()) if num_images else 1
        self.ref_lengths = np.full((num_images, k_max), -1, np.int64)
        self.ref_lengths[ref_image, ref_slot] = lengths

        if num_images >= 1 << 24 or k_max >= 1 << 8:
            raise ValueError("at most 2**24 images with fewer than 256 references each")
        codes, ref_of, bounds = _pack(ids, lengths, n)  # (E,) occurrences, grouped by order
        # one value sort per order of (n-gram, image, reference slot) packed in a uint64: the
        # n-gram's code (orders 1-2 fit 32 bits) or its rank among the order's codes (3-4)
        low = ((ref_image.astype(np.uint64) << np.uint64(8)) | ref_slot.astype(np.uint64))[ref_of]
        distinct, key_g, key_image, entry_key, entry_slot, counts = [], [], [], [], [], []
        num_ngrams = num_keys = 0
        for k in range(n):
            part = slice(bounds[k], bounds[k + 1])
            ngram = codes[part]
            if k >= 2:
                uniq, ngram = _unique_inverse(ngram)
            packed = np.sort((ngram.astype(np.uint64) << np.uint64(32)) | low[part])
            starts, _ = _runs(packed)  # one entry per (n-gram, image, slot)
            counts.append(np.diff(np.r_[starts, len(packed)]))
            packed = packed[starts]
            ngram, image = packed >> np.uint64(32), (packed >> np.uint64(8)) & np.uint64(0xFFFFFF)
            first, local = _runs(ngram)  # distinct n-grams of this order
            distinct.append(ngram[first] if k < 2 else uniq)
            g = local + num_ngrams
            first, key = _runs(g * num_images + image.astype(np.int64))  # (n-gram, image) keys
            key_g.append(g[first])
            key_image.append(image[first].astype(np.int64))
            entry_key.append(key + num_keys)
            entry_slot.append((packed & np.uint64(0xFF)).astype(np.int64))
            num_ngrams += len(distinct[-1])
            num_keys += len(first)
        cat = np.concatenate
        self.codes = cat(distinct).astype(np.uint64) if distinct else np.zeros(0, np.uint64)
        self.order = np.repeat(np.arange(len(distinct), dtype=np.int8), [len(d) for d in distinct])
        self.key_ngram, self.key_image = cat(key_g), cat(key_image)  # (M,) each
        self.keys = self.key_ngram * num_images + self.key_image  # (M,) sorted
        row, slot = cat(entry_key), cat(entry_slot)
        counts = np.minimum(cat(counts), np.iinfo(np.uint16).max).astype(np.uint16)
        self.tf = np.zeros((num_keys, k_max), np.uint16)  # (M, K)
        self.tf[row, slot] = counts
        # the same counts as a sparse list, one entry per (image, n-gram, reference)
        self.entries = (row, slot, counts)
        self.df = np.bincount(self.key_ngram, minlength=num_ngrams)  # (G,)

    @classmethod
    def for_scoring(
        cls,
        image_ids: list[Hashable],
        words: list[str],
        suffix: tuple[str, ...],
        n: int,
        arrays: Mapping[str, np.ndarray],
    ) -> ReferenceNgrams:
        """A table rebuilt from saved parts (`finecap.metrics.cider.CiderD.load`): what `rows`
        and `match` read (`codes`, `keys`, `tf`, `num_refs` and the word ids), not the
        build-time arrays (`df`, `entries`, `key_ngram`, `key_image`, `ref_lengths`)."""
        table = cls.__new__(cls)
        table.n, table.suffix, table.image_ids = n, suffix, image_ids
        table.row = {image_id: i for i, image_id in enumerate(image_ids)}
        table.words = {w: i for i, w in enumerate(words, start=1)}
        table.codes, table.keys = arrays["codes"], arrays["keys"]
        table.tf, table.num_refs = arrays["tf"], arrays["num_refs"]
        return table

    def rows(self, image_ids: Sequence[Hashable]) -> np.ndarray:
        try:
            return np.fromiter((self.row[i] for i in image_ids), np.int64, len(image_ids))
        except KeyError as err:
            raise KeyError(f"image {err.args[0]!r} is not in the reference corpus") from None

    def match(self, rows: np.ndarray, candidates: Sequence[Text]) -> CandidateNgrams:
        """Count the candidates' n-grams and find them among their images' references."""
        words, lengths = _split_many(candidates, self.suffix)  # (T,), (B,)
        ids = np.fromiter(map(self.words.get, words, repeat(0)), np.uint64, len(words))
        if not ids.all():  # unseen words: ids distinct within a candidate, never matched
            ends = np.cumsum(lengths)
            for b in np.unique(np.searchsorted(ends, np.flatnonzero(ids == 0), side="right")):
                unseen: dict[str, int] = {}
                for j in range(ends[b] - lengths[b], ends[b]):
                    if ids[j] == 0:
                        ids[j] = unseen.setdefault(words[j], _CAPACITY - len(unseen))
                if _CAPACITY - len(unseen) <= len(self.words):
                    raise ValueError("too many distinct unseen words in one candidate")
        codes, cand, bounds = _pack(ids, lengths, self.n)
        order = np.repeat(np.arange(self.n, dtype=np.int8), np.diff(bounds))
        sort = np.lexsort((cand, codes))  # by n-gram: the searches below then run in order
        codes, cand, order = codes[sort], cand[sort], order[sort]
        new = (codes[1:] != codes[:-1]) | (cand[1:] != cand[:-1])  # a (n-gram, candidate) run
        starts = np.flatnonzero(np.r_[len(codes) > 0, new])
        tf = np.diff(np.r_[starts, len(codes)])
        codes, cand, order = codes[starts], cand[starts], order[starts]
        g = np.searchsorted(self.codes, codes)
        g[g == len(self.codes)] = 0
        g = np.where(self.codes[g] == codes, g, -1) if len(self.codes) else np.full(len(g), -1)
        key = g * len(self.image_ids) + rows[cand]
        pos = np.searchsorted(self.keys, key)
        pos[pos == len(self.keys)] = 0
        hit = (g >= 0) & (self.keys[pos] == key) if len(self.keys) else np.zeros(len(g), bool)
        return CandidateNgrams(lengths, cand, order, tf, g, np.where(hit, pos, -1))


@dataclass
class CandidateNgrams:
    """Distinct n-grams of B candidates: one entry per (candidate, n-gram), E entries."""

    lengths: np.ndarray  # (B,) words per candidate
    cand: np.ndarray  # (E,) candidate index
    order: np.ndarray  # (E,) n-gram order - 1
    tf: np.ndarray  # (E,) count in the candidate
    ngram: np.ndarray  # (E,) index into ReferenceNgrams.codes, -1 if no reference has it
    key: np.ndarray  # (E,) row of ReferenceNgrams.keys/tf for the candidate's image, or -1
