"""Self-critical sequence training (Rennie et al. 2017) with pluggable rewards and baselines.

Per batch of B images: draw the policy's captions, score them with the configured rewards
(`finecap.rewards`, combined by weights), subtract a baseline, and minimise
    -sum_t log p(w_t) * (r - b) / (number of words incl. the first <eos>).
Policy captions (`scst.policy`): `sample`, K sampled captions per image (Rennie et al.), or
`beam`, the best of a beam search with repeated trigrams blocked, one per image (Chaffin et
al.), its log-probabilities from a teacher-forced pass of the decoder.
Baselines (registry `register_baseline`):
- `greedy`: the reward of the greedy caption, decoded in eval mode without grad (Rennie);
- `mean`: the mean reward of the image's other K-1 samples (Luo 2020, "new self-critical");
- `none`: b = 0, for rewards that carry their own baseline — Chaffin et al.'s bidirectional
  contrastive reward subtracts its closest competitor in the batch already.
The pool (`scst.pool`): texts each scored caption competes with in contrasting rewards,
passed as `RewardBatch.pool` — for Chaffin et al. the ground-truth and greedy captions of
every image, so policy, ground-truth and greedy captions form one pool.

Chaffin et al.'s RL on ground-truth captions (`gt_weight` > 0): the batch's training captions
are scored by the same reward (in the same pool) and used as trajectories too, teacher forcing
weighted per reference (`scst.gt_weighting`, `GT_WEIGHTINGS`): `reward`, by its reward r_gt,
the paper's rule (the RL objective with the reference as the trajectory, which tilts teacher
forcing toward the most distinctive references; with a contrastive reward a reference that
loses to its competitors gets a negative weight), or `clamp_advantage`, by max(0, r_gt - mean
of the image's policy rewards), finecap's earlier variant. With `scst.gt_texts: learned` only
the batch's `data.learn_from` texts (the scenes world's detailed descriptions) are
trajectories; the references are still what CIDEr-D scores against. The released code
(NohTow/WTF-RL, `wtf-rl.py`, `TransformTrainer.compute_loss`) computes `logprob_gt` and
`rewards_gt`, but the line under `# WTF loss` adds `rewards_policy * logprob_policy` a second
time: neither ground-truth quantity reaches the loss there.

Stateful rewards: `reward.prepare(TrainingImages)` runs once when fitting starts (the
contrastive reward's neighbour index), `reward.update(batch)` once per step after all scoring
(the online discriminator's single step: the policy captions vs the ground truth), so scoring
the references never trains a reward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from finecap.data.images import load_image
from finecap.data.vocab import Vocab
from finecap.decoding import Decoded, DecodingConfig, SamplingConfig, beam_search, greedy, sample
from finecap.models import CaptionModel
from finecap.registry import Registry
from finecap.rewards import RewardBatch, TrainingImages, rewards_from_config
from finecap.train.config import TrainConfig
from finecap.train.data import CaptionBatch
from finecap.train.tasks import CaptionTask, check_finite, register_task

Baseline = Callable[[Tensor, Tensor | None, int], Tensor]
_BASELINES: Registry[Tensor] = Registry("SCST baseline")
register_baseline = _BASELINES.register


@register_baseline("mean")
def mean_of_others(rewards: Tensor, greedy_rewards: Tensor | None, k: int) -> Tensor:
    """(B*K,) -> each sample's baseline: the mean of the image's other K-1 samples."""
    if k < 2:
        raise ValueError("the mean baseline needs at least 2 samples per image")
    grouped = rewards.view(-1, k)
    return ((grouped.sum(1, keepdim=True) - grouped) / (k - 1)).view(-1)


@register_baseline("greedy")
def greedy_reward(rewards: Tensor, greedy_rewards: Tensor | None, k: int) -> Tensor:
    if greedy_rewards is None:
        raise ValueError("the greedy baseline needs the greedy captions' rewards")
    return greedy_rewards.repeat_interleave(k)


@register_baseline("none")
def no_baseline(rewards: Tensor, greedy_rewards: Tensor | None, k: int) -> Tensor:
    return torch.zeros_like(rewards)


def reward_weight(gt_rewards: Tensor, policy_rewards: Tensor) -> Tensor:
    """Chaffin et al.: each reference weighted by its own reward. (B, C), (B, K) -> (B*C,)."""
    return gt_rewards.reshape(-1)


def clamped_advantage(gt_rewards: Tensor, policy_rewards: Tensor) -> Tensor:
    """max(0, r_gt - mean of the image's policy rewards). (B, C), (B, K) -> (B*C,)."""
    return (gt_rewards - policy_rewards.mean(1, keepdim=True)).clamp(min=0).reshape(-1)


GT_WEIGHTINGS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "reward": reward_weight,
    "clamp_advantage": clamped_advantage,
}


