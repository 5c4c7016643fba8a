"""Bidirectional contrastive CLIP reward (Chaffin et al. 2022, "Distinctive Image Captioning:
Leveraging Ground Truth Captions in CLIP Guided Reinforcement Learning").

A caption is rewarded for matching its image *better than the other images of the batch*, and
for being a better match for its image than the other captions are:

    l[t, v]  = tau * cos(E_text(t), E_img(v))                      logits, tau = CLIP's scale
    r_text   = l[t, v] - logsumexp_{t' != t} l[t', v]              (other captions, same image)
    r_image  = l[t, v] - logsumexp_{v' != v} l[t, v']              (same caption, other images)
    reward   = (min(r_text, 16) + min(r_image, 16)) / (2 * tau)

At tau ~ 100 this is ~ cos(t, v) - max_other cos: the closest other batch element is the
baseline. The clamp at 16 is the reference script's guard against a huge reward when every
other term is negligible.

K samples per image. A batch holds B distinct images and B*K captions. The contrast is
computed separately for each sample round k = 0..K-1, over the B captions {c_(j,k)} (one per
image) and the B images: for caption t = (i, k),

    r_text  = l[(i,k), i] - logsumexp_{j != i} l[(j,k), i]
    r_image = l[(i,k), i] - logsumexp_{j != i} l[(i,k), j]

so a caption is never contrasted with its own image's other samples (near-duplicates that
would punish it for being right), and every caption meets the same number (B - 1) of
competitors. B must be at least 2.
"""

from __future__ import annotations

from typing import Literal

import torch

from finecap.config import PositiveFloat
from finecap.rewards.base import Reward, RewardBatch, register_reward
from finecap.rewards.clip_rewards import ClipRewardConfig, as_scorer


def bidirectional_contrastive(
    img: torch.Tensor, txt: torch.Tensor, tau: float, clamp: float = 16.0
) -> torch.Tensor:
    """img (B, P) unit, txt (B*K, P) unit grouped per image -> (B*K,) rewards."""
    b = img.shape[0]
    if b < 2:
        raise ValueError("the contrastive reward needs at least 2 distinct images in a batch")
    if txt.shape[0] % b:
        raise ValueError(f"{txt.shape[0]} captions for {b} images")
    k = txt.shape[0] // b
    rounds = txt.view(b, k, -1).transpose(0, 1)  # (K, B, P): rounds[k, i] = caption (i, k)
    logits = tau * rounds @ img.T  # (K, B_text, B_image)
    diag = torch.eye(b, dtype=torch.bool)
    true = logits.diagonal(dim1=1, dim2=2)  # (K, B): l[(i,k), i]
    others = logits.masked_fill(diag, float("-inf"))
    r_text = true - others.logsumexp(dim=1)  # over captions t' of image column i
    r_image = true - others.logsumexp(dim=2)  # over images v' of caption row i
    reward = (r_text.clamp(max=clamp) + r_image.clamp(max=clamp)) / (2 * tau)  # (K, B)
    return reward.T.reshape(-1)  # back to (B*K,) grouped per image


class ContrastiveConfig(ClipRewardConfig):
    name: Literal["contrastive"] = "contrastive"
    tau: PositiveFloat | None = None
    """Logit scale; None: the CLIP's own exp(logit_scale) (100 for OpenAI CLIP)."""
    clamp: PositiveFloat = 16.0
    """Cap on each direction's log-ratio (the reference script's guard)."""
    prefix: str = ""
    """Chaffin et al. embed the bare caption."""


class ContrastiveReward(Reward):
    name = "contrastive"

    def __init__(self, cfg: ContrastiveConfig, clip: object | None = None) -> None:
        self.cfg = cfg
        self.scorer = as_scorer(clip if clip is not None else cfg.clip)
        self.tau = cfg.tau if cfg.tau is not None else self.scorer.logit_scale

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        img = self.scorer.image_embeddings(batch)  # (B, P)
        txt = self.scorer.text_embeddings(batch.captions, self.cfg.prefix)  # (B*K, P)
        return bidirectional_contrastive(img, txt, self.tau, self.cfg.clamp)


register_reward("contrastive", config=ContrastiveConfig)(ContrastiveReward)
