"""Lightning training tasks. A task owns the model, its loss and the batch layout.

- `CaptionTask`: what every task shares — validation CIDEr-D of greedy/beam captions (used
  to keep the best checkpoint), the optimiser and the warm-up + cosine schedule
  (`finecap.train.lightning`).
- `MLETask`: teacher-forced cross-entropy (optional label smoothing) plus the decoder's own
  regulariser (the doubly-stochastic attention penalty of Show, Attend and Tell).
Self-critical training lives in `finecap.train.scst`.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from finecap.data.vocab import Vocab
from finecap.decoding import decode
from finecap.distributed import gather_objects, world_size
from finecap.errors import UserError
from finecap.models import CaptionModel, EncoderOutput
from finecap.registry import Registry
from finecap.train.config import TrainConfig
from finecap.train.data import CaptionBatch
from finecap.train.finetune import unfreezes_later
from finecap.train.lightning import warmup_cosine_schedule

_TASKS: Registry[type] = Registry("training task")
register_task = _TASKS.register
list_tasks = _TASKS.names


def create_task(
    config: TrainConfig, vocab: Vocab, model: CaptionModel | None = None
) -> CaptionTask:
    from finecap.train import scst  # noqa: F401  (registers the "scst" task)

    return _TASKS.create(config.task, config, vocab, model)


class CaptionTask(L.LightningModule):
    def __init__(
        self, config: TrainConfig, vocab: Vocab, model: CaptionModel | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.model = model if model is not None else CaptionModel(config.model, len(vocab))
        self.model.train()  # a loaded Captioner comes in eval mode
        # Plain dicts only, so Lightning checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"config": config.to_dict(), "vocab": vocab.itos})
        self._val_predictions: dict[int, str] = {}
        self._val_references: dict[int, list[str]] = {}

    def encode(self, batch: CaptionBatch) -> EncoderOutput:
        """Each image once: from its pixels, or from its stored backbone features (a feature
        store, `data.features`: what the frozen encoder computes from the pixels)."""
        if batch.regions is not None:
            return self.model.encoder.encode_features(batch.regions)
        return self.model.encode(batch.pixels)

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:  # each DDP process draws its own samples and dropout
            torch.manual_seed(self.config.seed + self.trainer.global_rank)

    def validation_step(self, batch: CaptionBatch, batch_index: int) -> None:
        enc = self.encode(batch)
        decoded = decode(self.model.decoder, enc, self.config.decoding)
        n_best = self.config.decoding.n_best
        for i, image_id in enumerate(batch.image_ids):
            self._val_predictions[image_id] = self.vocab.decode(decoded.tokens[i * n_best].tolist())
            self._val_references[image_id] = batch.references[i]

    def on_validation_epoch_end(self) -> None:
        # With several processes each validated its share of the split: CIDEr-D (whose
        # document frequencies span the split) is computed over all of them, on every rank.
        predictions, references = {}, {}
        for preds, refs in gather_objects((self._val_predictions, self._val_references)):
            predictions.update(preds)
            references.update(refs)
        if predictions:
            cider = validation_cider(references, predictions)
            self.log("val/CIDEr", cider, prog_bar=True, sync_dist=world_size() > 1)
        self._val_predictions, self._val_references = {}, {}

    def configure_optimizers(self):  # noqa: ANN201 (Lightning's union of return types)
        optim = self.config.optim
        # An encoder unfrozen later (unfreeze_after_epochs) is in the optimiser from the start.
        later = unfreezes_later(self.config.model.encoder)
        encoder_params = [p for p in self.model.encoder.parameters() if p.requires_grad or later]
        other_params = [
            p
            for n, p in self.model.named_parameters()
            if p.requires_grad and not n.startswith("encoder.")
        ]
        groups = [{"params": other_params, "lr": optim.lr}]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": optim.lr * optim.encoder_lr_scale})
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_cosine_schedule(optimizer, optim.warmup_steps, total, optim.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def validation_cider(references: dict[int, list[str]], predictions: dict[int, str]) -> float:
    """Corpus CIDEr-D of the validation captions, as pycocoevalcap computes it (fast tier)."""
    from finecap.metrics.fast import fast_scores

    return float(fast_scores(references, predictions, ["CIDEr"]).scores["CIDEr"])


class NonFiniteLossError(UserError, FloatingPointError):
    """Training produced NaN or inf: the run stops and nothing is exported."""


def check_finite(name: str, value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteLossError(
            f"training stopped: non-finite {name} ({value.flatten()[:8].tolist()}...); lower "
            "the learning rate or check the data and reward configuration; nothing exported"
        )


def caption_cross_entropy(logits: Tensor, tokens: Tensor, label_smoothing: float) -> Tensor:
    """Mean token cross-entropy: logits (N, T, V) predict tokens (N, T); <pad> is ignored."""
    return F.cross_entropy(
        logits.flatten(0, 1),
        tokens.flatten(),
        ignore_index=Vocab.pad_id,
        label_smoothing=label_smoothing,
    )


@register_task("mle")
class MLETask(CaptionTask):
    def training_step(self, batch: CaptionBatch, batch_index: int) -> Tensor:
        enc = self.encode(batch)  # each image once, for all its captions
        out = self.model.decoder(enc, batch.tokens[:, :-1])
        loss = caption_cross_entropy(
            out.logits, batch.tokens[:, 1:], self.config.optim.label_smoothing
        )
        self.log("train/xe", loss, prog_bar=True)
        if out.aux_loss is not None:
            self.log("train/aux", out.aux_loss)
            loss = loss + out.aux_loss
        check_finite("loss", loss)
        return loss
