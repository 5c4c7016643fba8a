"""Discriminator regularisation (Chaffin et al. 2022, "Distinctive Image Captioning: Leveraging
Ground Truth Captions in CLIP Guided Reinforcement Learning").

An MLP on [image embedding; text embedding] learns online, during RL, to tell reference
captions (label 1) from the captioner's samples (label 0). Its probability of "reference"
rewards captions that still read like human ones, countering the drift toward CLIP-pleasing
word salad. Chaffin et al. combine `alpha * r_contrastive + (1 - alpha) * r_disc`, alpha = 0.94:
here `WeightedReward([(0.94, contrastive), (0.06, discriminator)])`.

The reference script's MLP is 2P -> 512 -> 256 -> 2 with ReLU, Adam lr 7e-5, BCE on the
softmax's "reference" column. One logit with BCE-with-logits is the same model family
(a 2-way softmax is a sigmoid of the logit difference) and numerically safer.

Online training in the reward: `__call__` scores the samples first, then (with `online=True`)
takes one optimiser step on this batch's references vs samples, as the reference script does;
call `discriminator.update(...)` yourself instead with `online=False`.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from finecap.config import PositiveFloat, PositiveInt
from finecap.rewards.base import Reward, RewardBatch, register_reward
from finecap.rewards.clip_rewards import ClipRewardConfig, as_scorer


class Discriminator(nn.Module):
    """[img (N, P); txt (N, P)] -> (N,) logit that txt is a reference caption of img."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (512, 256), lr: float = 7e-5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 2 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([img, txt], dim=-1)).squeeze(-1)

    @torch.no_grad()
    def prob(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """(N,) P(reference)."""
        return torch.sigmoid(self(img, txt))

    def update(self, img_emb: torch.Tensor, ref_emb: torch.Tensor, gen_emb: torch.Tensor) -> float:
        """One optimiser step; returns the loss.

        img_emb (B, P); ref_emb (B*R, P) and gen_emb (B*K, P), each grouped per image (R
        references, K samples per image). The two classes weigh equally whatever R and K are.
        """
        b = img_emb.shape[0]
        if ref_emb.shape[0] % b or gen_emb.shape[0] % b:
            raise ValueError(f"{len(ref_emb)} refs / {len(gen_emb)} samples for {b} images")
        img_emb, ref_emb, gen_emb = (x.detach().float() for x in (img_emb, ref_emb, gen_emb))
        img_ref = img_emb.repeat_interleave(ref_emb.shape[0] // b, dim=0)
        img_gen = img_emb.repeat_interleave(gen_emb.shape[0] // b, dim=0)
        self.train()
        with torch.enable_grad():  # callers often score rewards under no_grad
            ref_logit, gen_logit = self(img_ref, ref_emb), self(img_gen, gen_emb)
            loss = (
                F.binary_cross_entropy_with_logits(ref_logit, torch.ones_like(ref_logit))
                + F.binary_cross_entropy_with_logits(gen_logit, torch.zeros_like(gen_logit))
            ) / 2
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())


class DiscriminatorConfig(ClipRewardConfig):
    name: Literal["discriminator"] = "discriminator"
    hidden: list[PositiveInt] = [512, 256]
    """Hidden layer widths of the MLP on [image; text] embeddings."""
    lr: PositiveFloat = 7e-5
    """Adam learning rate of the online updates."""
    online: bool = True
    """Update on each scored batch (needs RewardBatch.references)."""
    seed: int = 0
    """Which reference of each image the online update uses."""


class DiscriminatorReward(Reward):
    """Score = the discriminator's P(reference) for (image, caption)."""

    name = "discriminator"

    def __init__(self, cfg: DiscriminatorConfig, clip: object | None = None) -> None:
        self.cfg = cfg
        self.scorer = as_scorer(clip if clip is not None else cfg.clip)
        dim = self.scorer.embedder.bundle.projection_dim
        self.discriminator = Discriminator(dim, tuple(cfg.hidden), cfg.lr)
        self.rng = random.Random(cfg.seed)
        self.last_loss: float | None = None

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        img = self.scorer.image_embeddings(batch)  # (B, P)
        gen = self.scorer.text_embeddings(batch.captions, self.cfg.prefix)  # (B*K, P)
        scores = self.discriminator.prob(img[batch.image_index()], gen)  # (B*K,)
        if self.cfg.online:
            if batch.references is None:
                raise ValueError("an online discriminator needs RewardBatch.references")
            refs = [self.rng.choice(r or [""]) for r in batch.references]  # one per image
            ref = self.scorer.text_embeddings(refs, self.cfg.prefix)  # (B, P)
            self.last_loss = self.discriminator.update(img, ref, gen)
        return scores


register_reward("discriminator", config=DiscriminatorConfig)(DiscriminatorReward)
