"""Bidirectional contrastive CLIP reward (Chaffin et al. 2022, "Distinctive Image Captioning:
Leveraging Ground Truth Captions in CLIP Guided Reinforcement Learning"; released code
NohTow/WTF-RL, `wtf-rl.py`).

A caption is rewarded for matching its image better than every other text of the batch does,
and for matching its image better than it matches every other image:

    l[t, v]  = tau * cos(E_text(t), E_img(v))                      logits, tau = CLIP's scale
    r_text   = l[t, v] - logsumexp_{t' != t} l[t', v]              over the pool of texts
    r_image  = l[t, v] - logsumexp_{v' != v} l[t, v']              over the pool of images
    reward   = (min(r_text, 16) + min(r_image, 16)) / (2 * tau)

At tau ~ 100 this is ~ cos(t, v) - max_other cos: the closest competitor is the baseline, so
SCST subtracts none (`baseline: none`). The clamp at 16 is the reference's guard against a
huge reward when every competitor's term underflows.

The pools. Images: the B batch images plus, per batch image, its hard-negative neighbours
(`neighbours`: ranks among its nearest training images by CLIP image embedding, itself
excluded). The index is built once before training (`prepare`, called by SCST with the
training images): one (N, P) matrix of image embeddings plus (N, R) neighbour rows, found by
exact search a block of rows at a time, so no (N, N) matrix and no image stays in memory. The
reference keeps ranks 3 and 4 of each image's 5 nearest (`neighbours_to_keep = [3,4]`, "too
many/hard lead to too negative rewards"); its `compute_nn.py` searches a prebuilt faiss index
(`IVFFlatText_train.faiss`, not in the repository) where finecap searches the image
embeddings exactly. Texts: the batch's captions plus `RewardBatch.pool`, texts that compete
but are not scored. SCST fills the pool (`scst.pool`); for Chaffin et al. it is every other
text of the batch: the ground-truth and greedy captions of all images, the caption's own
image's included, so its own ground truth is a strong baseline (a policy caption equal to it
ties at best). The reference trains on one beam-5 caption per image with no repeated
trigrams (`scst.policy: beam`).

K captions per image (`scst.policy: sample`, or ground-truth captions scored for RL on ground
truth): the contrast is computed separately for each round k = 0..K-1, over the B captions
{c_(j,k)} (one per image) plus the pool, so a caption never competes with its own image's
other samples (near-duplicates that would punish it for being right) and every caption meets
the same competitors. With no pool and no neighbours this is finecap's earlier reward (the
`scst_scenes_contrastive_samples` recipe): B must then be at least 2.

Several training processes (DDP, `across_processes`): each process's images, captions, pool
texts and neighbour images are gathered (`finecap.distributed.gather_objects`; embeddings
only, no gradient) and contrasted as one batch of every process's images, in rank order, so
N processes of B images give the rewards one process of N x B images would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from finecap.config import NonNegativeInt, PositiveFloat, PositiveInt
from finecap.distributed import gather_objects, rank, world_size
from finecap.rewards.base import Reward, RewardBatch, TrainingImages, register_reward
from finecap.rewards.clip_rewards import ClipRewardConfig, as_scorer


def bidirectional_contrastive(
    img: torch.Tensor,
    txt: torch.Tensor,
    tau: float,
    clamp: float = 16.0,
    pool: torch.Tensor | None = None,
    extra_images: torch.Tensor | None = None,
) -> torch.Tensor:
    """img (B, P), txt (B*K, P) grouped per image, pool (M, P) competing texts, extra_images
    (N, P) competing images (neighbours); all unit rows -> (B*K,) rewards."""
    b, d = img.shape
    if txt.shape[0] % b:
        raise ValueError(f"{txt.shape[0]} captions for {b} images")
    pool = txt.new_zeros(0, d) if pool is None else pool
    extra_images = img.new_zeros(0, d) if extra_images is None else extra_images
    if b < 2 and (len(pool) == 0 or len(extra_images) == 0):
        raise ValueError(
            "the contrastive reward needs at least 2 distinct images in a batch (or a pool of "
            "texts and neighbour images to compete with)"
        )
    k = txt.shape[0] // b
    rounds = txt.view(b, k, d).transpose(0, 1)  # (K, B, P): rounds[k, i] = caption (i, k)
    images = torch.cat([img, extra_images])  # (V, P): batch images first, V = B + N
    logits = tau * rounds @ images.T  # (K, B, V)
    own = torch.eye(b, len(images), dtype=torch.bool)  # caption i's own image column
    true = logits[:, own]  # (K, B): l[(i,k), i]
    others = logits.masked_fill(own, float("-inf"))
    r_image = true - others.logsumexp(dim=2)  # over images v' != i of caption row (i, k)
    # Texts competing for image column i: the round's other captions, then the pool.
    text_lse = others[..., :b].logsumexp(dim=1)  # (K, B)
    if len(pool):
        pool_lse = (tau * pool @ img.T).logsumexp(dim=0)  # (B,)
        text_lse = torch.logaddexp(text_lse, pool_lse[None])
    r_text = true - text_lse
    reward = (r_text.clamp(max=clamp) + r_image.clamp(max=clamp)) / (2 * tau)  # (K, B)
    return reward.T.reshape(-1)  # back to (B*K,) grouped per image


class NeighbourIndex:
    """Each training image's nearest other training images by CLIP image embedding (cosine).

    ids (N,), embeddings (N, P) unit rows, ranks: which neighbours to keep (0 = nearest).
    """

    def __init__(self, ids: Sequence[Any], embeddings: torch.Tensor, ranks: Sequence[int]) -> None:
        n, need = len(ids), max(ranks) + 1
        if embeddings.shape[0] != n:
            raise ValueError(f"{embeddings.shape[0]} embeddings for {n} image ids")
        if n - 1 < need:
            raise ValueError(
                f"neighbours of rank {max(ranks)} need at least {need + 1} training images, not {n}"
            )
        self.rows = {image_id: row for row, image_id in enumerate(ids)}
        self.embeddings = embeddings.float()  # (N, P)
        nearest = torch.empty(n, need, dtype=torch.long)
        block = max(1, 2**24 // n)  # (block, N) similarities: at most 64 MB at a time
        for start in range(0, n, block):
            sims = self.embeddings[start : start + block] @ self.embeddings.T  # (block, N)
            rows = torch.arange(sims.shape[0])
            sims[rows, start + rows] = float("-inf")  # never its own neighbour
            nearest[start : start + block] = sims.topk(need, dim=1).indices
        self.neighbours = nearest[:, list(ranks)]  # (N, R)

    def __contains__(self, image_id: Any) -> bool:
        return image_id in self.rows

    def embeddings_of(self, ids: Sequence[Any]) -> torch.Tensor:
        """(B, P) the indexed images' own embeddings."""
        return self.embeddings[[self.rows[i] for i in ids]]

    def neighbour_embeddings(self, ids: Sequence[Any]) -> torch.Tensor:
        """(B*R, P): the R kept neighbours of each image, grouped per image."""
        missing = [i for i in ids if i not in self.rows]
        if missing:
            raise KeyError(f"images not in the neighbour index (not training images?): {missing}")
        return self.embeddings[self.neighbours[[self.rows[i] for i in ids]].reshape(-1)]


