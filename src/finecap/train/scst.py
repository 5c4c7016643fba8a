"""Self-critical sequence training (Rennie et al. 2017) with pluggable rewards and baselines.

Per batch of B images: sample K captions each, score them with the configured rewards
(`finecap.rewards`, combined by weights), subtract a baseline, and minimise
    -sum_t log p(w_t) * (r - b) / (number of words incl. the first <eos>).
Baselines (registry `register_baseline`):
- `greedy`: the reward of the greedy caption, decoded in eval mode without grad (Rennie);
- `mean`: the mean reward of the image's other K-1 samples (Luo 2020, "new self-critical");
- `none`: b = 0, for rewards that carry their own baseline — Chaffin et al.'s bidirectional
  contrastive reward subtracts the closest other element of the batch already.
Chaffin et al.'s RL on ground-truth captions (`gt_weight` > 0): the references are scored by
the same reward and used as trajectories too, weighted by how much they beat the image's
baseline (clamped at 0), which tilts teacher forcing toward the most descriptive references.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from finecap.data.vocab import Vocab
from finecap.decoding import Decoded, SamplingConfig, greedy, sample
from finecap.models import CaptionModel
from finecap.registry import Registry
from finecap.rewards import RewardBatch, rewards_from_config
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


def policy_gradient_loss(logprobs: Tensor, mask: Tensor, advantage: Tensor) -> Tensor:
    """-sum_t log p(w_t) * A over the words up to the first <eos>, averaged per word.

    logprobs, mask: (N, T); advantage: (N,) (no gradient flows through it).
    """
    mask = mask.to(logprobs.dtype)
    return -(logprobs * mask * advantage.detach()[:, None]).sum() / mask.sum().clamp(min=1.0)


@register_task("scst")
class SCSTTask(CaptionTask):
    def __init__(
        self, config: TrainConfig, vocab: Vocab, model: CaptionModel | None = None
    ) -> None:
        super().__init__(config, vocab, model)
        self.scst = config.scst
        self.reward = rewards_from_config(self.scst.rewards)

    def _captions(self, decoded: Decoded) -> list[str]:
        return [self.vocab.decode(row) for row in decoded.tokens.tolist()]

    def training_step(self, batch: CaptionBatch, batch_index: int) -> Tensor:
        k = self.scst.samples
        enc = self.model.encode(batch.pixels)
        sampling = SamplingConfig(n=k, max_len=self.scst.max_len, temperature=self.scst.temperature)
        samples = sample(self.model.decoder, enc, sampling)  # (B*K, T) with grad
        captions = self._captions(samples)
        greedy_captions: list[str] = []
        if self.scst.baseline == "greedy":
            greedy_captions = self._greedy_captions(enc)
        rewards, greedy_rewards = self._score(batch, captions, greedy_captions, k)
        advantage = rewards - _BASELINES.create(self.scst.baseline, rewards, greedy_rewards, k)
        loss = policy_gradient_loss(
            samples.logprobs, samples.mask(), advantage.to(samples.logprobs)
        )
        if self.scst.gt_weight > 0:
            loss = loss + self.scst.gt_weight * self._ground_truth_loss(
                batch, enc, rewards.view(-1, k)
            )
        check_finite("loss", loss)
        self.log("train/reward", rewards.mean(), prog_bar=True)
        self.log("train/advantage_abs", advantage.abs().mean())
        return loss

    @torch.no_grad()
    def _greedy_captions(self, enc) -> list[str]:  # noqa: ANN001
        self.model.eval()
        try:
            return self._captions(greedy(self.model.decoder, enc, self.scst.max_len))
        finally:
            self.model.train()

    def _score(
        self, batch: CaptionBatch, captions: list[str], extra: list[str], k: int
    ) -> tuple[Tensor, Tensor | None]:
        """Rewards of the K samples per image (B*K,), and of one extra caption per image (B,).

        The extra (greedy) captions ride in the same reward call, K+1 per image, so online
        rewards (the discriminator) update once per step.
        """
        per_image = k + (1 if extra else 0)
        grouped = []
        for i in range(len(batch.image_ids)):
            grouped += captions[i * k : (i + 1) * k] + (extra[i : i + 1] if extra else [])
        scores = self.reward(self._reward_batch(batch, grouped)).view(-1, per_image)
        check_finite("reward", scores)
        if extra:
            return scores[:, :k].reshape(-1), scores[:, k]
        return scores.reshape(-1), None

    def _reward_batch(self, batch: CaptionBatch, captions: list[str]) -> RewardBatch:
        return RewardBatch(captions, batch.references, batch.image_ids, batch.images)

    def _ground_truth_loss(self, batch: CaptionBatch, enc, sample_rewards: Tensor) -> Tensor:  # noqa: ANN001
        c = batch.tokens.shape[0] // batch.pixels.shape[0]
        references = [self.vocab.decode(row[1:]) for row in batch.tokens.tolist()]  # (B*C,)
        with torch.no_grad():
            gt_rewards = self.reward(self._reward_batch(batch, references)).view(-1, c)  # (B, C)
        weight = (gt_rewards - sample_rewards.mean(1, keepdim=True)).clamp(min=0).view(-1)
        out = self.model.decoder(enc, batch.tokens[:, :-1])  # c references per image
        logp = out.logits.log_softmax(-1).gather(2, batch.tokens[:, 1:, None])[..., 0]  # (B*C, T)
        return policy_gradient_loss(logp, batch.tokens[:, 1:] != Vocab.pad_id, weight.to(logp))
