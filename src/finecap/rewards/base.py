"""The reward interface: one batch type in, one score per caption out, combined by weights.

Dimension letters: B images, K sampled captions per image, P CLIP projection size.

```python
batch = RewardBatch(
    captions=[...],            # B*K strings, grouped per image: captions[i*K:(i+1)*K] are image i's
    references=[[...], ...],   # B lists of reference captions (optional for most rewards)
    image_ids=[...],           # B ids (CIDEr-D looks references up by id; CLIP rewards cache by id)
    images=[PIL, ...],         # B images, or
    image_embeddings=emb,      # (B, P) L2-normalised, from the *same* CLIP as the reward's
)
reward = create_reward("clip_s", clip="runs/scenes_clip")
scores = reward(batch)         # (B*K,) float32 tensor on CPU, no grad

total = WeightedReward([(1.0, create_reward("clip_s", clip=...)),
                        (2.0, create_reward("grammar", model=...))])
total(batch)                   # sum of weight * score
total.components(batch)       # {"clip_s": (B*K,), "grammar": (B*K,)} for logging
```

Two optional fields serve rewards that look past each caption. `pool` (B*M texts, grouped per
image) are further texts of the batch every caption competes with but which are not scored
(Chaffin et al.'s contrastive reward: the ground-truth and greedy captions); `ground_truth`
(B*C, grouped per image) are the references the policy is trained toward this step (an online
discriminator's positives).

A reward is any `Reward` subclass: `__call__(batch) -> Tensor (B*K,)`, which only scores.
Two hooks, no-ops by default, serve rewards with state: `prepare(TrainingImages)` is called
once before training (the contrastive reward indexes the training images for hard-negative
neighbours) and `update(batch)` once per training step after all scoring (the online
discriminator takes its one optimiser step), so scoring anything, references included, never
changes a reward. Register a factory with
`@register_reward(name, config=SettingsClass)`: the settings class (a `RewardConfig`) types
the reward's term in a recipe (`scst.rewards`), so a misspelt or mistyped setting fails when
the recipe loads; the factory gets the validated settings, plus any already loaded model
passed for a `LOADED` field (`create_reward("clip_s", clip=scorer)`). `create_reward(name,
**settings)` builds one, `list_rewards()` names them. `rewards_from_config([RewardConfig |
{"name": ..., "weight": ..., **settings}, ...])` builds a `WeightedReward` whose CLIP-based
terms share one loaded CLIP (and its image-embedding cache) per path.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import ValidationInfo, model_validator

from finecap.config import Settings
from finecap.registry import Registry


@dataclass
class RewardBatch:
    """What a reward sees: B images, B*K sampled captions grouped per image, references."""

    captions: list[str]  # (B*K,)
    references: list[list[str]] | None = None  # (B,) lists
    image_ids: list[Any] | None = None  # (B,)
    images: list[Any] | None = None  # (B,) PIL images
    image_embeddings: torch.Tensor | None = None  # (B, P), unit rows, the reward's own CLIP
    pool: list[str] | None = None  # (B*M,) unscored competitors, grouped per image
    ground_truth: list[str] | None = None  # (B*C,) references trained toward, grouped per image

    def __post_init__(self) -> None:
        sizes = {
            name: len(value)
            for name, value in [
                ("references", self.references),
                ("image_ids", self.image_ids),
                ("images", self.images),
                ("image_embeddings", self.image_embeddings),
            ]
            if value is not None
        }
        if not sizes:
            raise ValueError("RewardBatch needs references, image_ids, images or image_embeddings")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"RewardBatch: per-image fields disagree on the image count: {sizes}")
        b = next(iter(sizes.values()))
        if b == 0 or len(self.captions) % b:
            raise ValueError(f"RewardBatch: {len(self.captions)} captions for {b} images")
        for name, texts in (("pool", self.pool), ("ground_truth", self.ground_truth)):
            if texts is not None and len(texts) % b:
                raise ValueError(f"RewardBatch: {len(texts)} {name} texts for {b} images")

    @property
    def num_images(self) -> int:  # B
        for value in (self.references, self.image_ids, self.images, self.image_embeddings):
            if value is not None:
                return len(value)
        raise AssertionError("unreachable: checked in __post_init__")

    @property
    def samples_per_image(self) -> int:  # K
        return len(self.captions) // self.num_images

    def image_index(self) -> torch.Tensor:
        """(B*K,) index of each caption's image: 0,0,..,0,1,1,..."""
        return torch.arange(self.num_images).repeat_interleave(self.samples_per_image)

    def caption_image_ids(self) -> list[Any]:
        """(B*K,) image id of each caption."""
        if self.image_ids is None:
            raise ValueError("this reward needs RewardBatch.image_ids")
        k = self.samples_per_image
        return [i for i in self.image_ids for _ in range(k)]


@dataclass
class TrainingImages:
    """The training split's images, loaded on demand (never all in memory at once)."""

    ids: list[Any]  # (N,) image ids, as RewardBatch.image_ids gives them
    load: Callable[[int], Any]  # position in `ids` -> PIL image

    def chunks(self, size: int) -> Iterator[tuple[list[Any], list[Any]]]:
        """(ids, images) of at most `size` images at a time, in order."""
        for start in range(0, len(self.ids), size):
            stop = min(start + size, len(self.ids))
            yield self.ids[start:stop], [self.load(i) for i in range(start, stop)]