def policy_gradient_loss(logprobs: Tensor, mask: Tensor, advantage: Tensor) -> Tensor:
    """-sum_t log p(w_t) * A over the words up to the first <eos>, averaged per word.

    logprobs, mask: (N, T); advantage: (N,) (no gradient flows through it).
    """
    mask = mask.to(logprobs.dtype)
    return -(logprobs * mask * advantage.detach()[:, None]).sum() / mask.sum().clamp(min=1.0)


def teacher_forced_logprobs(model: CaptionModel, enc, tokens: Tensor) -> Tensor:  # noqa: ANN001
    """log p(tokens[:, t] | <bos>, tokens[:, :t]) with grad; tokens (N, T) as `Decoded` holds
    them (no <bos>), N a multiple of the images in `enc`. Returns (N, T), 0 at padding."""
    bos = torch.full_like(tokens[:, :1], Vocab.bos_id)
    out = model.decoder(enc, torch.cat([bos, tokens[:, :-1]], 1))
    logp = out.logits.log_softmax(-1).gather(2, tokens[..., None])[..., 0]  # (N, T)
    return logp.masked_fill(tokens == Vocab.pad_id, 0.0)


def grouped_per_image(parts: list[list[str]], b: int) -> list[str]:
    """Concatenate texts of several kinds (each grouped per image, B*M_j) per image."""
    out = []
    for i in range(b):
        for texts in parts:
            m = len(texts) // b
            out += texts[i * m : (i + 1) * m]
    return out


