"""`train(config)`: build data, task and Lightning trainer; fit (resuming if interrupted);
export the selected checkpoint as a `Captioner` folder.

Output layout (`config.output_dir`):
  checkpoints/last.ckpt      the latest state (every few minutes / N steps, each epoch's end,
                             on SIGINT/SIGTERM), written atomically: what a rerun resumes
  checkpoints/best.ckpt      the best validation CIDEr-D (with trainer.select: val_cider)
  logs/version_N/            metrics.csv and/or TensorBoard events (trainer.logger), one
                             folder per (resumed) run
  model/                     the selected model: config.json, model.safetensors, vocab.json
  config.yaml                the resolved recipe, with the model it actually trained
  run.json                   what identifies the run (dataset, seed, task, model) + finished

Everything a user can get wrong (a setting, the dataset, `--init`, a reward's CLIP or grammar
folder, offline pretrained weights) fails before the run folder is made, so a failed start
leaves nothing behind. One process writes a run folder at a time (`FolderLock`); a rerun of a
finished run does nothing; a resume whose dataset, seed, task or model differs from the
recorded run is refused unless `force`.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import nullcontext
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from finecap.captioner import Captioner
from finecap.config import ConfigError
from finecap.distributed import is_primary_process
from finecap.io import FolderLock, atomic_write_text
from finecap.model_card import describe, render_card, training_facts
from finecap.train.checkpoints import (
    LAST,
    GracefulStop,
    LastCheckpoint,
    load_checkpoint,
)
from finecap.train.config import TrainConfig, config_to_yaml
from finecap.train.data import CaptionDataModule
from finecap.train.finetune import EncoderSchedule
from finecap.train.lightning import (
    EVERY_LINE,
    RUN_QUIET,
    check_loggers,
    limited_batches,
    make_trainer,
    quiet_lightning,
)
from finecap.train.summary import RunSummary
from finecap.train.tasks import CaptionTask, create_task

RUN_FILE = "run.json"


def resolve_model(config: TrainConfig, init: str | Path | None) -> tuple[TrainConfig, Captioner]:
    """The config with the model it will train, and the captioner to start from (or None).

    A later stage (SCST) keeps the `--init` model's own architecture and vocabulary, so its
    model config replaces the recipe's; the lengths are checked against it again. How to
    train its encoder (`model.encoder.freeze` / `unfreeze_after_epochs`, where the recipe or
    --set gives them) still comes from the recipe. `--init` may be a finecap folder or a
    Hugging Face captioner (hub name or folder: `finecap.models.pretrained`). A recipe
    without `model_decoding` keeps the `--init` model's own decoding.
    """
    if init is None:
        if config.model is None:
            raise ConfigError(
                f"task {config.task} starts from a trained captioner: pass --init MODEL_DIR "
                "(or give the recipe a model: section to start from random weights)"
            )
        return config, None
    initial = Captioner.from_pretrained(init)
    model = initial.config.to_dict()
    if config.model is not None:
        given = config.model.encoder
        schedule = ("freeze", "unfreeze_after_epochs")
        model["encoder"].update(
            {k: getattr(given, k) for k in schedule if k in given.model_fields_set}
        )
    changes = {"model": model}
    if config.model_decoding is None and (own := initial.own_decoding()):
        changes["model_decoding"] = own
    return config.replace(**changes), initial


def run_identity(config: TrainConfig) -> dict:
    """What a resume must share with the run it continues."""
    return {
        "dataset": str(Path(config.data.dataset).resolve()),
        "seed": config.seed,
        "task": config.task,
        "model": config.model.to_dict(),
    }


def check_resume(out: Path, identity: dict, force: bool) -> dict | None:
    """The recorded run of `out` (None for a new run); refuses a different one unless force."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        recorded["identity"].keys()
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ConfigError(
            f"{path}: unreadable run record ({err!r}); move the folder aside or delete the file"
        ) from None
    changed = [k for k in identity if recorded.get("identity", {}).get(k) != identity[k]]
    if changed and not force:
        shown = "; ".join(
            f"{k}: recorded {recorded.get('identity', {}).get(k)!r}, now {identity[k]!r}"
            for k in changed
        )
        raise ConfigError(
            f"{out} holds a run with another {', '.join(changed)} ({shown}): use a new "
            "output_dir, or --force to continue it anyway"
        )
    return recorded


def budget(config: TrainConfig) -> dict:
    """How long the run trains, as run.json records it when it has: {"max_steps": N} or
    {"max_epochs": N}; a rerun with the same budget of a finished run does nothing."""
    optim = config.optim
    return {"max_steps": optim.max_steps} if optim.max_steps else {"max_epochs": optim.max_epochs}


def _budget_of(finished: object) -> dict | None:
    # run.json files written before max_steps existed record the epoch count alone.
    return {"max_epochs": finished} if isinstance(finished, int) else finished


def _budget_text(budget: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in budget.items())


