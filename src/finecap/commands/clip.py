"""`finecap clip train`: train a small CLIP on a dataset (scenes: from scratch) or fine-tune one.

The options are `ScenesClipConfig` (the architecture, used from scratch only) and
`ClipTrainConfig` (`finecap.clip.config`), flattened into one set of flags; the training code
(torch, transformers) is imported when the command runs.
"""

from __future__ import annotations

import json

from finecap.clip.config import ClipTrainConfig, ScenesClipConfig
from finecap.config import Settings


class ClipTrainOptions(Settings):
    """Train a CLIP-style dual encoder with symmetric InfoNCE on the train split (from
    scratch, or from --init), save it in Hugging Face CLIP format, and write
    OUT/clip_eval.json: text-to-image retrieval on the test split with the first detailed
    description vs the first reference caption."""

    dataset: str
    """Dataset file (e.g. the scenes dataset.json)."""
    out: str
    """Output folder."""
    init: str | None = None
    """Fine-tune this Hugging Face CLIP (hub name or folder) instead of training from scratch;
    the architecture options are then ignored."""
    arch: ScenesClipConfig = ScenesClipConfig()
    train: ClipTrainConfig = ClipTrainConfig()


def run_train(options: ClipTrainOptions) -> int:
    from finecap.clip.train import train_clip

    result = train_clip(options.dataset, options.out, options.arch, options.train, options.init)
    print(json.dumps(result["retrieval"], indent=2))
    print(f"CLIP saved to {options.out} (train {result['train_seconds']} s)")
    return 0


COMMANDS = {"train": (ClipTrainOptions, run_train)}
