"""Retrieval with generated captions (Cho et al. 2022, "Fine-grained Image Captioning with
CLIP Reward", Table 2): each test image's caption is a query against all test images.

One caption per image, the same CLIP (no prompt), an N x N cosine matrix; the rank of the
true item is the number of *other* items scoring at least as high (0-based; ties, within
1e-6, count against the system: a caption shared by many images cannot rank them all first).

    R@k  = mean(rank < k)               (a fraction; papers print x100)
    MedR = floor(median(rank)) + 1      (1-based, as in Cho et al.'s eval_clip_retrieval.py)

Text-to-image (`R@k`, `MedR`) is the paper's number; image-to-text (`I2T-R@k`, `I2T-MedR`)
is the transpose. Dimension letters: N images = N captions, P projection size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from finecap.metrics.bootstrap import median_replicates
from finecap.metrics.suite import EvalContext, GroupScores, System, register_metric

RECALL_KS = (1, 5, 10)
# Identical captions embed to vectors equal only up to float noise across batch rows; such
# near-ties must count as ties, or a generic caption would win them at random.
TIE_TOLERANCE = 1e-6
RETRIEVAL_METRICS = tuple(
    [f"R@{k}" for k in RECALL_KS] + ["MedR"] + [f"I2T-R@{k}" for k in RECALL_KS] + ["I2T-MedR"]
)


def ranks_of_truth(queries: torch.Tensor, gallery: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """0-based rank of gallery[i] for queries[i] by cosine; (N, P), (N, P) unit -> (N,) long."""
    ranks = []
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]  # (C, P)
        sims = q @ gallery.T  # (C, N)
        rows = torch.arange(len(q))
        true = sims[rows, rows + start]  # (C,)
        # Count items at least as similar as the truth (within float noise), minus the truth.
        ranks.append((sims >= true[:, None] - TIE_TOLERANCE).sum(dim=1) - 1)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def recall_at(ranks: torch.Tensor, ks=RECALL_KS, prefix: str = "") -> dict[str, float]:
    """R@k for each k and MedR from 0-based ranks."""
    out = {f"{prefix}R@{k}": float((ranks < k).double().mean()) for k in ks}
    out[f"{prefix}MedR"] = float(math.floor(np.median(ranks.numpy())) + 1)
    return out


def retrieval_scores(txt_emb: torch.Tensor, img_emb: torch.Tensor) -> dict[str, float]:
    """All retrieval metrics from caption (N, P) and image (N, P) unit embeddings, row-aligned."""
    if len(txt_emb) != len(img_emb) or len(txt_emb) == 0:
        raise ValueError(
            f"need as many captions as images (> 0), got {len(txt_emb)}, {len(img_emb)}"
        )
    return {
        **recall_at(ranks_of_truth(txt_emb, img_emb)),
        **recall_at(ranks_of_truth(img_emb, txt_emb), prefix="I2T-"),
    }


def _per_image(ranks: torch.Tensor, prefix: str = "") -> dict[str, np.ndarray]:
    """Per query: a hit (1.0) or miss for each R@k, and its 1-based rank for MedR."""
    ranks_np = ranks.numpy()
    per = {f"{prefix}R@{k}": (ranks_np < k).astype(np.float64) for k in RECALL_KS}
    per[f"{prefix}MedR"] = ranks_np.astype(np.float64) + 1
    return per


MEDR_RULE = "floor of the median of the per-image 1-based ranks (bootstrap: of each resample)"


@register_metric(
    "retrieval",
    RETRIEVAL_METRICS,
    needs=("images", "clip"),
    unscaled=("MedR", "I2T-MedR"),
    lower_is_better=("MedR", "I2T-MedR"),
    not_means={"MedR": MEDR_RULE, "I2T-MedR": MEDR_RULE},
)
def _retrieval_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """Text-to-image (and image-to-text) retrieval with the system's captions (Cho et al.)."""
    txt = ctx.clip_texts(system.captions, "")  # no prompt, as in Cho et al.
    img = ctx.image_embeddings
    ctx.settings["retrieval"] = (
        f"one caption per image against all {len(txt)} images, no prompt; "
        "ties count against the system; MedR 1-based; per image: hit or miss (R@k) and rank "
        "(MedR) of each query against the whole split, which a bootstrap keeps fixed"
    )
    t2i, i2t = ranks_of_truth(txt, img), ranks_of_truth(img, txt)
    scores = {**recall_at(t2i), **recall_at(i2t, prefix="I2T-")}
    per_image = {**_per_image(t2i), **_per_image(i2t, "I2T-")}
    replicates = {}
    if ctx.resamples is not None:
        for medr in ("MedR", "I2T-MedR"):
            replicates[medr] = np.floor(median_replicates(per_image[medr], ctx.resamples))
    return GroupScores(scores, per_image=per_image, replicates=replicates)
