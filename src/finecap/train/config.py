"""Training recipes: one typed settings class per concern, read from YAML.

A recipe (see `configs/`, or `finecap recipes`) has the sections `data`, `model`, `optim`,
`trainer`, `decoding` and, for self-critical training, `scst`. Every value is type- and
range-checked when the recipe loads (`finecap.config`): unknown keys anywhere (a reward
term's settings included), wrong types, NaN and lengths that do not fit the model fail then,
naming the file and the key — not an epoch later inside the optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Discriminator, Field, SerializeAsAny, Tag, WrapValidator, model_validator

from finecap.config import (
    NonNegativeFloat,
    NonNegativeInt,
    PathStr,
    PositiveFloat,
    PositiveInt,
    Probability,
    Settings,
    by_name,
    load_settings,
    registered_name,
)
from finecap.data.augment import AugmentConfig
from finecap.decoding import DecodingConfig, ModelDecodingConfig
from finecap.models import ModelConfig
from finecap.models.pretrained import PretrainedModelConfig
from finecap.rewards.base import RewardConfig, reward_config_class
from finecap.train.settings import TrainerConfig


def _task_names() -> list[str]:
    from finecap.train import scst  # noqa: F401  (registers the "scst" task)
    from finecap.train.tasks import list_tasks

    return list_tasks()


class DataConfig(Settings):
    dataset: PathStr
    """Dataset file (Karpathy JSON, COCO captions, Flickr8k token file, JSONL/CSV pairs)."""
    image_root: str | None = None
    """Folder the dataset's image paths are relative to (default: the dataset's folder)."""
    format: str | None = None
    """Dataset format name; None guesses it from the file."""
    train_split: str = "train"
    val_split: str = "val"
    min_word_count: PositiveInt = 1
    """Words seen fewer times in the training captions become <unk> (5 for COCO)."""
    max_len: PositiveInt = 20
    """Training captions are cut to this many words (at most model.decoder.max_len)."""
    learn_from: str | None = None
    """A dataset entry key whose texts join each training image's captions as texts to learn
    from (MLE targets, SCST's ground-truth trajectories), e.g. `descriptions` on scenes
    datasets: the first sentence of each, if it fits in max_len words, without the words the
    vocabulary lacks. They are not references: CIDEr-D rewards and validation use the
    captions only. None: the captions alone."""
    learn_longest: bool = False
    """With learn_from: of an image's texts that fit, only the longest (in words; the first
    of equals), e.g. the scenes world's `partial_descriptions` naming the most objects."""
    captions_per_image: PositiveInt = 5
    """Captions decoded per encoded image in a batch (each image is encoded once)."""
    batch_size: PositiveInt = 32
    """Images per batch (so batch_size * captions_per_image captions)."""
    val_images: NonNegativeInt | None = None
    """Validate on the first N validation images only (None: all; 0: no validation)."""
    num_workers: NonNegativeInt = 0
    """DataLoader worker processes (0: load in the training process)."""
    allow_outside_root: bool = False
    """Read image paths that resolve outside the image root (absolute, `..`, symlinks out)."""
    cache_images: bool = True
    """Keep each decoded image, shrunk to the encoder's input size, for the next epochs."""
    bad_images: Literal["stop", "skip"] = "stop"
    """Images of the splits in use that cannot be read (checked before training): stop with
    the list, or leave them out of the run."""
    features: PathStr | None = None
    """Feature store (`finecap features extract`) to read the frozen encoder's features from
    instead of the images (refused unless this run's encoder made it); CLIP reward terms
    without their own `features` read their image embeddings from it too."""
    augment: AugmentConfig = AugmentConfig()
    """Caption-aware augmentation of the training images (`finecap.data.augment`)."""

    @model_validator(mode="after")
    def _stored_images_are_not_augmented(self) -> DataConfig:
        if self.features is not None and self.augment.any:
            raise ValueError(
                "features: a feature store holds the encoder's features of the images as they "
                "are, so augmentation (augment) cannot apply; turn one of them off"
            )
        if self.learn_longest and self.learn_from is None:
            raise ValueError("learn_longest picks among the data.learn_from texts: set learn_from")
        return self


