"""`train(config)`: build data, task and Lightning trainer; fit (resuming if interrupted);
export the best checkpoint as a `Captioner` folder.

Output layout (`config.output_dir`):
  checkpoints/{last,best}.ckpt  Lightning checkpoints (resume / selection)
  logs/version_N/            CSV or TensorBoard logs, one folder per (resumed) run
  model/                     the best model: config.json, model.safetensors, vocab.json
  config.yaml                the resolved recipe
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from finecap.captioner import Captioner
from finecap.io import atomic_write_text
from finecap.train.config import TrainConfig, config_to_dict
from finecap.train.data import CaptionDataModule
from finecap.train.tasks import CaptionTask, create_task

LOGGERS = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}


def _make_trainer(
    config: TrainConfig, out: Path, monitor: str | None
) -> tuple[L.Trainer, ModelCheckpoint]:
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max",
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    if config.trainer.logger not in LOGGERS:
        raise ValueError(f"trainer.logger must be one of {', '.join(LOGGERS)}")
    trainer = L.Trainer(
        accelerator=config.trainer.accelerator,
        devices=config.trainer.devices,
        strategy=config.trainer.strategy,
        precision=config.trainer.precision,
        max_epochs=config.optim.max_epochs,
        gradient_clip_val=config.optim.gradient_clip or None,
        check_val_every_n_epoch=config.trainer.val_every_n_epochs,
        callbacks=[checkpoint, TQDMProgressBar(refresh_rate=10)],
        logger=LOGGERS[config.trainer.logger](out, name="logs"),  # logs/version_N per run
        log_every_n_steps=10,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    return trainer, checkpoint


def train(config: TrainConfig, init: str | Path | None = None) -> Path:
    """Fit the configured task; returns the exported model folder."""
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))

    initial = Captioner.from_pretrained(init) if init else None
    model = initial.model if initial else None
    if initial:  # a later stage (SCST) keeps the model's own architecture and vocabulary
        config.model = initial.config
    data = CaptionDataModule(config.data)
    vocab = initial.vocab if initial else data.build_vocab()
    task = create_task(config, vocab, model)
    data.vocab, data.preprocess = vocab, task.model.encoder.preprocess

    select_by_cider = config.trainer.select == "val_cider" and data.val_records
    monitor = "val/CIDEr" if select_by_cider else None  # None: the last checkpoint
    trainer, checkpoint = _make_trainer(config, out, monitor)
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(task, datamodule=data, ckpt_path=str(last) if last.exists() else None)
    return export_best(task, checkpoint, out / "model")


def export_best(task: CaptionTask, checkpoint: ModelCheckpoint, folder: Path) -> Path:
    """Load the best (or last) checkpoint's weights into the task and save it as a Captioner."""
    best = checkpoint.best_model_path or checkpoint.last_model_path
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state)
    score = checkpoint.best_model_score
    extra = {"best_val_cider": None if score is None else float(score), "checkpoint": str(best)}
    Captioner(task.model.cpu().eval(), task.vocab).save_pretrained(folder, extra)
    return folder
