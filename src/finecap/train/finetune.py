"""Encoder fine-tuning on a schedule: frozen for `model.encoder.unfreeze_after_epochs` epochs,
then trained at `optim.lr x optim.encoder_lr_scale` (0.1 in the shipped recipes: a pretrained
backbone needs small steps, a fresh decoder large ones), its BatchNorm statistics kept frozen.

Training the decoder on a frozen backbone first, then the whole model, is the usual transfer
recipe (Show, Attend and Tell fine-tuned its CNN after the decoder had settled; Vinyals et al.
2015 likewise). Batch-norm statistics stay as pretrained: captioning batches are small and of
one domain, and re-estimating them would shift every feature the decoder has learnt to read
(Detectron's "frozen BN").

    model.encoder: {name: resnet50, pretrained: microsoft/resnet-50, freeze: true,
                    unfreeze_after_epochs: 5}
    optim: {encoder_lr_scale: 0.1}

The optimiser holds the encoder's parameters from the start (AdamW skips those without a
gradient), so unfreezing needs no new optimiser, and a resumed run re-applies the state of the
epoch it resumes in.
"""

from __future__ import annotations

import lightning as L
from torch import nn

from finecap.models.encoders import EncoderConfig


def frozen_in_epoch(config: EncoderConfig, epoch: int) -> bool:
    """Whether the encoder is frozen in `epoch` (counted from 0)."""
    if not config.freeze:
        return False
    return config.unfreeze_after_epochs is None or epoch < config.unfreeze_after_epochs


def unfreezes_later(config: EncoderConfig) -> bool:
    """Whether the encoder is frozen now but trained later (its parameters join the optimiser)."""
    return config.freeze and config.unfreeze_after_epochs is not None


class EncoderSchedule(L.Callback):
    """Freezes or trains the encoder each epoch as `config` says; announces the change."""

    def __init__(self, config: EncoderConfig) -> None:
        self.config = config

    def _apply(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if not self.config.freeze:
            return  # trained throughout, as built
        encoder = task.model.encoder
        frozen = frozen_in_epoch(self.config, trainer.current_epoch)
        if encoder.frozen == frozen and not (frozen and _any_trainable(encoder)):
            return
        encoder.set_frozen(frozen)
        if not frozen and trainer.is_global_zero:
            scale = task.config.optim.encoder_lr_scale
            print(
                f"epoch {trainer.current_epoch + 1}: encoder unfrozen (lr x {scale:g}, "
                "batch-norm statistics kept)",
                flush=True,
            )

    def setup(self, trainer: L.Trainer, task: L.LightningModule, stage: str) -> None:
        self._apply(trainer, task)  # before the optimiser is built: the state of epoch 0

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._apply(trainer, task)


def _any_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())
