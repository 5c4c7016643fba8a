"""Where and how Lightning runs a training loop: settings shared by captioner, CLIP and
grammar training (plain typed classes; `finecap.train.lightning` builds the trainer)."""

from __future__ import annotations

from typing import Literal

from finecap.config import PositiveFloat, PositiveInt, Settings


class LightningConfig(Settings):
    """Where and how Lightning runs a training loop."""

    accelerator: str = "cpu"
    """Lightning accelerator: cpu, gpu, cuda, mps or auto."""
    devices: PositiveInt | Literal["auto"] = 1
    strategy: str = "auto"
    """Lightning strategy, e.g. "ddp" for several GPUs."""
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"] = (
        "32-true"
    )
    threads: PositiveInt | None = None
    """torch.set_num_threads; None leaves PyTorch's default."""


class TrainerConfig(LightningConfig):
    """A captioner's trainer: LightningConfig plus logging, validation and selection."""

    logger: Literal["csv", "tensorboard"] = "csv"
    val_every_n_epochs: PositiveInt = 1
    select: Literal["val_cider", "last"] = "val_cider"
    """Which checkpoint becomes model/: "val_cider" (the best validation CIDEr-D) or "last".
    SCST recipes take the last: picking by CIDEr-D would undo what another reward taught."""
    checkpoint_every_n_steps: PositiveInt | None = None
    """Write checkpoints/last.ckpt every N optimiser steps (and at each epoch's end); None:
    every `checkpoint_every_minutes` of training instead."""
    checkpoint_every_minutes: PositiveFloat = 5.0
    """Time between step checkpoints when checkpoint_every_n_steps is None: a kill loses at
    most this much work."""