def train(config: TrainConfig, init: str | Path | None = None, force: bool = False) -> Path:
    """Fit the configured task; returns the exported model folder."""
    config, initial = resolve_model(config, init)
    check_loggers(config.trainer.logger)
    out = Path(config.output_dir)
    fresh = not out.exists()
    identity = run_identity(config)
    recorded = check_resume(out, identity, force)
    finished = recorded and _budget_of(recorded.get("finished")) == budget(config)
    if finished and (out / "model").is_dir():
        print(f"{out}: finished already ({_budget_text(budget(config))}); nothing to do")
        return out / "model"
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = CaptionDataModule(config.data)
    vocab = initial.vocab if initial else data.build_vocab()
    task = create_task(config, vocab, initial.model if initial else None)
    encoder = task.model.encoder
    data.vocab, data.preprocess, data.cache_side = vocab, encoder.preprocess, encoder.input_side
    if data.store is not None:  # refused unless this run's frozen encoder made the store
        data.store.check_encoder(encoder, f"this run's encoder ({config.model.encoder.name})")

    # With several processes (DDP) all of them train; only the primary (global rank 0) locks
    # the folder and writes config.yaml, run.json and the model (Lightning: checkpoints, logs).
    primary = is_primary_process()
    with FolderLock(out) if primary else nullcontext():  # a second writer stops here
        try:
            record = {"identity": identity, "finished": None}
            if primary:
                Captioner.recover(out / "model")  # a swap a kill interrupted, earlier
                atomic_write_text(out / "config.yaml", config_to_yaml(config))
                atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2))
            checkpoint = _fit(task, data, config, out)
            if not primary:
                return out / "model"
            facts = training_facts(config, data.corpus, len(data.train_records), len(vocab))
            folder = export_selected(task, checkpoint, out / "model", facts)
            record["finished"] = budget(config)
            atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2))
        except BaseException:
            if primary and fresh and not any((out / "checkpoints").glob("*.ckpt")):
                shutil.rmtree(out, ignore_errors=True)  # nothing trained: leave no empty run
            raise
    return folder


def _fit(
    task: CaptionTask, data: CaptionDataModule, config: TrainConfig, out: Path
) -> ModelCheckpoint:
    """Run (or resume) Lightning's fit; returns the best-checkpoint callback."""
    select_by_cider = config.trainer.select == "val_cider" and data.val_records
    best = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor="val/CIDEr" if select_by_cider else None,
        mode="max",
        save_top_k=1 if select_by_cider else 0,
        save_last=False,
        enable_version_counter=False,
    )
    last = LastCheckpoint(
        out / "checkpoints",
        config.trainer.checkpoint_every_n_steps,
        config.trainer.checkpoint_every_minutes,
    )
    callbacks = [RunSummary(out), best, last, GracefulStop(last)]
    callbacks.append(EncoderSchedule(config.model.encoder))  # unfreeze_after_epochs
    # Each of the DDP processes gets its share of the images (Lightning's DistributedSampler).
    share = math.ceil(len(data.train_records) / config.trainer.processes)
    batches = math.ceil(share / config.data.batch_size)
    per_epoch = limited_batches(batches, config.trainer.limit_train_batches)
    trainer = make_trainer(
        config.trainer,
        config.optim.max_epochs,
        callbacks,
        out,
        config.optim.gradient_clip,
        max_steps=config.optim.max_steps,
        log_every_n_steps=max(1, min(10, per_epoch)),  # short epochs still log their steps
    )
    resume = out / "checkpoints" / LAST
    with quiet_lightning(RUN_QUIET, EVERY_LINE):
        trainer.fit(
            task,
            datamodule=data,
            ckpt_path=str(resume) if resume.exists() else None,
            weights_only=True,
        )
    return best


def export_selected(
    task: CaptionTask, best: ModelCheckpoint, folder: Path, facts: dict | None = None
) -> Path:
    """Load the selected checkpoint's weights (the best by validation CIDEr-D, or the last)
    into the task and save it as a Captioner, with its model card (`finecap.model_card`)
    written from `facts` (`training_facts`) and what the export adds."""
    last = folder.parent / "checkpoints" / LAST
    path = Path(best.best_model_path) if best.best_model_path else last
    extra = {"task": task.config.task, "selected": "val_cider" if best.monitor else "last"}
    extra.update(facts or {})
    if path.is_file():
        state = load_checkpoint(path)
        task.load_state_dict(state["state_dict"])
        extra["epochs"] = int(state["epoch"]) + 1  # epochs trained when it was saved
        extra["steps"] = int(state["global_step"])
    if best.best_model_score is not None:
        extra["best_val_cider"] = float(best.best_model_score)
    captioner = Captioner(task.model.cpu().eval(), task.vocab, decoding=task.config.model_decoding)
    own = captioner.decoding if captioner.own_decoding() else None  # the card says it if own
    card = render_card(extra, title=f"finecap captioner: {describe(extra)}", decoding=own)
    captioner.save_pretrained(folder, extra, card=card)
    return folder
