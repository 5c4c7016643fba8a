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


class ClipProbeOptions(Settings):
    """Attribute-binding probe (after ARO / NegCLIP): how often the CLIP prefers an image's
    true text to the same text with one fact changed (shape, color, size, pattern, background,
    relation, binding), per kind; chance is 50 %. Scenes datasets give the pairs from their
    ground truth; other data gives them as --pairs FILE.csv."""

    clip: str
    """The CLIP to probe: a Hugging Face hub name or a save_pretrained folder."""
    dataset: str
    """Dataset file (e.g. the scenes dataset.json)."""
    split: str = "test"
    """Split whose images are probed."""
    pairs: str | None = None
    """CSV with the columns image,true,changed,kind (image: a file name of the split), instead
    of pairs from the scenes ground truth."""
    out: str | None = None
    """Write the result here as JSON ({"clip", "split", "kinds": {KIND: {"accuracy", "n",
    "ties", "text_cosine"}}, ...}; text_cosine: the mean cosine of the true and
    the changed text's embeddings, near 1 when the text tower cannot tell them apart)."""
    batch_size: int = 64
    """Images or texts encoded together."""


def run_probe(options: ClipProbeOptions) -> int:
    from finecap.clip.probe import format_probe, probe_clip
    from finecap.io import atomic_write_text

    result = probe_clip(
        options.clip, options.dataset, options.split, options.pairs, options.batch_size
    )
    print(format_probe(result))
    if options.out:
        atomic_write_text(options.out, json.dumps(result, indent=2) + "\n")
    return 0


COMMANDS = {"train": (ClipTrainOptions, run_train), "probe": (ClipProbeOptions, run_probe)}