class OptimConfig(Settings):
    lr: PositiveFloat = 5e-4
    """Peak learning rate (AdamW)."""
    weight_decay: NonNegativeFloat = 0.0
    warmup_steps: NonNegativeInt = 200
    """Linear warm-up from 0 to lr, then cosine decay to lr * min_lr_ratio."""
    min_lr_ratio: Probability = 0.1
    """Final learning rate as a share of lr (1 = constant after warm-up)."""
    max_epochs: PositiveInt = 20
    """Epochs to train (when max_steps is None)."""
    max_steps: PositiveInt | None = None
    """Stop after this many optimiser steps, however many epochs that takes (it replaces
    max_epochs, as in Hugging Face's Trainer): the cosine schedule ends there and the last
    step is validated. None: train max_epochs epochs."""
    gradient_clip: NonNegativeFloat = 1.0
    """Clip the gradient norm to this (0 = no clipping)."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    encoder_lr_scale: NonNegativeFloat = 1.0
    """Learning rate of a fine-tuned pretrained encoder relative to lr."""


RewardTerm = Annotated[
    SerializeAsAny[RewardConfig], WrapValidator(by_name("reward", reward_config_class))
]


class SCSTConfig(Settings):
    """Self-critical training (see finecap.train.scst)."""

    policy: Literal["sample", "beam"] = "sample"
    """The captions the policy gradient trains on: `sample` (K = `samples` per image, Rennie
    et al.) or `beam` (one per image, the best of `beam_size` beams, `block_trigrams`: Chaffin
    et al.'s policy captions, their log-probabilities from a teacher-forced pass)."""
    samples: PositiveInt = 5
    """K: captions sampled per image (policy: sample)."""
    beam_size: PositiveInt = 5
    """Beams per image (policy: beam)."""
    block_trigrams: bool = True
    """Forbid a beam from repeating one of its trigrams (policy: beam)."""
    pool: list[Literal["ground_truth", "greedy"]] = []
    """Texts that compete with each scored caption in rewards that contrast it with the rest
    of the batch (`contrastive`; other rewards ignore them): `ground_truth`, the batch's
    training captions, and `greedy`, the greedy captions, of every image, the caption's own
    included. Chaffin et al.: both. Policy and pooled texts then form one pool (references
    scored for RL on ground truth compete with the policy captions too); [] = each kind is
    contrasted only with its own kind."""
    baseline: Literal["greedy", "mean", "none"] = "mean"
    """greedy, mean (of the image's other samples) or none (see finecap.train.scst)."""
    rewards: list[RewardTerm] = Field(
        default_factory=lambda: [reward_config_class("cider")()], min_length=1
    )
    """Reward terms, each `{name, weight, ...its own settings}` (`finecap.rewards`)."""
    max_len: PositiveInt = 16
    """Longest sampled caption in words (at most model.decoder.max_len)."""
    temperature: PositiveFloat = 1.0
    gt_weight: NonNegativeFloat = 0.0
    """Weight of the RL loss on ground-truth captions (Chaffin et al.); 0 = off."""
    gt_weighting: Literal["reward", "clamp_advantage"] = "reward"
    """How that loss weights each reference's teacher forcing: `reward`, its own reward r_gt
    (Chaffin et al.'s rule: the RL objective with the reference as the trajectory), or
    `clamp_advantage`, max(0, r_gt - mean reward of the image's policy captions) (finecap's
    earlier rule: only references that beat the policy count). See finecap.train.scst."""

    gt_texts: Literal["all", "learned"] = "all"
    """The training texts RL on ground truth takes as trajectories: `all` of the batch's, or
    only the `learned` ones, the `data.learn_from` texts (e.g. the scenes world's detailed
    descriptions), so the references stay what CIDEr-D is measured against and no more."""

    NAMED_FIELDS: ClassVar[dict] = {"rewards": reward_config_class}

    @model_validator(mode="after")
    def _rewards_distinct(self) -> SCSTConfig:
        names = [term.name for term in self.rewards]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rewards: {', '.join(twice)} given twice; give one term a weight")
        return self

    @model_validator(mode="after")
    def _grammar_clip_has_a_grammar_term(self) -> SCSTConfig:
        from finecap.rewards.clip_rewards import ClipSConfig
        from finecap.rewards.grammar import GrammarRewardConfig

        wanting = [
            t.name for t in self.rewards if isinstance(t, ClipSConfig) and t.clip_from == "grammar"
        ]
        if wanting and not any(isinstance(t, GrammarRewardConfig) for t in self.rewards):
            raise ValueError(
                f"rewards: {wanting[0]} takes its CLIP from the grammar term (clip_from: "
                "grammar), but there is no grammar term"
            )
        return self

    @model_validator(mode="after")
    def _baseline_fits(self) -> SCSTConfig:
        if self.baseline == "mean" and self.policy == "beam":
            raise ValueError("the mean baseline needs policy: sample (beam gives one caption)")
        if self.baseline == "greedy" and "greedy" in self.pool:
            raise ValueError(
                "baseline: greedy scores the greedy captions, so they cannot also be in the "
                "pool (each would compete with itself)"
            )
        if self.baseline == "mean" and self.samples < 2:
            raise ValueError("the mean baseline needs samples >= 2 (the other samples' mean)")
        return self


def _model_kind(value: Any) -> str:
    """A pretrained Hugging Face captioner's model section names its `source`; finecap's
    own encoder-decoder's does not."""
    given = value.model_dump() if isinstance(value, Settings) else value
    return "pretrained" if isinstance(given, dict) and "source" in given else "finecap"


AnyModelConfig = Annotated[
    Annotated[ModelConfig, Tag("finecap")] | Annotated[PretrainedModelConfig, Tag("pretrained")],
    Discriminator(_model_kind),
]


class TrainConfig(Settings):
    output_dir: str = "runs/default"
    """Run folder: checkpoints/, logs/, config.yaml and the exported model/."""
    seed: int = 0
    task: registered_name("training task", _task_names) = "mle"
    """Registered training task: mle or scst."""
    data: DataConfig
    model: AnyModelConfig | None = None
    """The captioner to build; None for SCST, which starts from `--init MODEL` (and an MLE
    recipe without it builds the default ModelConfig). A pretrained Hugging Face captioner
    (`--init HUB_OR_DIR`) records a `PretrainedModelConfig` here."""
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    decoding: DecodingConfig = DecodingConfig()
    """Decoding used for validation captions."""
    model_decoding: ModelDecodingConfig | None = None
    """The exported model's own decoding (its config.json's `decoding`, as a Hugging Face
    model's generation_config.json): what `finecap caption`, the service and
    `Captioner.caption` use where their caller sets nothing else. Keys left out keep the
    default (3 beams); its max_len is capped at model.decoder.max_len. None: the `--init`
    model's own, as fine-tuning keeps a Hugging Face model's generation config (3 beams for a
    model trained from scratch)."""
    scst: SCSTConfig | None = None
    """Self-critical settings; required (defaults filled in) when task is scst."""

    @model_validator(mode="after")
    def _fill_and_cross_check(self) -> TrainConfig:
        from finecap.rewards.clip_rewards import ClipRewardConfig

        if self.task == "scst" and self.scst is None:
            self.scst = SCSTConfig()
        if self.task != "scst" and self.scst is not None:
            raise ValueError(f"an scst: section is only read by task scst, not {self.task}")
        if self.task == "mle" and self.model is None:
            self.model = ModelConfig()
        for term in self.scst.rewards if self.scst else ():
            if term.name == "cider" and term.dataset is None:
                term.dataset = self.data.dataset  # CIDEr-D over this recipe's training data
            if isinstance(term, ClipRewardConfig) and term.features is None:
                term.features = self.data.features  # the batches hold no images then
        if self.scst and self.scst.gt_texts == "learned" and self.data.learn_from is None:
            raise ValueError(
                "scst.gt_texts: learned takes the data.learn_from texts, but data.learn_from "
                "is not set"
            )
        if self.model is not None:
            check_lengths(self)
        return self


def check_lengths(config: TrainConfig) -> None:
    """Every caption length the run uses fits the model: one source of the maximum
    (model.decoder.max_len, the size of the transformer's position table)."""
    limit = config.model.decoder.max_len
    lengths = {"data.max_len": config.data.max_len, "decoding.max_len": config.decoding.max_len}
    if config.scst is not None:
        lengths["scst.max_len"] = config.scst.max_len
    over = [f"{key} = {value}" for key, value in lengths.items() if value > limit]
    if over:
        raise ValueError(
            f"{', '.join(over)} longer than the model's decoder.max_len = {limit}: captions "
            "that long do not fit the model; lower them or raise model.decoder.max_len"
        )


def load_config(recipe: str | Path, overrides: Iterable[str] = (), **extra: Any) -> TrainConfig:
    """A recipe (path or shipped name) with `--set` overrides, validated."""
    return load_settings(TrainConfig, recipe, overrides, **extra)


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
