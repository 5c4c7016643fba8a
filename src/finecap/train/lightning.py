"""The one Lightning trainer factory and learning-rate schedule of finecap: captioners (MLE,
SCST), the scenes CLIP and the grammar head all train through `make_trainer` and
`warmup_cosine`, configured by the same `LightningConfig` section (`finecap.train.settings`)."""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from finecap.config import ConfigError
from finecap.train.checkpoints import SafeCheckpointIO
from finecap.train.settings import LightningConfig, TrainerConfig

LOGGERS: dict[str, Callable[[Path, int], Logger]] = {  # all write out/logs/version_N/
    "csv": lambda out, version: CSVLogger(out, name="logs", version=version),
    "tensorboard": lambda out, version: TensorBoardLogger(
        out,
        name="logs",
        version=version,
        default_hp_metric=False,  # no empty hp_metric curve
    ),
}
QUIET = [  # Lightning warnings that say nothing to a finecap user
    r"Checkpoint directory .* exists and is not empty",  # every resume: our own last.ckpt
    r".*isinstance\(treespec, LeafSpec\)",  # a deprecation inside Lightning 2.6 itself
]
ADVERTS = [r"💡 Tip"]  # Lightning's INFO lines advertising its cloud services
# A captioner run's summary (`finecap.train.summary`) says which device it uses and whether a
# GPU sits idle, in finecap's terms (`--set trainer.accelerator=gpu`), what the limits and step
# counts come to, and what a mid-epoch resume means for the data order: Lightning's own INFO
# lines and these warnings (whose advice is for Lightning developers) would repeat it.
RUN_QUIET = [
    *QUIET,
    r"GPU available but not used",
    r"You're resuming from a checkpoint that ended before the epoch ended",
    r"Found \d+ module\(s\) in eval mode",  # a frozen encoder keeps eval mode on purpose
]
EVERY_LINE = [r""]
_RANK_ZERO = logging.getLogger("lightning.pytorch.utilities.rank_zero")


@contextmanager
def quiet_lightning(noise: Sequence[str] = QUIET, info: Sequence[str] = ADVERTS) -> Iterator[None]:
    """Around `trainer.fit`: hide the `noise` warnings and Lightning's rank-zero INFO lines
    that start like one of `info`, and only those."""

    def shown(record: logging.LogRecord) -> bool:
        hidden = record.levelno <= logging.INFO and any(
            re.match(p, record.getMessage()) for p in info
        )
        return not hidden

    with warnings.catch_warnings():
        for pattern in noise:
            warnings.filterwarnings("ignore", message=pattern)
        _RANK_ZERO.addFilter(shown)
        try:
            yield
        finally:
            _RANK_ZERO.removeFilter(shown)