@register_task("scst")
class SCSTTask(CaptionTask):
    def __init__(
        self, config: TrainConfig, vocab: Vocab, model: CaptionModel | None = None
    ) -> None:
        super().__init__(config, vocab, model)
        self.scst = config.scst
        self.reward = rewards_from_config(self.scst.rewards)

    def on_fit_start(self) -> None:
        data = getattr(self.trainer, "datamodule", None)
        train_set = getattr(data, "train_set", None)
        if train_set is not None:
            self.reward.prepare(training_images(train_set))

    def _captions(self, decoded: Decoded) -> list[str]:
        return [self.vocab.decode(row) for row in decoded.tokens.tolist()]

    def training_step(self, batch: CaptionBatch, batch_index: int) -> Tensor:
        b = len(batch.image_ids)
        enc = self.encode(batch)
        policy = self._beam_policy(enc) if self.scst.policy == "beam" else self._samples(enc)
        k = policy.tokens.shape[0] // b
        texts = {
            "policy": self._captions(policy),  # (B*K,)
            "ground_truth": [self.vocab.decode(row[1:]) for row in batch.tokens.tolist()],
        }  # (B*C,) the training captions, as the loss on ground truth sees them
        if self.scst.baseline == "greedy" or "greedy" in self.scst.pool:
            texts["greedy"] = self._greedy_captions(enc)  # (B,)
        extra = texts["greedy"] if self.scst.baseline == "greedy" else []
        rewards, greedy_rewards = self._score(batch, texts, extra, k)
        advantage = rewards - _BASELINES.create(self.scst.baseline, rewards, greedy_rewards, k)
        loss = policy_gradient_loss(policy.logprobs, policy.mask(), advantage.to(policy.logprobs))
        if self.scst.gt_weight > 0:
            gt_loss = self._ground_truth_loss(batch, enc, texts, rewards.view(b, k))
            loss = loss + self.scst.gt_weight * gt_loss
        # After all scoring, once: an online reward learns the policy captions vs ground truth.
        self.reward.update(self._reward_batch(batch, texts["policy"], texts["ground_truth"]))
        check_finite("loss", loss)
        self.log("train/reward", rewards.mean(), prog_bar=True)
        self.log("train/advantage_abs", advantage.abs().mean())
        return loss

    def _samples(self, enc) -> Decoded:  # noqa: ANN001
        sampling = SamplingConfig(
            n=self.scst.samples, max_len=self.scst.max_len, temperature=self.scst.temperature
        )
        return sample(self.model.decoder, enc, sampling)  # (B*K, T) with grad

    def _beam_policy(self, enc) -> Decoded:  # noqa: ANN001
        """(B, T): each image's best beam (searched in eval mode, no grad), its log-probs
        recomputed with grad in train mode, as the reference's forward pass over its beams."""
        config = DecodingConfig(
            beam_size=self.scst.beam_size,
            max_len=self.scst.max_len,
            block_trigrams=self.scst.block_trigrams,
        )
        self.model.eval()
        try:
            tokens = beam_search(self.model.decoder, enc, config).tokens
        finally:
            self.model.train()
        logp = teacher_forced_logprobs(self.model, enc, tokens)
        return Decoded(tokens, logp, logp.sum(1))

    @torch.no_grad()
    def _greedy_captions(self, enc) -> list[str]:  # noqa: ANN001
        self.model.eval()
        try:
            return self._captions(greedy(self.model.decoder, enc, self.scst.max_len))
        finally:
            self.model.train()

    def _pool(self, scored: str, texts: dict[str, list[str]], b: int) -> list[str] | None:
        """The texts a caption of kind `scored` competes with, grouped per image: the other
        kinds of its pool (policy + `scst.pool`), or None when it is not in it."""
        kinds = ["policy", *self.scst.pool]
        others = [texts[kind] for kind in kinds if kind != scored]
        if scored not in kinds or not others:
            return None
        return grouped_per_image(others, b)

    def _score(
        self, batch: CaptionBatch, texts: dict[str, list[str]], extra: list[str], k: int
    ) -> tuple[Tensor, Tensor | None]:
        """Rewards of the K policy captions per image (B*K,), and of one extra caption per
        image (B,) (the greedy baseline's), which rides in the same reward call, K+1 per image."""
        b = len(batch.image_ids)
        captions = texts["policy"]
        if extra:
            captions = grouped_per_image([captions, extra], b)
        pool = self._pool("policy", texts, b)
        scores = self.reward(self._reward_batch(batch, captions, pool=pool)).view(b, -1)
        check_finite("reward", scores)
        if extra:
            return scores[:, :k].reshape(-1), scores[:, k]
        return scores.reshape(-1), None

    def _reward_batch(
        self,
        batch: CaptionBatch,
        captions: list[str],
        ground_truth: list[str] | None = None,
        pool: list[str] | None = None,
    ) -> RewardBatch:
        return RewardBatch(
            captions,
            batch.references,
            batch.image_ids,
            batch.images,
            pool=pool,
            ground_truth=ground_truth,
        )

    def _ground_truth_loss(
        self,
        batch: CaptionBatch,
        enc,  # noqa: ANN001
        texts: dict[str, list[str]],
        policy_rewards: Tensor,
    ) -> Tensor:
        """The RL loss with the batch's C training captions per image as trajectories."""
        b = len(batch.image_ids)
        pool = self._pool("ground_truth", texts, b)
        with torch.no_grad():
            scored = self._reward_batch(batch, texts["ground_truth"], pool=pool)
            gt_rewards = self.reward(scored).view(b, -1)  # (B, C)
        check_finite("ground-truth reward", gt_rewards)
        weight = GT_WEIGHTINGS[self.scst.gt_weighting](gt_rewards, policy_rewards)  # (B*C,)
        if self.scst.gt_texts == "learned":
            weight = weight * batch.learned.to(weight)
        tokens = batch.tokens[:, 1:]  # (B*C, T) without <bos>
        logp = teacher_forced_logprobs(self.model, enc, tokens)
        return policy_gradient_loss(logp, tokens != Vocab.pad_id, weight.to(logp))


def training_images(train_set) -> TrainingImages:  # noqa: ANN001
    """A training split's images (`finecap.train.data.ImageCaptions`), each read from its file
    when asked for: the data's own cache (in its loader workers) is left alone."""
    records, corpus = train_set.records, train_set.corpus
    return TrainingImages(
        [r.image_id for r in records], lambda i: load_image(corpus.image_path(records[i]))
    )
