"""The fast, in-process n-gram tier: BLEU-1..4, ROUGE-L and CIDEr-D without Java.

Each number equals what pycocoevalcap reports (``BLEU-k`` = ``Bleu_k``, ``ROUGE-L`` =
``ROUGE_L``, ``CIDEr`` = its ``Cider``, i.e. CIDEr-D) to float rounding: the captions go through
:mod:`finecap.metrics.tokenizer` (pycocoevalcap's PTB tokenization, reproduced) and the scorers
replicate pycocoevalcap's formulas. METEOR and SPICE exist only in the official tier
(:mod:`finecap.metrics.official`): a pure-Python METEOR is a different metric.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from finecap.metrics.bleu import bleu_from_table
from finecap.metrics.cider import CiderD
from finecap.metrics.rouge import rouge_l
from finecap.metrics.tokenizer import tokenize_captions

FAST_METRICS = ("BLEU", "ROUGE-L", "CIDEr")
_BLEU_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
_OFFICIAL_ONLY = ("METEOR", "SPICE")

Tokenizer = Callable[[Mapping[Hashable, Sequence[str]]], Mapping[Hashable, Sequence[str]]]


@dataclass
class FastResult:
    """Corpus scores by metric name, and per-image scores aligned with `image_ids`."""

    scores: dict[str, float]
    per_image: dict[str, np.ndarray]  # name -> (I,)
    image_ids: list[Hashable]


def check_inputs(refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str]) -> None:
    """Both tiers score exactly the images of `refs`, one prediction each."""
    if not refs:
        raise ValueError("no images to score")
    missing = [i for i in refs if i not in preds]
    extra = [i for i in preds if i not in refs]
    if missing or extra:
        raise ValueError(
            f"predictions and references cover different images: {len(missing)} without a "
            f"prediction (e.g. {missing[:3]}), {len(extra)} without references (e.g. {extra[:3]})"
        )
    empty = [i for i, caps in refs.items() if len(caps) == 0]
    if empty:
        raise ValueError(f"images without reference captions: {empty[:5]}")


def fast_scores(
    refs: Mapping[Hashable, Sequence[str]],
    preds: Mapping[Hashable, str],
    metrics: Sequence[str] = FAST_METRICS,
    *,
    tokenizer: Tokenizer | None = tokenize_captions,
) -> FastResult:
    """Score raw captions in-process; `metrics` from ``("BLEU", "ROUGE-L", "CIDEr")``.

    `tokenizer` maps ``{id: [caption]}`` to tokenized captions; ``None`` takes the input as
    already tokenized (space-separated). References and predictions are tokenized in separate
    calls, as pycocoevalcap does.
    """
    for name in metrics:
        if name in _OFFICIAL_ONLY:
            raise ValueError(f"{name} has no in-process equivalent: use official_scores")
        if name not in FAST_METRICS:
            raise ValueError(f"unknown metric {name!r}; fast metrics: {FAST_METRICS}")
    check_inputs(refs, preds)
    image_ids = list(refs)
    if tokenizer is not None:
        refs = tokenizer(refs)
        tok = tokenizer({i: [preds[i]] for i in image_ids})
        preds = {i: tok[i][0] for i in image_ids}
    candidates = [preds[i] for i in image_ids]

    scores: dict[str, float] = {}
    per_image: dict[str, np.ndarray] = {}
    cider = CiderD(refs) if {"BLEU", "CIDEr"} & set(metrics) else None
    if "BLEU" in metrics:
        corpus, images = bleu_from_table(cider.table, image_ids, candidates)
        for k, name in enumerate(_BLEU_NAMES):
            scores[name], per_image[name] = corpus[k], images[k]
    if "ROUGE-L" in metrics:
        scores["ROUGE-L"], per_image["ROUGE-L"] = rouge_l(refs, preds)
    if "CIDEr" in metrics:
        per_image["CIDEr"] = cider.score(image_ids, candidates)
        scores["CIDEr"] = float(per_image["CIDEr"].mean())
    return FastResult(scores, per_image, image_ids)
