"""The one Lightning trainer factory and learning-rate schedule of finecap: captioners (MLE,
SCST), the scenes CLIP and the grammar head all train through `make_trainer` and
`warmup_cosine`, configured by the same `LightningConfig` section (`finecap.train.settings`)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from finecap.train.checkpoints import SafeCheckpointIO
from finecap.train.settings import LightningConfig, TrainerConfig

LOGGERS = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}
QUIET = [  # Lightning warnings that say nothing to a finecap user
    r"Checkpoint directory .* exists and is not empty",  # every resume: our own last.ckpt
    r".*isinstance\(treespec, LeafSpec\)",  # a deprecation inside Lightning 2.6 itself
]


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Around `trainer.fit`: hide the QUIET warnings, and only those."""
    with warnings.catch_warnings():
        for noise in QUIET:
            warnings.filterwarnings("ignore", message=noise)
        yield


def make_trainer(
    settings: LightningConfig,
    max_epochs: int,
    callbacks: Sequence[Callback] = (),
    out: Path | None = None,
    gradient_clip: float = 0.0,
) -> L.Trainer:
    """A Lightning trainer. For a captioner run (`TrainerConfig`, with `out`): logs under
    out/logs/version_N, validation as configured, checkpoints by the given callbacks; for
    a plain `LightningConfig` (CLIP, grammar head): no logger, no checkpoints, one summary
    line per epoch."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    run = isinstance(settings, TrainerConfig)
    if run and out is None:
        raise ValueError("a captioner run needs its output folder")
    logger = LOGGERS[settings.logger](out, name="logs") if run else False
    progress = TQDMProgressBar(refresh_rate=10) if run else EpochSummary()
    plugins = [SafeCheckpointIO()] if run else []  # atomic writes, weights-only loads
    return L.Trainer(
        accelerator=settings.accelerator,
        devices=settings.devices,
        strategy=settings.strategy,
        precision=settings.precision,
        max_epochs=max_epochs,
        gradient_clip_val=gradient_clip or None,
        check_val_every_n_epoch=settings.val_every_n_epochs if run else 1,
        callbacks=[*callbacks, progress],
        plugins=plugins,
        logger=logger,
        enable_checkpointing=run,
        log_every_n_steps=10,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )


def warmup_cosine(warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up over `warmup` steps, then cosine to `floor`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.0
) -> dict:
    """Lightning's lr_scheduler entry for `warmup_cosine`, stepped every batch."""
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, floor))
    return {"scheduler": schedule, "interval": "step"}


class EpochSummary(L.Callback):
    """One flushed line per epoch (logged metrics + elapsed time), readable in a log file."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = {
            k.removesuffix("_epoch"): float(v)
            for k, v in trainer.callback_metrics.items()
            if not k.endswith("_step")
        }
        metrics = " ".join(f"{k} {v:.3f}" for k, v in values.items())
        elapsed = time.perf_counter() - self.started
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {metrics} ({elapsed:.0f} s)",
            flush=True,
        )