class ContrastiveConfig(ClipRewardConfig):
    name: Literal["contrastive"] = "contrastive"
    tau: PositiveFloat | None = None
    """Logit scale; None: the CLIP's own exp(logit_scale) (100 for OpenAI CLIP)."""
    clamp: PositiveFloat = 16.0
    """Cap on each direction's log-ratio (the reference script's guard)."""
    prefix: str = ""
    """Chaffin et al. embed the bare caption."""
    neighbours: list[NonNegativeInt] = Field(default_factory=lambda: [3, 4])
    """Hard-negative images added to the image pool for each batch image: ranks (0 = nearest)
    among its nearest training images by CLIP image embedding. [3, 4]: the reference's; []:
    the batch images only."""
    index_chunk: PositiveInt = 256
    """Training images loaded and embedded at a time while building the neighbour index."""
    across_processes: bool = True
    """With several training processes (DDP), the batches of all of them form the contrast:
    every process's captions, pool texts and images are gathered (no gradient flows through
    a reward), so N processes of B images score as one batch of N x B images. False: each
    process contrasts its own B images only."""

    @field_validator("neighbours")
    @classmethod
    def _distinct(cls, ranks: list[int]) -> list[int]:
        if len(set(ranks)) != len(ranks):
            raise ValueError(f"neighbour ranks repeat: {ranks}")
        return ranks


