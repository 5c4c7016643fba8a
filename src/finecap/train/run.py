"""`train(config)`: build data, task and Lightning trainer; fit (resuming if interrupted);
export the selected checkpoint as a `Captioner` folder.

Output layout (`config.output_dir`):
  checkpoints/{last,best}.ckpt  Lightning checkpoints (resume / selection)
  logs/version_N/            CSV or TensorBoard logs, one folder per (resumed) run
  model/                     the selected model: config.json, model.safetensors, vocab.json
  config.yaml                the resolved recipe, with the model it actually trained

Everything a user can get wrong (a setting, the dataset, `--init`, a reward's CLIP or grammar
folder, offline pretrained weights) fails before the run folder is made, so a failed start
leaves nothing behind.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from finecap.captioner import Captioner
from finecap.config import ConfigError
from finecap.io import atomic_write_text
from finecap.train.config import TrainConfig, config_to_yaml
from finecap.train.data import CaptionDataModule
from finecap.train.lightning import make_trainer
from finecap.train.tasks import CaptionTask, create_task


def resolve_model(config: TrainConfig, init: str | Path | None) -> tuple[TrainConfig, Captioner]:
    """The config with the model it will train, and the captioner to start from (or None).

    A later stage (SCST) keeps the `--init` model's own architecture and vocabulary, so its
    model config replaces the recipe's; the lengths are checked against it again.
    """
    if init is None:
        if config.model is None:
            raise ConfigError(
                f"task {config.task} starts from a trained captioner: pass --init MODEL_DIR "
                "(or give the recipe a model: section to start from random weights)"
            )
        return config, None
    initial = Captioner.from_pretrained(init)
    return config.replace(model=initial.config.to_dict()), initial


def train(config: TrainConfig, init: str | Path | None = None) -> Path:
    """Fit the configured task; returns the exported model folder."""
    config, initial = resolve_model(config, init)
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    data = CaptionDataModule(config.data)
    vocab = initial.vocab if initial else data.build_vocab()
    task = create_task(config, vocab, initial.model if initial else None)
    data.vocab, data.preprocess = vocab, task.model.encoder.preprocess

    out = Path(config.output_dir)
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_text(out / "config.yaml", config_to_yaml(config))
        select_by_cider = config.trainer.select == "val_cider" and data.val_records
        monitor = "val/CIDEr" if select_by_cider else None  # None: the last checkpoint
        checkpoint = ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="best",
            monitor=monitor,
            mode="max",
            save_last=True,
            save_top_k=1,
            enable_version_counter=False,
        )
        trainer = make_trainer(
            config.trainer,
            config.optim.max_epochs,
            [checkpoint],
            out=out,
            gradient_clip=config.optim.gradient_clip,
        )
        last = out / "checkpoints" / "last.ckpt"
        trainer.fit(task, datamodule=data, ckpt_path=str(last) if last.exists() else None)
    except BaseException:
        if fresh and not any((out / "checkpoints").glob("*.ckpt")):
            shutil.rmtree(out, ignore_errors=True)  # nothing trained: leave no empty run behind
        raise
    return export_selected(task, checkpoint, out / "model")


def export_selected(task: CaptionTask, checkpoint: ModelCheckpoint, folder: Path) -> Path:
    """Load the selected checkpoint's weights into the task and save it as a Captioner."""
    path = checkpoint.best_model_path or checkpoint.last_model_path
    extra = {"task": task.config.task, "selected": "val_cider" if checkpoint.monitor else "last"}
    if path:
        state = torch.load(path, map_location="cpu", weights_only=True)
        task.load_state_dict(state["state_dict"])
        extra["epochs"] = int(state["epoch"]) + 1  # epochs trained when it was saved
    if checkpoint.best_model_score is not None:
        extra["best_val_cider"] = float(checkpoint.best_model_score)
    Captioner(task.model.cpu().eval(), task.vocab).save_pretrained(folder, extra)
    return folder
