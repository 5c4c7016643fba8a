"""Train a small CLIP on a captioning dataset, saved in Hugging Face CLIP format.

CLIP (Radford et al. 2021): an image tower and a text tower, each followed by a linear
projection into a shared space, trained with the symmetric InfoNCE loss at a learned
temperature. On the scenes world we train one from scratch (a small ResNet image tower, or a
ViT, sized for 96-px images, and a 4-layer text transformer) on the world's detailed
descriptions and reference captions; on a real dataset `init` fine-tunes a pretrained Hugging
Face CLIP instead.

The result is an ordinary `CLIPModel` (or, with a ResNet image tower, a
`finecap.clip.conv_clip.ConvClipModel`) + `CLIPTokenizer` + `CLIPImageProcessor` folder, so the
evaluation suite, the rewards and the grammar head load it through `finecap.clip.embed.load_clip`
exactly like `openai/clip-vit-base-patch32`. The tokenizer (`finecap.clip.tokenizer`) is a
byte-level BPE in CLIP's own format learned on the dataset's text; the examples, their hard
negatives and augmentation are `finecap.clip.data`; the dense scene supervision that makes the
vision tower see shapes is `finecap.clip.dense`.

Why descriptions: the scenes world's reference captions are generic ("one black triangle");
its descriptions name every object, attribute and relation ("a small black dotted triangle and
a small red dotted hexagon on water. the red hexagon is above the black triangle."). A CLIP
trained mostly on descriptions retrieves an image far better from a detailed text than from a
generic one, which is the gap CLIP-guided RL exploits. `clip_eval.json` measures it on the
test split.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPTokenizer, PreTrainedModel

from finecap.clip.config import CLIP_PROMPT, ClipTrainConfig, ScenesClipConfig
from finecap.clip.data import ImageTextPairs, RecordPixels, descriptions_of, shift
from finecap.clip.dense import (
    IGNORE,
    BagHead,
    DenseHeads,
    FactTarget,
    PositionHead,
    RelationHead,
    objectness_loss,
)
from finecap.clip.tokenizer import learn_bpe_merges, save_tokenizer, train_bpe_tokenizer
from finecap.clip.towers import (
    build_image_processor,
    build_scenes_clip,
    encode_pixels,
    encode_texts,
    patch_tokens,
    pooled_texts,
    vision_grid,
)
from finecap.data.formats import ImageRecord, load_corpus
from finecap.io import atomic_write_text
from finecap.train.lightning import make_trainer, quiet_lightning, warmup_cosine_schedule

# Re-exported: the data, tokenizer and towers lived here before they had their own modules.
__all__ = [
    "CLIP_PROMPT",
    "ClipTrainConfig",
    "ImageTextPairs",
    "RecordPixels",
    "ScenesClipConfig",
    "build_image_processor",
    "build_scenes_clip",
    "clip_loss",
    "descriptions_of",
    "encode_pixels",
    "encode_texts",
    "learn_bpe_merges",
    "patch_tokens",
    "pooled_texts",
    "save_tokenizer",
    "shift",
    "text_gap_loss",
    "train_bpe_tokenizer",
    "train_clip",
    "vision_grid",
]


def clip_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: torch.Tensor,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched (image, text) pairs, (B, P) each.

    `negatives` (M, P): extra texts that match no image (NegCLIP's hard negatives); they join
    every image's candidate texts, so image -> text picks among B + M texts.
    """
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * txt @ img.T  # (B_text, B_image)
    target = torch.arange(len(img), device=img.device)
    image_to_text = logits.T  # (B_image, B_text)
    if negatives is not None and len(negatives):
        image_to_text = torch.cat([image_to_text, scale * img @ negatives.T], dim=1)  # (B, B+M)
    return (F.cross_entropy(logits, target) + F.cross_entropy(image_to_text, target)) / 2


def pair_loss(
    img: torch.Tensor, txt: torch.Tensor, negatives: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of each image (M, P) choosing its true text (M, P) over its own hard
    negative (M, P): the probe's two-way question, at the contrastive temperature."""
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * torch.stack([(img * txt).sum(-1), (img * negatives).sum(-1)], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(img), dtype=torch.long, device=img.device))


def text_gap_loss(txt: torch.Tensor, negatives: torch.Tensor, max_cos: float) -> torch.Tensor:
    """Mean hinge max(0, cos(text, its negative) - max_cos) over the pairs (M, P) each,
    unit vectors: the text tower parts a text from the same text with one fact changed."""
    return F.relu((txt * negatives).sum(-1) - max_cos).mean()