def make_trainer(
    settings: LightningConfig,
    max_epochs: int,
    callbacks: Sequence[Callback] = (),
    out: Path | None = None,
    gradient_clip: float = 0.0,
    max_steps: int | None = None,
    log_every_n_steps: int = 10,
) -> L.Trainer:
    """A Lightning trainer. For a captioner run (`TrainerConfig`, with `out`): logs under
    out/logs/version_N, validation and batch limits as configured, checkpoints by the given
    callbacks; for a plain `LightningConfig` (CLIP, grammar head): no logger, no checkpoints,
    one summary line per epoch. `max_steps` (if given) ends training instead of the epochs."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    run = isinstance(settings, TrainerConfig)
    if run and out is None:
        raise ValueError("a captioner run needs its output folder")
    per_run: dict[str, Any] = {"logger": False}
    if run:
        version = next_version(out / "logs")
        per_run = {
            "logger": [LOGGERS[name](out, version) for name in settings.logger],
            "check_val_every_n_epoch": settings.val_every_n_epochs,
            "limit_train_batches": settings.limit_train_batches,
            "limit_val_batches": settings.limit_val_batches,
        }
    # A run's bar; CLIP and grammar training print a line per epoch beside Lightning's bar.
    progress = [EpochBar(refresh_rate=10)] if run else [EpochSummary(), epoch_rich_bar()]
    if run and max_steps:
        callbacks = [*callbacks, ValidateAtMaxSteps()]
    plugins = [SafeCheckpointIO()] if run else []  # atomic writes, weights-only loads
    with quiet_lightning(RUN_QUIET, EVERY_LINE) if run else quiet_lightning():
        return L.Trainer(
            accelerator=settings.accelerator,
            devices=settings.devices,
            num_nodes=settings.num_nodes,
            strategy=settings.strategy,
            precision=settings.precision,
            max_epochs=-1 if max_steps else max_epochs,
            max_steps=max_steps or -1,
            gradient_clip_val=gradient_clip or None,
            callbacks=[*callbacks, *progress],
            plugins=plugins,
            enable_checkpointing=run,
            log_every_n_steps=log_every_n_steps,
            enable_model_summary=False,  # a run prints its own (finecap.train.summary)
            num_sanity_val_steps=0,
            deterministic=False,
            **per_run,
        )


def check_loggers(names: Sequence[str]) -> None:
    """Refuse, before a run starts, a logger whose package is not installed."""
    if "tensorboard" in names and not any(
        importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")
    ):
        raise ConfigError(
            "trainer.logger: tensorboard is not installed; pip install 'finecap[tensorboard]' "
            "(or tensorboard), or log to csv only"
        )


def next_version(logs: Path) -> int:
    """N of the next logs/version_N (one folder shared by all of a run's loggers)."""
    numbers = [p.name.removeprefix("version_") for p in logs.glob("version_*")]
    return max((int(n) for n in numbers if n.isdigit()), default=-1) + 1


def limited_batches(batches: int, limit: int | float) -> int:
    """How many of `batches` Lightning runs under a limit_*_batches value: an int is a
    count, a float a share."""
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


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


def steps_per_epoch(trainer: L.Trainer) -> int | None:
    """Optimiser steps in one epoch (None before the train loader is known or when endless)."""
    batches = trainer.num_training_batches
    if not 0 < batches < math.inf:
        return None
    return math.ceil(batches / trainer.accumulate_grad_batches)


def epochs_total(trainer: L.Trainer) -> int | None:
    """How many epochs the run will have started when it ends: max_epochs, or as many as
    max_steps takes (None when neither says)."""
    totals = [trainer.max_epochs] if trainer.max_epochs not in (None, -1) else []
    per_epoch = steps_per_epoch(trainer)
    if trainer.max_steps != -1 and per_epoch:
        totals.append(math.ceil(trainer.max_steps / per_epoch))
    return min(totals, default=None)


def epoch_label(trainer: L.Trainer) -> str:
    """ "3/6": the current epoch counted from 1, and the total."""
    total = epochs_total(trainer)
    return f"{trainer.current_epoch + 1}" + (f"/{total}" if total else "")


class EpochBar(TQDMProgressBar):
    """Lightning's progress bar, reading "Epoch 3/6" (from 1, with the total) as the lines of
    `EpochSummary` do; with max_steps the last epoch's bar ends where training does."""

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_start()
        self._describe(trainer)  # a run resumed mid-epoch has no epoch start to do it

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        # Lightning's own, with our description set before the bar redraws (no "Epoch 0").
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self._describe(trainer)
        self.train_progress_bar.initial = 0

    def _describe(self, trainer: L.Trainer) -> None:
        total = convert_inf(self.total_train_batches)
        per_epoch = steps_per_epoch(trainer)
        if total and trainer.max_steps != -1 and per_epoch and trainer.accumulate_grad_batches == 1:
            total = max(1, min(total, trainer.max_steps - trainer.current_epoch * per_epoch))
        bar = self.train_progress_bar
        bar.set_description(f"Epoch {epoch_label(trainer)}", refresh=False)
        bar.reset(total=total)


def epoch_rich_bar() -> Callback:
    """Lightning's default bar (Rich when installed) reading "Epoch 3/6" too, not "2/5"."""
    if not _RICH_AVAILABLE:
        return EpochBar()

    class EpochRichBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            return f"Epoch {epoch_label(self.trainer)}".ljust(len(self.validation_description))

    return EpochRichBar()


class ValidateAtMaxSteps(L.Callback):
    """Validate when max_steps ends training mid-epoch, as at an epoch's end (Lightning
    validates a stop it is asked for, not one at max_steps), so the final steps are scored
    and can become best.ckpt."""

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


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
        print(f"epoch {epoch_label(trainer)}: {metrics} ({elapsed:.0f} s)", flush=True)
