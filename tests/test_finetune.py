"""Encoder fine-tuning (`model.encoder.unfreeze_after_epochs`, `optim.encoder_lr_scale`):
requires_grad flips at the right epoch, the encoder trains at its own learning rate from then
on, its BatchNorm statistics stay frozen, and `--init` keeps the recipe's schedule."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from finecap.config import ConfigError
from finecap.models import encoder_config
from finecap.scenes import generate_world
from finecap.train.config import load_config
from finecap.train.data import CaptionDataModule
from finecap.train.finetune import EncoderSchedule, frozen_in_epoch
from finecap.train.run import resolve_model
from finecap.train.tasks import create_task
from helpers.tiny_captioners import make_tiny_captioner

CONFIGS = Path(__file__).parents[1] / "src" / "finecap" / "configs"


def test_frozen_in_epoch() -> None:
    schedule = encoder_config("small_cnn", freeze=True, unfreeze_after_epochs=2)
    assert [frozen_in_epoch(schedule, e) for e in range(4)] == [True, True, False, False]
    assert all(frozen_in_epoch(encoder_config("small_cnn", freeze=True), e) for e in range(4))
    assert not any(frozen_in_epoch(encoder_config("small_cnn"), e) for e in range(4))
    with pytest.raises(ConfigError, match="unfreeze_after_epochs needs freeze: true"):
        encoder_config("small_cnn", unfreeze_after_epochs=1)


class Probe(L.Callback):
    """What the encoder looks like at each epoch's first step."""

    def __init__(self) -> None:
        self.trainable: list[bool] = []
        self.weights: list[torch.Tensor] = []
        self.statistics: list[torch.Tensor] = []
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, task, batch, batch_index) -> None:  # noqa: ANN001
        if batch_index:
            return
        encoder = task.model.encoder
        self.trainable.append(all(p.requires_grad for p in encoder.parameters()))
        self.weights.append(encoder.convs[0].weight.detach().clone())
        self.statistics.append(encoder.convs[1].running_mean.clone())
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_unfreeze_schedule_flips_requires_grad_at_the_right_epoch(tmp_path: Path) -> None:
    world = generate_world(tmp_path / "world", 12, seed=2, image_size=32)
    config = load_config(
        CONFIGS / "scenes_lstm.yaml",
        [
            f"data.dataset={world}", "data.batch_size=4", "data.val_images=0",
            "model.encoder.image_size=32", "model.encoder.width=16",
            "model.encoder.freeze=true", "model.encoder.unfreeze_after_epochs=2",
            "model.decoder.hidden_size=32", "model.decoder.embed_size=16",
            "model.decoder.attention_size=16", "optim.warmup_steps=0", "optim.min_lr_ratio=1",
            "optim.lr=0.01", "optim.encoder_lr_scale=0.1",
        ],
    )  # fmt: skip
    data = CaptionDataModule(config.data)
    vocab = data.build_vocab()
    task = create_task(config, vocab)
    data.vocab, data.preprocess = vocab, task.model.encoder.preprocess
    probe = Probe()
    trainer = L.Trainer(
        max_epochs=4,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=[EncoderSchedule(config.model.encoder), probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=data)
    assert probe.trainable == [False, False, True, True]
    # The encoder's own parameter group, at 0.1 x the decoder's rate, from the first step.
    assert all(lrs == pytest.approx([0.01, 0.001]) for lrs in probe.lrs)
    w = probe.weights
    assert torch.equal(w[0], w[1]) and torch.equal(w[1], w[2])  # frozen for two epochs
    assert not torch.equal(w[2], w[3])  # then trained
    assert not torch.equal(w[3], task.model.encoder.convs[0].weight)
    for stats in [*probe.statistics, task.model.encoder.convs[1].running_mean]:
        assert torch.equal(stats, probe.statistics[0])  # batch-norm statistics never move


def test_init_keeps_the_recipes_encoder_schedule(tmp_path: Path) -> None:
    folder = tmp_path / "mle"
    make_tiny_captioner("lstm", max_len=16).save_pretrained(folder)
    overrides = [
        "data.dataset=unused.json", "model.encoder.freeze=true",
        "model.encoder.unfreeze_after_epochs=1",
    ]  # fmt: skip
    recipe = CONFIGS / "scst_scenes_cider.yaml"
    config, initial = resolve_model(load_config(recipe, overrides), folder)
    assert config.model.encoder.freeze and config.model.encoder.unfreeze_after_epochs == 1
    assert config.model.encoder.width == initial.config.encoder.width  # the rest is the model's
    plain, _ = resolve_model(load_config(recipe, overrides[:2]), folder)
    assert plain.model.encoder.to_dict() == {**initial.config.encoder.to_dict(), "freeze": True}


@pytest.mark.parametrize(
    "name", ["coco_resnet50_lstm_finetune", "coco_clipvit_b32_transformer_finetune"]
)
def test_finetune_recipes(name: str) -> None:
    config = load_config(name)
    assert config.model.encoder.freeze and config.model.encoder.unfreeze_after_epochs == 5
    assert config.optim.encoder_lr_scale == 0.1
