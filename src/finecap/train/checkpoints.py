"""Checkpoints that lose nothing: written atomically, loaded safely, kept current, and
taken on SIGINT / SIGTERM.

- `SafeCheckpointIO`: Lightning's checkpoint I/O, but every file is written to a temporary
  file in the same folder, fsynced and renamed over the old one (a kill mid-write leaves the
  previous checkpoint whole), and read with `torch.load(weights_only=True)` *explicitly*, so
  a planted checkpoint cannot run code whatever torch's default or environment says
  (`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` only overrides callers that leave it unset).
- `LastCheckpoint`: `last.ckpt` is always the latest state — every N steps or M minutes and
  at the end of every epoch. (Lightning's `ModelCheckpoint(save_last=True)` with a monitor
  rewrites `last.ckpt` only when the monitored score improves.)
- `GracefulStop`: SIGINT and SIGTERM finish the current step, write `last.ckpt` and stop the
  run with `TrainingInterrupted`; rerunning the same command resumes from that step.
"""

from __future__ import annotations

import io
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from finecap.errors import UserError
from finecap.io import atomic_write_bytes

LAST = "last.ckpt"


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(
        self, path: str | Path, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint's contents, never unpickling code (`weights_only=True`)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: refused: it holds objects a weights-only load does not allow, so loading "
            f"it could run code ({str(err).splitlines()[0]}); delete it if you did not make it"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise UnsafeCheckpointError(f"{path}: not a readable checkpoint ({err})") from None


class UnsafeCheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be loaded safely (or at all)."""


def checkpoint_position(path: Path) -> tuple[int, int]:
    """(global step, epoch) at which a checkpoint was saved (for tools and tests; a resuming
    run reports its position from the restored trainer instead of reading the file twice)."""
    state = load_checkpoint(path)
    return int(state.get("global_step", 0)), int(state.get("epoch", 0))


class LastCheckpoint(L.Callback):
    """Write `dirpath/last.ckpt` every `every_n_steps` steps (or `every_minutes` minutes when
    that is None) and at the end of each epoch."""

    def __init__(
        self, dirpath: Path, every_n_steps: int | None, every_minutes: float = 5.0
    ) -> None:
        self.path = Path(dirpath) / LAST
        self.every_n_steps, self.every_seconds = every_n_steps, every_minutes * 60
        self._last_time = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path:  # restored already: say where the run goes on from
            print(
                f"resuming from step {trainer.global_step} "
                f"(epoch {trainer.current_epoch + 1}/{trainer.max_epochs}): "
                f"{trainer.ckpt_path}",
                flush=True,
            )

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume
        self._last_time = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every_n_steps is not None:
            due = trainer.global_step % self.every_n_steps == 0
        else:
            due = time.monotonic() - self._last_time >= self.every_seconds
            if trainer.world_size > 1:  # saving is collective: every process follows rank 0
                due = trainer.strategy.broadcast(due, src=0)
        if due:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)  # after the epoch's validation: the best-checkpoint state is in it


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM stopped the run after saving `path` at `step`."""

    def __init__(self, signum: int, step: int, epoch: int, path: Path) -> None:
        self.signum, self.step, self.epoch, self.path = signum, step, epoch, path
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped at step {step} (epoch {epoch}), saved {path}; run the same "
            "command again to resume"
        )

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended


class GracefulStop(L.Callback):
    """On SIGINT / SIGTERM: end the current step, save `last.ckpt`, raise TrainingInterrupted.
    A second Ctrl-C while saving is ignored; the handlers are restored when the run ends."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, last: LastCheckpoint) -> None:
        self.last = last
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # all DDP processes stop (and save) at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        self.received = self.received or signal.SIGTERM  # another process got the signal
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        self.last.save(trainer)
        raise TrainingInterrupted(
            self.received, trainer.global_step, trainer.current_epoch, self.last.path
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
