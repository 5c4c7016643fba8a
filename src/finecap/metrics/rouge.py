"""ROUGE-L (Lin 2004) as pycocoevalcap's ``Rouge`` computes it.

Per image: the longest common subsequence (LCS) of the candidate with each reference gives
precision ``lcs / len(candidate)`` and recall ``lcs / len(reference)``; with the maxima ``P`` and
``R`` over references, ``ROUGE-L = (1 + b**2) P R / (R + b**2 P)`` with ``b = 1.2`` (0 if P or R
is 0). The corpus score is the mean over images. Like pycocoevalcap, captions are split on single
spaces, so an empty caption is one empty token (``"".split(" ") == [""]``).

The LCS length uses the bit-parallel algorithm of Allison & Dix (1986) / Hyyrö (2004): one
big-integer update per candidate word instead of an O(len * len) table.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

BETA = 1.2


def word_masks(a: Sequence[str]) -> dict[str, int]:
    """word -> bit mask of its positions in `a` (the bit-parallel LCS's match vectors)."""
    masks: dict[str, int] = {}
    for i, word in enumerate(a):
        masks[word] = masks.get(word, 0) | (1 << i)
    return masks


def lcs_length(a: Sequence[str], b: Sequence[str], masks: dict[str, int] | None = None) -> int:
    """Length of the longest common subsequence of two token sequences (`masks`: a's
    `word_masks`, when they are reused against several b)."""
    masks = word_masks(a) if masks is None else masks
    full = (1 << len(a)) - 1
    v = full  # bit i set <=> row i not yet matched; carries above len(a) bits are ignored
    for word in b:
        u = v & masks.get(word, 0)
        v = (v + u) | (v - u)
    return len(a) - (v & full).bit_count()


def rouge_l_single(candidate: str, references: Sequence[str], beta: float = BETA) -> float:
    """ROUGE-L of one tokenized candidate against its tokenized references."""
    cand = candidate.split(" ")
    masks = word_masks(cand)  # the LCS is symmetric: the candidate's masks serve every reference
    prec_max = rec_max = 0.0
    for ref in references:
        tokens = ref.split(" ")
        lcs = lcs_length(cand, tokens, masks)
        prec_max = max(prec_max, lcs / len(cand))
        rec_max = max(rec_max, lcs / len(tokens))
    if prec_max == 0 or rec_max == 0:
        return 0.0
    return (1 + beta**2) * prec_max * rec_max / (rec_max + beta**2 * prec_max)


def rouge_l(
    refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str]
) -> tuple[float, np.ndarray]:
    """ROUGE-L of tokenized `preds`: (corpus mean, per image in `refs` order)."""
    per_image = np.array([rouge_l_single(preds[i], refs[i]) for i in refs], dtype=np.float64)
    return float(per_image.mean()) if len(per_image) else 0.0, per_image