class ClipTask(L.LightningModule):
    """CLIP contrastive training: model + loss + the AdamW/cosine schedule."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: CLIPTokenizer, cfg: ClipTrainConfig, lr: float
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.cfg, self.lr = model, tokenizer, cfg, lr
        width = model.config.vision_config.hidden_size
        self.dense = DenseHeads(width) if cfg.dense_weight > 0 else None
        self.bag = BagHead(width) if cfg.bag_weight > 0 else None
        self.position = PositionHead(width) if cfg.position_weight > 0 else None
        shared = model.config.projection_dim  # the relation head reads both towers' embeddings
        self.relation = RelationHead(shared) if cfg.relation_weight > 0 else None
        self.facts = FactTarget(shared, cfg.fact_position_weight) if cfg.fact_weight > 0 else None

    def on_train_epoch_start(self) -> None:
        self.trainer.train_dataloader.dataset.set_epoch(self.current_epoch)

    def training_step(
        self, batch: tuple[torch.Tensor, list[str], list[str], dict], batch_idx: int
    ) -> torch.Tensor:
        pixels, texts, negatives, labels = batch
        has_negative = torch.tensor([bool(t) for t in negatives], device=pixels.device)
        negatives = [t for t in negatives if t]
        vision = self.model.vision_model(pixel_values=pixels)
        img = F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)  # (B, P)
        # Positives and hard negatives through the text tower together: (B + M, P).
        both = encode_texts(self.model, self.tokenizer, [*texts, *negatives])
        txt, neg = both[: len(texts)], both[len(texts) :]
        loss = clip_loss(img, txt, self.model.logit_scale, neg)
        batch_size = len(pixels)
        if self.dense is not None:
            patches = patch_tokens(vision.last_hidden_state)  # (B, N, H)
            dense = self.dense.loss(patches, labels["patches"])
            pool = getattr(self.model.vision_model, "pooler", None)  # a ViT has none
            gate = getattr(pool, "gate_logits", None)
            if gate is not None and (labels["patches"][..., 0] != IGNORE).any():
                # A gated pool learns where the objects are, too.
                dense = dense + objectness_loss(gate(vision.last_hidden_state), labels["patches"])
            self.log("dense", dense, prog_bar=True, on_epoch=True, batch_size=batch_size)
            loss = loss + self.cfg.dense_weight * dense
        if self.bag is not None and (labels["bag"][:, 0] != IGNORE).any():
            bag = self.bag.loss(vision.pooler_output, labels["bag"])
            self.log("bag", bag, prog_bar=True, on_epoch=True, batch_size=batch_size)
            loss = loss + self.cfg.bag_weight * bag
        if self.position is not None and (labels["position"][:, 0, 0] != IGNORE).any():
            position = self.position.loss(vision.pooler_output, labels["position"])
            self.log("position", position, prog_bar=True, on_epoch=True, batch_size=batch_size)
            loss = loss + self.cfg.position_weight * position
        if self.relation is not None:
            relation = self._relation_loss(img, txt, neg, has_negative, labels)
            if not relation.isnan():  # nan: no scene in the batch
                self.log("relation", relation, prog_bar=True, on_epoch=True, batch_size=batch_size)
                loss = loss + self.cfg.relation_weight * relation
        if self.facts is not None:
            facts = self.facts.loss(img, labels["bag"], labels["position"])
            if not facts.isnan():  # nan: no scene in the batch
                self.log("facts", facts, prog_bar=True, on_epoch=True, batch_size=batch_size)
                loss = loss + self.cfg.fact_weight * facts
        if self.cfg.pair_weight > 0 and len(neg):
            pair = pair_loss(img[has_negative], txt[has_negative], neg, self.model.logit_scale)
            self.log("pair", pair, prog_bar=True, on_epoch=True, batch_size=batch_size)
            loss = loss + self.cfg.pair_weight * pair
        if self.cfg.text_gap_weight > 0 and len(neg):
            gap = text_gap_loss(txt[has_negative], neg, self.cfg.text_gap_cos)
            self.log("text_gap", gap, prog_bar=True, on_epoch=True, batch_size=batch_size)
            loss = loss + self.cfg.text_gap_weight * gap
        self.log("loss", loss, prog_bar=True, on_epoch=True, batch_size=batch_size)
        self.log("scale", self.model.logit_scale.exp(), prog_bar=True, batch_size=batch_size)
        return loss

    def _relation_loss(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        neg: torch.Tensor,
        has_negative: torch.Tensor,
        labels: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """The relation head's mean cross-entropy over the image embeddings (B, P), the texts'
        (B, P) and the hard negatives' (M, P), each against its own relation labels."""
        terms = [
            self.relation.loss(img, labels["relation"]),
            self.relation.loss(txt, labels["text_relation"]),
            self.relation.loss(neg, labels["negative_relation"][has_negative]),
        ]
        return torch.stack(terms).nanmean()

    def configure_optimizers(self):
        named = list(self.named_parameters())  # the CLIP and the dense heads, if any
        decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
        rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.cfg.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
        return {"optimizer": opt, "lr_scheduler": fraction_schedule(self, opt)}