class ContrastiveReward(Reward):
    name = "contrastive"

    def __init__(self, cfg: ContrastiveConfig, clip: object | None = None) -> None:
        self.cfg = cfg
        self.scorer = as_scorer(clip if clip is not None else cfg.clip, cfg.features)
        self.tau = cfg.tau if cfg.tau is not None else self.scorer.logit_scale
        self.index: NeighbourIndex | None = None

    def prepare(self, images: TrainingImages) -> None:
        """Embed the training images once and find each one's neighbours."""
        if not self.cfg.neighbours:
            return
        start = time.perf_counter()
        embeddings = self.scorer.embed_training_images(images, self.cfg.index_chunk)  # (N, P)
        self.index = NeighbourIndex(images.ids, embeddings, self.cfg.neighbours)
        print(
            f"contrastive reward: {len(images.ids)} training images indexed for "
            f"neighbours {self.cfg.neighbours} in {time.perf_counter() - start:.1f} s",
            flush=True,
        )

    def _images(self, batch: RewardBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, P) the batch's images, (B*R, P) their neighbours (None without neighbours)."""
        ids = batch.image_ids
        indexed = self.index is not None and ids is not None and all(i in self.index for i in ids)
        if batch.image_embeddings is None and indexed:
            img = self.index.embeddings_of(ids)  # embedded once already, in `prepare`
        else:
            img = self.scorer.image_embeddings(batch)
        if not self.cfg.neighbours:
            return img, None
        if self.index is None or ids is None:
            raise ValueError(
                "the contrastive reward's neighbours need an index of the training images "
                "and the batch's image_ids: call reward.prepare(TrainingImages(...)) first "
                "(SCST does, before training), or set neighbours: []"
            )
        return img, self.index.neighbour_embeddings(ids)

    def _parts(self, batch: RewardBatch) -> tuple:
        """Embeddings of the batch: images (B, P), captions (B*K, P), pool texts (B*M, P) or
        None, neighbour images (B*R, P) or None."""
        img, neighbours = self._images(batch)
        pool = batch.pool or []
        txt = self.scorer.text_embeddings(batch.captions + pool, self.cfg.prefix)
        n = len(batch.captions)
        return img, txt[:n], txt[n:] if pool else None, neighbours

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        parts = self._parts(batch)
        if self.cfg.across_processes and world_size() > 1:
            return self._across_processes(parts)
        return bidirectional_contrastive(*parts[:2], self.tau, self.cfg.clamp, *parts[2:])

    def _across_processes(self, parts: tuple) -> torch.Tensor:
        """Score the batches of all DDP processes as one (in rank order); this one's rows."""
        gathered = gather_objects(parts)

        def joined(j: int) -> torch.Tensor | None:
            pieces = [p[j] for p in gathered if p[j] is not None]
            return torch.cat(pieces) if pieces else None

        everything = bidirectional_contrastive(
            joined(0), joined(1), self.tau, self.cfg.clamp, joined(2), joined(3)
        )
        start = sum(len(p[1]) for p in gathered[: rank()])
        return everything[start : start + len(parts[1])]  # (B*K,) this process's captions


register_reward("contrastive", config=ContrastiveConfig)(ContrastiveReward)
