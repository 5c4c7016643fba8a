"""Where and how Lightning runs a training loop: settings shared by captioner, CLIP and
grammar training (plain typed classes; `finecap.train.lightning` builds the trainer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from finecap.config import PositiveFloat, PositiveInt, Settings


class LightningConfig(Settings):
    """Where and how Lightning runs a training loop."""

    accelerator: str = "cpu"
    """Lightning accelerator: cpu, gpu, cuda, mps or auto."""
    devices: PositiveInt | Literal["auto"] = 1
    """How many devices (GPUs, or CPU processes) to train on; "auto": all there are."""
    strategy: str = "auto"
    """Lightning strategy, e.g. "ddp" for several GPUs (or CPU processes)."""
    num_nodes: PositiveInt = 1
    """Machines the run spans (Lightning's num_nodes): `devices` processes on each, started
    on each machine by Lightning (NODE_RANK, MASTER_ADDR), torchrun or SLURM's srun."""
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"] = (
        "32-true"
    )
    threads: PositiveInt | None = None
    """torch.set_num_threads; None leaves PyTorch's default."""

    @property
    def processes(self) -> int:
        """Training processes in all (devices x num_nodes; "auto" devices counted as 1)."""
        return (self.devices if isinstance(self.devices, int) else 1) * self.num_nodes


def _batch_limit(least: int) -> Callable[[Any], Any]:
    """Lightning's `limit_*_batches` rule: a float is a share of the batches, an int a count."""

    def check(value: Any) -> Any:
        share = isinstance(value, float) and 0 < value <= 1
        count = isinstance(value, int) and not isinstance(value, bool) and value >= least
        if not (share or count):
            raise ValueError(
                f"a share of the batches (a float in (0, 1], e.g. 0.25) or a count of them "
                f"(an int >= {least}, e.g. 50)"
            )
        return value

    return check


TrainBatches = Annotated[int | float, BeforeValidator(_batch_limit(1))]
ValBatches = Annotated[int | float, BeforeValidator(_batch_limit(0))]


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _distinct(names: list[str]) -> list[str]:
    if len(set(names)) < len(names):
        raise ValueError("a logger named twice")
    return names


Loggers = Annotated[
    list[Literal["csv", "tensorboard"]],
    BeforeValidator(_one_or_list),
    Field(min_length=1),
    AfterValidator(_distinct),
]


class TrainerConfig(LightningConfig):
    """A captioner's trainer: LightningConfig plus logging, validation and selection."""

    logger: Loggers = ["csv"]
    """Where the curves go, all in OUTPUT_DIR/logs/version_N/: csv (metrics.csv) and/or
    tensorboard (event files: `tensorboard --logdir OUTPUT_DIR/logs`). One name or a list:
    [csv, tensorboard]."""
    val_every_n_epochs: PositiveInt = 1
    limit_train_batches: TrainBatches = 1.0
    """Batches per training epoch, as Lightning reads it: a float is a share (0.25), an int a
    count (50), so 1.0 is every batch and 1 is one batch."""
    limit_val_batches: ValBatches = 1.0
    """Batches per validation, the same way (0: no validation). data.val_images picks the
    validation images instead, and only those are checked and loaded."""
    select: Literal["val_cider", "last"] = "val_cider"
    """Which checkpoint becomes model/: "val_cider" (the best validation CIDEr-D) or "last".
    SCST recipes take the last: picking by CIDEr-D would undo what another reward taught."""
    checkpoint_every_n_steps: PositiveInt | None = None
    """Write checkpoints/last.ckpt every N optimiser steps (and at each epoch's end); None:
    every `checkpoint_every_minutes` of training instead."""
    checkpoint_every_minutes: PositiveFloat = 5.0
    """Time between step checkpoints when checkpoint_every_n_steps is None: a kill loses at
    most this much work."""