def fraction_schedule(task: L.LightningModule, opt: torch.optim.Optimizer) -> dict:
    """finecap's warm-up + cosine schedule (to 0), warming up over `task.cfg.warmup_frac`."""
    total = max(1, int(task.trainer.estimated_stepping_batches))
    return warmup_cosine_schedule(opt, max(1, int(task.cfg.warmup_frac * total)), total)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def retrieval_eval(
    model: PreTrainedModel,
    tokenizer: CLIPTokenizer,
    pixels: RecordPixels,
    records: list[ImageRecord],
) -> dict[str, dict[str, float]]:
    """Text-to-image retrieval on held-out images with the first description vs first reference.

    No prompt, one text per image, N x N cosine matrix: Cho et al.'s protocol, computed by
    the evaluation suite's own `finecap.metrics.retrieval` (R@k fractions, MedR 1-based).
    """
    from finecap.metrics.retrieval import retrieval_scores

    model.eval()
    img = torch.cat([encode_pixels(model, p) for p in pixels.batches()])
    queries = {
        "description": [(descriptions_of(r) or r.captions)[0] for r in records],
        "reference": [r.captions[0] for r in records],
    }
    out = {}
    for name, texts in queries.items():
        txt = torch.cat(
            [encode_texts(model, tokenizer, texts[i : i + 256]) for i in range(0, len(texts), 256)]
        )
        out[name] = retrieval_scores(txt, img)
    return out


def scenes_probe(model, tokenizer, processor, corpus, records) -> dict | None:  # noqa: ANN001
    """The attribute-binding probe (`finecap.clip.probe`) on held-out scenes, if they have
    scenes; None otherwise."""
    from finecap.clip.embed import ClipBundle, ClipEmbedder
    from finecap.clip.probe import probe_scenes

    if not any("scene" in r.extra for r in records):
        return None
    bundle = ClipBundle(model.eval(), tokenizer, processor, name="(training)", fingerprint="")
    return probe_scenes(ClipEmbedder(bundle), corpus, records)


# --------------------------------------------------------------------------- entry point


def loader_and_trainer(data: Dataset, cfg) -> tuple[DataLoader, L.Trainer]:  # noqa: ANN001
    """Seeded shuffled batches and finecap's log-free trainer, for CLIP and grammar training."""
    loader = DataLoader(
        data,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(data) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return loader, make_trainer(cfg.trainer, cfg.epochs)


def train_clip(
    dataset: str | Path,
    out_dir: str | Path,
    arch: ScenesClipConfig | None = None,
    cfg: ClipTrainConfig | None = None,
    init: str | None = None,
) -> dict:
    """Train (or, with `init`, fine-tune) a CLIP on `dataset`'s train split; save it to `out_dir`.

    Returns the evaluation written to `out_dir/clip_eval.json`.
    """
    arch, cfg = arch or ScenesClipConfig(), cfg or ClipTrainConfig()
    L.seed_everything(cfg.seed, verbose=False)
    corpus = load_corpus(dataset)
    train_records = corpus.split("train")
    eval_records = [r for r in corpus.split(cfg.eval_split) if r.captions]
    if not train_records:
        raise ValueError(f"{dataset}: no training images")

    started = time.perf_counter()
    if init is None:
        texts = [t for r in train_records for t in [*descriptions_of(r), *r.captions]]
        tokenizer = train_bpe_tokenizer(
            texts + [CLIP_PROMPT], arch.bpe_vocab_size, arch.max_text_length
        )
        model = build_scenes_clip(arch, tokenizer)
        processor = build_image_processor(arch.image_size)
    else:
        from finecap.clip.embed import load_clip

        bundle = load_clip(init)
        model, tokenizer, processor = bundle.model, bundle.tokenizer, bundle.image_processor
    train_pixels = RecordPixels(corpus, train_records, processor)
    eval_pixels = RecordPixels(corpus, eval_records, processor)
    prep_s = time.perf_counter() - started

    grid = vision_grid(model.config.vision_config) if cfg.dense_weight > 0 else None
    data = ImageTextPairs(train_pixels, train_records, cfg, grid)
    loader, trainer = loader_and_trainer(data, cfg)
    started, cpu_started = time.perf_counter(), time.process_time()
    with quiet_lightning():
        trainer.fit(ClipTask(model, tokenizer, cfg, cfg.learning_rate(init is not None)), loader)
    train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if init is None:
        save_tokenizer(tokenizer, out)
    else:
        tokenizer.save_pretrained(out)
    processor.save_pretrained(out)

    result = {
        "dataset": str(dataset),
        "init": init,
        "eval_split": cfg.eval_split,
        "n_train": len(train_records),
        "n_eval": len(eval_records),
        "retrieval": retrieval_eval(model.cpu(), tokenizer, eval_pixels, eval_records),
        "probe": scenes_probe(model, tokenizer, processor, corpus, eval_records),
        "logit_scale": round(model.logit_scale.exp().item(), 3),
        "preprocess_seconds": round(prep_s, 1),
        "train_seconds": round(train_s, 1),
        "train_cpu_seconds": round(train_cpu_s, 1),  # all threads; the machine may be shared
        "torch_threads": torch.get_num_threads(),
        "arch": arch.to_dict() if init is None else None,
        "train": cfg.to_dict(),
    }
    atomic_write_text(out / "clip_eval.json", json.dumps(result, indent=2) + "\n")
    return result
