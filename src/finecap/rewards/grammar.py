"""Grammar reward g(c) (Cho et al. 2022, §3.2): the grammar head's probability that a caption
is fluent. Trained by `finecap grammar train` (`finecap.clip.grammar`); typically combined as
CLIP-S + 2 g (paper text) or 2 CLIP-S + g (released code): the weights are configuration.
The released code also scores that CLIP-S with the grammar model's fine-tuned CLIP, the
folder this reward loads: a `clip_s` term with `clip_from: grammar` does the same.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from finecap.config import PathStr, PositiveInt
from finecap.rewards.base import Reward, RewardBatch, RewardConfig, register_reward


class GrammarRewardConfig(RewardConfig):
    name: Literal["grammar"] = "grammar"
    model: PathStr | None = None
    """Grammar model folder (`finecap grammar train`); `create_reward` also takes a loaded
    `finecap.clip.grammar.GrammarModel`."""
    batch_size: PositiveInt = 256

    LOADED: ClassVar[tuple[str, ...]] = ("model",)
    REQUIRED: ClassVar[tuple[str, ...]] = ("model",)


class GrammarReward(Reward):
    name = "grammar"

    def __init__(self, cfg: GrammarRewardConfig, model: object | None = None) -> None:
        from finecap.clip.grammar import GrammarModel

        self.cfg = cfg
        model = model if model is not None else cfg.model
        self.model = (
            model if isinstance(model, GrammarModel) else GrammarModel.from_pretrained(model)
        )
        self.model.eval()

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        return self.model.score(batch.captions, batch_size=self.cfg.batch_size)  # (B*K,)


register_reward("grammar", config=GrammarRewardConfig)(GrammarReward)
