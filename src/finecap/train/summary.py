"""What a captioner run prints when it starts: the model and its parameter counts (as
Lightning's model summary gives them), the data, the vocabulary, the step counts (as Hugging
Face's Trainer gives "Num examples" and "Total optimization steps"), the device and where the
logs and checkpoints go. One block, on rank zero, before the progress bar:

    finecap train: task mle, run folder runs/scenes_lstm
      model       20,047 parameters (20,047 trainable), 0.1 MB
        encoder   small_cnn: 4,516 parameters (4,516 trainable)
        decoder   lstm: 15,531 parameters (15,531 trainable)
      data        dataset.json (scenes): 32 train images, 4 val images
      batches     8 images x 5 captions per image; validation 4 images in 1 batch, every epoch
      vocab       105 words
      steps       4 per epoch, 8 optimiser steps (2 epochs; lr 0.002, warm-up 2, cosine ...)
      device      cpu x 1, precision 32-true
      logs        runs/scenes_lstm/logs/version_0: metrics.csv
      checkpoints runs/scenes_lstm/checkpoints: last.ckpt (to resume), best.ckpt (best ...)
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from finecap.train.data import CaptionDataModule
from finecap.train.lightning import epochs_total, limited_batches, steps_per_epoch


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters of `module`."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _params(module: nn.Module) -> str:
    total, trainable = parameter_counts(module)
    return f"{total:,} parameters ({trainable:,} trainable)"


def _row(label: str, text: str) -> str:
    return f"  {label:<12}{text}"


def model_lines(task: L.LightningModule) -> list[str]:
    model = task.model
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    lines = [_row("model", f"{_params(model)}, {size:.1f} MB")]
    for name, part in model.named_children():  # encoder, decoder
        kind = getattr(getattr(task.config.model, name, None), "name", type(part).__name__)
        lines.append(_row(f"  {name}", f"{kind}: {_params(part)}"))
    return lines


def _per_process(trainer: L.Trainer, batch_size: int) -> str:
    """With DDP: batches and the split are per process (each its share of the images)."""
    n = trainer.world_size
    return f" on each of {n} processes ({n * batch_size} images a step)" if n > 1 else ""


def data_lines(trainer: L.Trainer, data: CaptionDataModule, vocab_size: int) -> list[str]:
    config = trainer.lightning_module.config
    n_train, n_val = len(data.train_records), len(data.val_records)
    val_batches = limited_batches(
        math.ceil(n_val / data.config.batch_size), trainer.limit_val_batches
    )
    if val_batches:
        val_images = min(n_val, val_batches * data.config.batch_size)
        every = config.trainer.val_every_n_epochs
        when = "every epoch" if every == 1 else f"every {every} epochs"
        plural = "es" if val_batches > 1 else ""
        validation = f"validation {val_images:,} images in {val_batches} batch{plural}, {when}"
    else:
        validation = "no validation"
    return [
        _row(
            "data",
            f"{Path(data.config.dataset).name} ({data.corpus.name}): "
            f"{n_train:,} train images, {n_val:,} val images",
        ),
        _row(
            "batches",
            f"{data.config.batch_size} images x {data.config.captions_per_image} "
            f"captions per image{_per_process(trainer, data.config.batch_size)}; {validation}",
        ),
        _row("vocab", f"{vocab_size:,} words"),
    ]


def step_lines(trainer: L.Trainer) -> list[str]:
    optim = trainer.lightning_module.config.optim
    per_epoch, epochs = steps_per_epoch(trainer), epochs_total(trainer)
    total = int(trainer.estimated_stepping_batches)
    how = f"max_steps, about {epochs} epochs" if optim.max_steps else f"{epochs} epochs"
    schedule = (
        f"lr {optim.lr:g}, warm-up {optim.warmup_steps}, cosine to {optim.min_lr_ratio:g} x lr"
    )
    device = f"{trainer.strategy.root_device} x {trainer.num_devices}"
    if trainer.num_nodes > 1:
        device += f" on each of {trainer.num_nodes} nodes"
    if trainer.strategy.root_device.type == "cpu" and torch.cuda.is_available():
        device += " (a CUDA GPU is unused: --set trainer.accelerator=gpu)"
    lines = [
        _row("steps", f"{per_epoch:,} per epoch, {total:,} optimiser steps ({how}; {schedule})"),
        _row("device", f"{device}, precision {trainer.precision}"),
    ]
    step = trainer.global_step
    if step and per_epoch and step % per_epoch:  # the loader cannot resume its own order
        left = per_epoch - step % per_epoch
        lines.append(
            _row(
                "resumed",
                f"mid-epoch, at step {step:,}: a fresh shuffle feeds the epoch's last {left} "
                f"step{'s' * (left > 1)}",
            )
        )
    return lines


def output_lines(trainer: L.Trainer, out: Path) -> list[str]:
    written = []
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            written.append("metrics.csv")
        elif isinstance(logger, TensorBoardLogger):
            written.append(f"TensorBoard events (tensorboard --logdir {out / 'logs'})")
    logs = trainer.loggers[0].log_dir if trainer.loggers else None
    best = trainer.checkpoint_callback
    kept = "last.ckpt (to resume)"
    if best is not None and best.monitor:
        kept += ", best.ckpt (best val CIDEr-D)"
    return [
        _row("logs", f"{logs}: {', '.join(written)}" if logs else "none"),
        _row("checkpoints", f"{out / 'checkpoints'}: {kept}"),
    ]


def run_summary(trainer: L.Trainer, out: Path) -> str:
    """The start-of-run block (see the module docstring)."""
    task = trainer.lightning_module
    lines = [f"finecap train: task {task.config.task}, run folder {out}"]
    lines += model_lines(task)
    lines += data_lines(trainer, trainer.datamodule, len(task.vocab))
    lines += step_lines(trainer) + output_lines(trainer, out)
    return "\n".join(lines)


class RunSummary(L.Callback):
    """Print `run_summary` once, on rank zero, when training starts."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(run_summary(trainer, self.out), flush=True)
