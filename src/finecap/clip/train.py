"""Train a small CLIP on a captioning dataset, saved in Hugging Face CLIP format.

CLIP (Radford et al. 2021): an image tower and a text tower, each followed by a linear
projection into a shared space, trained with the symmetric InfoNCE loss at a learned
temperature. On the scenes world we train one from scratch (a ViT sized for 96-px images and
a 4-layer text transformer) on the world's detailed descriptions and reference captions; on a
real dataset `init` fine-tunes a pretrained Hugging Face CLIP instead.

The result is an ordinary `CLIPModel` + `CLIPTokenizer` + `CLIPImageProcessor` folder, so the
evaluation suite, the rewards and the grammar head load it through `finecap.clip.embed.load_clip`
exactly like `openai/clip-vit-base-patch32`. The tokenizer is a byte-level BPE in CLIP's own
format (vocab.json + merges.txt, `</w>` word ends, all 256 bytes in the vocabulary), learned on
the dataset's text: any word, seen or not, tokenizes without an unknown token.

Why descriptions: the scenes world's reference captions are generic ("one black triangle");
its descriptions name every object, attribute and relation ("a small black dotted triangle and
a small red dotted hexagon on water. the red hexagon is above the black triangle."). A CLIP
trained mostly on descriptions retrieves an image far better from a detailed text than from a
generic one, which is the gap CLIP-guided RL exploits. `clip_eval.json` measures it on the
test split.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from tokenizers import pre_tokenizers
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from finecap.clip.config import CLIP_PROMPT, ClipTrainConfig, ScenesClipConfig
from finecap.clip.dense import ATTRIBUTES, DenseHeads, patch_labels
from finecap.data.formats import CaptionCorpus, ImageRecord, load_corpus
from finecap.data.images import load_image
from finecap.io import atomic_write_text
from finecap.scenes.changes import changed_texts, short_description
from finecap.scenes.language import describe_scene, mirror_text
from finecap.scenes.world import Scene, as_scene, mirror_scene
from finecap.train.lightning import make_trainer, quiet_lightning, warmup_cosine_schedule

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


# --------------------------------------------------------------------------- tokenizer


def train_bpe_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> CLIPTokenizer:
    """Learn BPE merges on `texts` with CLIP's normalizer/pre-tokenizer; return a CLIPTokenizer.

    The vocabulary is laid out like OpenAI's: 256 byte symbols, the same with `</w>`, one
    entry per merge, then BOS and EOS (EOS doubles as padding, as in OpenAI's tokenizer).
    """
    reference = CLIPTokenizer()  # empty; lends us CLIP's exact normalizer and pre-tokenizer
    normalizer = reference.backend_tokenizer.normalizer
    pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    words: Counter[str] = Counter()
    for text in texts:
        words.update(p for p, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    n_merges = max(0, vocab_size - 2 * len(byte_symbols) - 2)
    merges = learn_bpe_merges(words, n_merges)
    symbols = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab: dict[str, int] = {}
    for s in [*symbols, BOS, EOS]:
        vocab.setdefault(s, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def learn_bpe_merges(
    words: Counter[str], n_merges: int, min_count: int = 2
) -> list[tuple[str, str]]:
    """Classic BPE (Sennrich et al. 2016) over a word-frequency table, `</w>` marking word ends.

    Deterministic: ties go to the lexicographically smallest pair (the `tokenizers` trainer
    breaks ties by hash order, so its merges change from run to run). Plain Python is enough
    here: a captioning vocabulary has a few thousand distinct words at most.
    """
    split = {w: (*w[:-1], w[-1] + "</w>") for w in words}  # word -> current symbols
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, symbols in split.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < min_count:
            break
        merges.append(best)
        joined = best[0] + best[1]
        for w, symbols in split.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i : i + 2] == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            split[w] = tuple(out)
    return merges


def save_tokenizer(tokenizer: CLIPTokenizer, out_dir: Path) -> None:
    """save_pretrained, plus OpenAI-style vocab.json + merges.txt for older transformers."""
    tokenizer.save_pretrained(out_dir)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    atomic_write_text(out_dir / "vocab.json", json.dumps(model["vocab"], ensure_ascii=False))
    atomic_write_text(out_dir / "merges.txt", "\n".join(["#version: 0.2", *merges]) + "\n")


# --------------------------------------------------------------------------- model


def build_scenes_clip(cfg: ScenesClipConfig, tokenizer: CLIPTokenizer) -> CLIPModel:
    """A randomly initialised CLIPModel whose text config agrees with `tokenizer`.

    `eos_token_id` must be the tokenizer's EOS id: Hugging Face CLIP pools the text at the
    first EOS position (any id but the legacy value 2).
    """
    assert tokenizer.eos_token_id != 2, "id 2 selects HF CLIP's legacy argmax pooling"
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=4 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_text_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=cfg.hidden,
        intermediate_size=4 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)
    return CLIPModel(config)


def build_image_processor(image_size: int):
    """CLIP's preprocessing (resize, centre crop, CLIP mean/std) at `image_size`."""
    try:  # transformers 5 without torchvision: the PIL processor (same numbers, no warning)
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4
        Processor = CLIPImageProcessor
    return Processor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def pooled_texts(
    model: CLIPModel, tokenizer: CLIPTokenizer, texts: list[str], buckets: int = 4
) -> torch.Tensor:
    """Text tower pooled outputs (N, text_hidden), at the EOS position, in input order.

    Texts are sorted by length and run in `buckets` groups, so a few long descriptions do not
    pad every short caption of the batch to their length (~2-3x less work on mixed batches).
    """
    device = model.logit_scale.device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    size = max(1, -(-len(texts) // buckets))
    parts = []
    for start in range(0, len(order), size):
        chunk = [texts[i] for i in order[start : start + size]]
        enc = tokenizer(chunk, padding=True, truncation=True, return_tensors="pt").to(device)
        parts.append(model.text_model(**enc).pooler_output)
    pooled = torch.cat(parts)  # (N, text_hidden) in sorted order
    return pooled[torch.argsort(torch.tensor(order, device=device))]


def encode_texts(model: CLIPModel, tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """Projected, L2-normalised text features (N, P); gradients flow when enabled."""
    pooled = pooled_texts(model, tokenizer, texts)  # (N, text_hidden)
    return F.normalize(model.text_projection(pooled), dim=-1)


def encode_pixels(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """Projected, L2-normalised image features (N, P) from preprocessed pixels (N, 3, S, S)."""
    pooled = model.vision_model(pixel_values=pixels.to(model.logit_scale.device)).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)


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


# --------------------------------------------------------------------------- data


class RecordPixels:
    """Preprocessed pixels of `records`, index -> (3, S, S) float32.

    Small sets (the scenes world: 4,000 images at 96 px = 221 MB in float16) are decoded and
    preprocessed once and kept; larger ones (COCO at 224 px) are loaded lazily per item.
    """

    def __init__(
        self,
        corpus: CaptionCorpus,
        records: list[ImageRecord],
        processor,
        cache_limit_bytes: int = 2 << 30,
    ) -> None:
        self.corpus, self.records, self.processor = corpus, records, processor
        self.cached: torch.Tensor | None = None  # (N, 3, S, S) float16
        side = _processor_side(processor)
        if len(records) * 3 * side * side * 2 <= cache_limit_bytes:
            self.cached = torch.cat([chunk.half() for chunk in self.batches()])

    def _load(self, indices) -> torch.Tensor:
        images = [load_image(self.corpus.image_path(self.records[i])) for i in indices]
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[i].float()
        return self._load([i])[0]

    def batches(self, size: int = 256):
        """(<=size, 3, S, S) float32 chunks in order."""
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            if self.cached is not None:
                yield self.cached[start:stop].float()
            else:
                yield self._load(range(start, stop))


def _processor_side(processor) -> int:
    crop = getattr(processor, "crop_size", None) or {}
    size = getattr(processor, "size", None) or {}
    return int(crop.get("height") or size.get("shortest_edge") or size.get("height") or 224)


def descriptions_of(record: ImageRecord) -> list[str]:
    return [d for d in record.extra.get("descriptions", []) if d]


class ImageTextPairs(Dataset):
    """One (pixels, text, hard negative, patch labels) per image; the texts are re-drawn
    every epoch (`set_epoch`). The negative is "" when none was drawn (see
    `ClipTrainConfig`); the labels (N, A) are `finecap.clip.dense.patch_labels` of a `grid` x
    `grid` patch layout, or (0, A) without `grid`."""

    def __init__(
        self,
        pixels: RecordPixels,
        records: list[ImageRecord],
        cfg: ClipTrainConfig,
        grid: int | None = None,
    ):
        self.pixels, self.records, self.cfg, self.grid = pixels, records, cfg, grid
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, str, torch.Tensor]:
        rng = random.Random(self.cfg.seed * 1_000_003 + self.epoch * 100_003 + i)
        record = self.records[i]
        pixels = self.pixels[i]
        scene = record.extra.get("scene")
        descriptions = descriptions_of(record)
        refs = [c for c in record.captions if c]
        if scene is not None and rng.random() < self.cfg.flip_prob:
            pixels, scene = pixels.flip(-1), mirror_scene(scene)
            descriptions, refs = describe_scene(scene), [mirror_text(c) for c in refs]
        dx = dy = 0
        if self.cfg.max_shift and pixels is not None:
            most = self.cfg.max_shift
            dx, dy = rng.randint(-most, most), rng.randint(-most, most)
            pixels = shift(pixels, dx, dy, most)
        labels = torch.empty(0, len(ATTRIBUTES), dtype=torch.long)
        if self.grid is not None:
            side = pixels.shape[-1]
            labels = patch_labels(scene and as_scene(scene), self.grid, side, (-dx, -dy))
        negative = ""
        if descriptions and (not refs or rng.random() < self.cfg.description_prob):
            text, negative = self._description(rng, scene, descriptions)
        else:
            text = rng.choice(refs)
        if rng.random() < self.cfg.prompt_prob:
            text = CLIP_PROMPT + text
            negative = CLIP_PROMPT + negative if negative else ""
        return pixels, text, negative, labels

    def _description(
        self, rng: random.Random, scene: dict | Scene | None, descriptions: list[str]
    ) -> tuple[str, str]:
        """A detailed (or short) description and, maybe, its one-fact-changed negative."""
        register = "short" if scene and rng.random() < self.cfg.short_prob else "description"
        variant = rng.randrange(len(descriptions))
        if scene is None or rng.random() >= self.cfg.hard_negative_prob:
            if register == "short":
                return short_description(scene), ""
            return descriptions[variant], ""
        kinds = list(self.cfg.hard_negative_kinds)
        rng.shuffle(kinds)
        for kind in kinds:  # the first kind this scene can take in this register
            texts = changed_texts(scene, kind, rng, register=register, variant=variant)
            if texts is not None:
                return texts
        return (short_description(scene) if register == "short" else descriptions[variant]), ""


def shift(pixels: torch.Tensor, dx: int, dy: int, most: int) -> torch.Tensor:
    """(3, S, S) with its content moved by (-dx, -dy) pixels (|dx|, |dy| <= most), the edge
    pixels repeated."""
    padded = F.pad(pixels[None], (most, most, most, most), mode="replicate")[0]
    side_y, side_x = pixels.shape[-2:]
    return padded[:, most + dy : most + dy + side_y, most + dx : most + dx + side_x]


class ClipTask(L.LightningModule):
    """CLIP contrastive training: model + loss + the AdamW/cosine schedule."""

    def __init__(
        self, model: CLIPModel, tokenizer: CLIPTokenizer, cfg: ClipTrainConfig, lr: float
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.cfg, self.lr = model, tokenizer, cfg, lr
        width = model.config.vision_config.hidden_size
        self.dense = DenseHeads(width) if cfg.dense_weight > 0 else None

    def on_train_epoch_start(self) -> None:
        self.trainer.train_dataloader.dataset.set_epoch(self.current_epoch)

    def training_step(
        self, batch: tuple[torch.Tensor, list[str], list[str]], batch_idx: int
    ) -> torch.Tensor:
        pixels, texts, negatives, labels = batch
        negatives = [t for t in negatives if t]
        vision = self.model.vision_model(pixel_values=pixels)
        img = F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)  # (B, P)
        # Positives and hard negatives through the text tower together: (B + M, P).
        both = encode_texts(self.model, self.tokenizer, [*texts, *negatives])
        txt, neg = both[: len(texts)], both[len(texts) :]
        loss = clip_loss(img, txt, self.model.logit_scale, neg)
        if self.dense is not None:
            patches = vision.last_hidden_state[:, 1:]  # (B, N, H): [CLS] dropped
            dense = self.dense.loss(patches, labels)
            self.log("dense", dense, prog_bar=True, on_epoch=True, batch_size=len(pixels))
            loss = loss + self.cfg.dense_weight * dense
        self.log("loss", loss, prog_bar=True, on_epoch=True, batch_size=len(pixels))
        self.log("scale", self.model.logit_scale.exp(), prog_bar=True, batch_size=len(pixels))
        return loss

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
    model: CLIPModel, tokenizer: CLIPTokenizer, pixels: RecordPixels, records: list[ImageRecord]
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

    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size if cfg.dense_weight > 0 else None
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
