"""Grammar reward g(c) (Cho et al. 2022, §3.2): the grammar head's probability that a caption
is fluent. Trained by `finecap grammar train` (`finecap.clip.grammar`); typically combined as
CLIP-S + 2 g (paper text) or 2 CLIP-S + g (released code): the weights are configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finecap.rewards.base import Reward, RewardBatch, register_reward


@dataclass
class GrammarRewardConfig:
    model: object  # a grammar model folder, or a loaded finecap.clip.grammar.GrammarModel
    batch_size: int = 256


class GrammarReward(Reward):
    name = "grammar"

    def __init__(self, cfg: GrammarRewardConfig) -> None:
        from finecap.clip.grammar import GrammarModel

        self.cfg = cfg
        model = cfg.model
        self.model = (
            model if isinstance(model, GrammarModel) else GrammarModel.from_pretrained(model)
        )
        self.model.eval()

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        return self.model.score(batch.captions, batch_size=self.cfg.batch_size)  # (B*K,)


@register_reward("grammar")
def _grammar(**cfg) -> GrammarReward:
    return GrammarReward(GrammarRewardConfig(**cfg))
