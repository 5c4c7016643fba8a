"""Rewards for self-critical training: one interface, combined by weights.

See `finecap.rewards.base` for the interface (`RewardBatch` in, one score per caption out).
Registered rewards (`list_rewards()`): `cider` (CIDEr-D, df over the training references),
`clip_s`, `refclip_s` (Hessel et al.), `grammar` (Cho et al.'s grammar head), `contrastive`
(Chaffin et al.'s bidirectional reward), `discriminator` (Chaffin et al.'s
pre-trained, then online MLP).
"""

from finecap.rewards.base import (
    Reward,
    RewardBatch,
    RewardConfig,
    TrainingImages,
    WeightedReward,
    create_reward,
    list_rewards,
    register_reward,
    reward_config_class,
    rewards_from_config,
)

__all__ = [
    "Reward",
    "RewardBatch",
    "RewardConfig",
    "TrainingImages",
    "WeightedReward",
    "create_reward",
    "list_rewards",
    "register_reward",
    "reward_config_class",
    "rewards_from_config",
]
