"""`finecap discriminator train`: pre-train Chaffin et al.'s discriminator (an MLP on [image
emb; text emb]) for the `discriminator` reward's `pretrained:` field.

The options include `DiscriminatorTrainConfig` (`finecap.rewards.discriminator`), flattened
into flags; the training code (torch, transformers) is imported when the command runs.
"""

from __future__ import annotations

import json

from finecap.clip.config import DiscriminatorTrainConfig
from finecap.config import Settings


class DiscriminatorTrainOptions(Settings):
    """Train the discriminator to tell a dataset's references (1) from generated captions (0):
    the --captioner's beam captions of each training image (the policy SCST starts from), or
    without --captioner a corrupted reference and another image's reference per image. Save
    OUT/model.safetensors + OUT/config.json (load with the reward's `pretrained: OUT`) and
    OUT/discriminator_eval.json (accuracy per class on --eval-split)."""

    dataset: str
    """Dataset file (e.g. the scenes dataset.json)."""
    clip: str
    """The CLIP whose embeddings it reads: the reward's CLIP (hub name or folder)."""
    out: str
    """Output folder."""
    captioner: str | None = None
    """Captioner folder whose captions are the generated class (e.g. the MLE model); none:
    corrupted and mismatched references."""
    train: DiscriminatorTrainConfig = DiscriminatorTrainConfig()


def run_train(options: DiscriminatorTrainOptions) -> int:
    from finecap.rewards.discriminator import train_discriminator

    result = train_discriminator(
        options.dataset, options.clip, options.out, options.train, options.captioner
    )
    print(json.dumps(result["eval"], indent=2))
    print(f"discriminator saved to {options.out} (train {result['train_seconds']} s)")
    return 0


COMMANDS = {"train": (DiscriminatorTrainOptions, run_train)}