class Reward(abc.ABC):
    """Scores each caption of a batch; higher is better. Subclasses set `name`."""

    name: str = "reward"

    @abc.abstractmethod
    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        """(B*K,) float32 scores on CPU, without grad. Never changes the reward."""

    def prepare(self, images: TrainingImages) -> None:  # noqa: B027 (optional hook)
        """Once before training, with the training images; nothing by default."""

    def update(self, batch: RewardBatch) -> None:  # noqa: B027 (optional hook)
        """Once per training step, after all scoring: learn from the step's policy captions
        (`batch.captions`) and ground truth; nothing by default."""


class WeightedReward(Reward):
    """sum_j w_j * r_j(batch). Component names must be unique (they key `components`)."""

    name = "weighted"

    def __init__(self, terms: Sequence[tuple[float, Reward]]) -> None:
        if not terms:
            raise ValueError("WeightedReward needs at least one (weight, reward) term")
        names = [r.name for _, r in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"WeightedReward: duplicate component names {names}")
        self.terms = [(float(w), r) for w, r in terms]

    def components(self, batch: RewardBatch) -> dict[str, torch.Tensor]:
        """Each term's unweighted score, (B*K,) each."""
        return {r.name: as_scores(r(batch), len(batch.captions)) for _, r in self.terms}

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(w * components[r.name] for w, r in self.terms)

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        return self.combine(self.components(batch))

    def prepare(self, images: TrainingImages) -> None:
        for _, reward in self.terms:
            reward.prepare(images)

    def update(self, batch: RewardBatch) -> None:
        for _, reward in self.terms:
            reward.update(batch)


def as_scores(values: Any, n: int) -> torch.Tensor:
    """Anything array-like -> (n,) float32 CPU tensor without grad; checks the length."""
    t = torch.as_tensor(values).detach().float().cpu().reshape(-1)
    if t.numel() != n:
        raise ValueError(f"reward returned {t.numel()} scores for {n} captions")
    return t


class RewardConfig(Settings):
    """One reward term of a recipe: which reward, its weight, and the reward's own settings."""

    name: str
    """Registered reward name (`list_rewards()`)."""
    weight: float = 1.0
    """Its weight in the sum of terms."""

    LOADED: ClassVar[tuple[str, ...]] = ()
    """Fields that `create_reward` also takes as an already loaded object instead of a path."""
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    """`LOADED` fields that must be given one way or the other."""

    @model_validator(mode="after")
    def _required_given(self, info: ValidationInfo) -> RewardConfig:
        loaded = (info.context or {}).get("loaded", ())
        for key in self.REQUIRED:
            if getattr(self, key) is None and key not in loaded:
                raise ValueError(f"the {self.name} reward needs `{key}`")
        return self


_REWARDS: Registry[Reward] = Registry("reward")


def register_reward(
    name: str, config: type[RewardConfig] | None = None
) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    return _REWARDS.register(name, config)


def reward_config_class(name: str) -> type[RewardConfig]:
    _load_builtin_rewards()
    return _REWARDS.config_class(name)


def create_reward(name: str, **settings: Any) -> Reward:
    """Build reward `name`; a reward with a settings class gets them validated first."""
    _load_builtin_rewards()
    try:
        cls = _REWARDS.config_class(name)
    except KeyError:
        if name not in _REWARDS:
            raise
        return _REWARDS.create(name, **settings)  # a reward registered without settings
    loaded = {
        k: v for k, v in settings.items() if k in cls.LOADED and not _is_path(v) and v is not None
    }
    data = {"name": name, **{k: v for k, v in settings.items() if k not in loaded}}
    config = cls.load(data, f"reward {name}", {"loaded": set(loaded)})
    return _REWARDS.create(name, config, **loaded)


def _is_path(value: Any) -> bool:
    return isinstance(value, str | os.PathLike)


def list_rewards() -> list[str]:
    _load_builtin_rewards()
    return _REWARDS.names()


def rewards_from_config(
    terms: Sequence[RewardConfig | Mapping[str, Any]], device: str = "cpu"
) -> WeightedReward:
    """Reward terms -> WeightedReward. Terms naming the same `clip` share one loaded CLIP
    (on `device`) and one image-embedding cache; a CLIP-S term with `clip_from: grammar`
    scores with the grammar term's fine-tuned CLIP."""
    from finecap.rewards.clip_rewards import ClipScorer, with_grammar_clips

    scorers: dict[str, ClipScorer] = {}
    built = []
    dumped = [t.model_dump() if isinstance(t, Settings) else dict(t) for t in terms]
    for settings in with_grammar_clips(dumped):
        name, weight = settings.pop("name"), float(settings.pop("weight", 1.0))
        clip = settings.get("clip")
        if _is_path(clip):
            clip = str(clip)
            if clip not in scorers:
                scorers[clip] = ClipScorer.load(clip, device=device)
            settings["clip"] = scorers[clip]
        built.append((weight, create_reward(name, **settings)))
    return WeightedReward(built)


def _load_builtin_rewards() -> None:
    # Importing the modules registers their rewards; deferred so `base` imports nothing heavy.
    from finecap.rewards import cider, clip_rewards, contrastive, discriminator, grammar  # noqa: F401
