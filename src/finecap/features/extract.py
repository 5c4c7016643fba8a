"""`finecap features extract`: a frozen encoder's features and CLIP image embeddings of every
image of a dataset, into a feature store (`finecap.features.store` has the layout).

    extract(ExtractConfig(config="coco_clipvit_b32_transformer", out="features/coco"))
    extract(ExtractConfig(model="runs/mle/model", dataset="data/coco/dataset_coco.json",
                          clip=["openai/clip-vit-base-patch32"], out="features/coco",
                          dtype="float16"))

What is extracted: the encoder of `model` (a captioner folder) or else of the recipe `config`
(built as `finecap train` builds it: the same seed, so a random frozen encoder matches too),
and the image embeddings of every CLIP named by `clip` or by the recipe's reward terms.

Work is split in shards of `shard_size` consecutive images, each written atomically, so a
rerun after a kill keeps the complete shards and redoes the one that was being written.
`shard="i/n"` does shards k with k % n == i: n processes (or machines, on one shared folder
or copied together afterwards) do the work in parallel. Whichever part finds every shard
done writes the index (the merge); `merge=True` only merges, saying which shards are missing.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import field_validator
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from finecap.config import NonNegativeInt, PathStr, PositiveInt, Settings
from finecap.features.store import (
    FORMAT,
    INDEX,
    PLAN,
    SHARDS,
    StoreError,
    clip_fingerprint,
    complete_shard,
    encoder_fingerprint,
    frozen_only,
    frozen_throughout,
    plan_hash,
    read_header,
    shard_name,
    write_shard,
)
from finecap.io import FolderLock, atomic_write_text


class ExtractConfig(Settings):
    """What to extract, from which images, into which store."""

    out: PathStr
    """The store folder (made if absent; an unfinished one with the same plan is resumed)."""
    config: PathStr | None = None
    """Training recipe (file or shipped name): its encoder (`model.encoder`), dataset and
    image root, and the CLIPs of its reward terms."""
    model: PathStr | None = None
    """Captioner folder whose encoder is extracted (instead of the recipe's model)."""
    dataset: PathStr | None = None
    """Dataset file (default: the recipe's data.dataset)."""
    images: PathStr | None = None
    """Image root (default: the recipe's data.image_root, else the dataset's folder)."""
    allow_outside_root: bool = False
    """Read image paths that lead outside the image root."""
    split: list[str] = []
    """Splits to extract (repeatable; default: every image of the dataset)."""
    clip: list[str] = []
    """Further CLIPs (hub name or folder) whose image embeddings to store (repeatable)."""
    shard_size: PositiveInt = 1024
    """Images per shard file (1,024 x 49 x 2048 float16 regions = 205 MB)."""
    shard: str | None = None
    """Do part i of n ("i/n", i from 0): shards k with k % n == i, for n parallel processes."""
    dtype: Literal["float32", "float16"] = "float32"
    """Storage type of the regions and pooled features (float16 halves the disk; CLIP
    embeddings stay float32)."""
    batch_size: PositiveInt = 32
    """Images encoded together."""
    workers: NonNegativeInt = 0
    """DataLoader processes decoding and preprocessing images (0: in this process)."""
    device: str = "cpu"
    """Where the encoder and CLIPs run (cpu, cuda, ...)."""
    merge: bool = False
    """Only write the index from the shards there (after every --shard part finished)."""

    @field_validator("shard")
    @classmethod
    def _part(cls, value: str | None) -> str | None:
        if value is not None:
            match = re.fullmatch(r"(\d+)/(\d+)", value.strip())
            if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
                raise ValueError(f"expected i/n with 0 <= i < n (e.g. 0/4), got {value!r}")
        return value

    def part(self) -> tuple[int, int]:
        """(i, n): this process's part of the work."""
        if self.shard is None:
            return 0, 1
        i, n = self.shard.split("/")
        return int(i), int(n)


@dataclass
class Sources:
    """The images and the models to run over them."""

    corpus: Any  # finecap.data.formats.CaptionCorpus
    records: list  # ImageRecord, in the plan's order
    encoder: Any | None  # a frozen finecap.models.Encoder, or None (CLIP embeddings only)
    clips: dict[str, Any]  # store key -> finecap.clip.ClipBundle
    splits: list[str]


def _recipe_clips(recipe: Any) -> list[str]:
    """CLIPs the recipe's reward terms score with (a grammar-sourced CLIP-S: the grammar
    model, a Hugging Face CLIP whose vision tower is the base CLIP's)."""
    from finecap.rewards.clip_rewards import ClipRewardConfig, ClipSConfig
    from finecap.rewards.grammar import GrammarRewardConfig

    terms = recipe.scst.rewards if recipe is not None and recipe.scst else []
    names = [str(t.clip) for t in terms if isinstance(t, ClipRewardConfig) and t.clip]
    if any(isinstance(t, ClipSConfig) and t.clip_from == "grammar" for t in terms):
        names += [str(t.model) for t in terms if isinstance(t, GrammarRewardConfig) and t.model]
    return names


def _encoder(cfg: ExtractConfig, recipe: Any) -> Any | None:
    from finecap.captioner import Captioner
    from finecap.models import create_encoder

    if cfg.model is not None:
        encoder, what = (
            Captioner.from_pretrained(cfg.model).model.encoder,
            f"the encoder of {cfg.model}",
        )
    elif recipe is not None and recipe.model is not None:
        import lightning as L

        # `finecap train` seeds before it builds the model, encoder first: the same weights.
        L.seed_everything(recipe.seed, verbose=False)
        encoder, what = create_encoder(recipe.model.encoder), f"the encoder of {cfg.config}"
    elif recipe is not None and cfg.config is not None and recipe.task == "scst":
        raise StoreError(
            f"{cfg.config} trains from --init MODEL (no model: section): pass --model MODEL "
            "for its encoder's features"
        )
    else:
        return None
    if not frozen_throughout(encoder.config):
        raise StoreError(frozen_only(what))
    return encoder.eval().to(cfg.device)


def resolve_sources(cfg: ExtractConfig) -> Sources:
    """Load the dataset, the encoder and the CLIPs, checked before anything is written."""
    from finecap.clip.embed import load_clip
    from finecap.data.formats import load_corpus
    from finecap.train.config import load_config

    recipe = load_config(cfg.config) if cfg.config else None
    dataset = cfg.dataset or (recipe.data.dataset if recipe else None)
    if dataset is None:
        raise StoreError("give --dataset (or --config RECIPE, whose data.dataset is used)")
    root = cfg.images or (recipe.data.image_root if recipe else None)
    fmt = recipe.data.format if recipe and not cfg.dataset else None
    corpus = load_corpus(
        dataset, fmt=fmt, image_root=root, allow_outside_root=cfg.allow_outside_root
    )
    splits = list(cfg.split)
    records = [r for s in splits for r in corpus.split(s)] if splits else list(corpus.images)
    empty = [s for s in splits if not corpus.split(s)]
    if empty or not records:
        raise StoreError(f"{dataset}: no images in split {', '.join(empty) or '(any)'}")
    encoder = _encoder(cfg, recipe)
    clips: dict[str, Any] = {}
    for name in dict.fromkeys([*cfg.clip, *_recipe_clips(recipe)]):
        bundle = load_clip(name, device=cfg.device)
        clips.setdefault(clip_fingerprint(bundle), bundle)  # one CLIP, one key
    if encoder is None and not clips:
        raise StoreError(
            "nothing to extract: give --config RECIPE or --model MODEL (encoder features) "
            "and/or --clip CLIP (image embeddings)"
        )
    return Sources(corpus, records, encoder, clips, splits)


def make_plan(cfg: ExtractConfig, sources: Sources) -> dict:
    """What the store holds; its hash (paths left out) is the same on every machine."""
    encoder = encoder_fingerprint(sources.encoder) if sources.encoder is not None else None
    return {
        "format": FORMAT,
        "dataset": Path(str(sources.corpus.source or cfg.dataset or "")).name,
        "splits": sources.splits or "all",
        "image_ids": [r.image_id for r in sources.records],
        "shard_size": cfg.shard_size,
        "dtype": cfg.dtype,
        "encoder": encoder,
        "clips": {k: {"name": b.name, "fingerprint": k} for k, b in sources.clips.items()},
    }


def plan_id(plan: dict) -> str:
    encoder = plan["encoder"]["hash"] if plan["encoder"] else None
    keys = ("format", "image_ids", "shard_size", "dtype")
    return plan_hash(
        {**{k: plan[k] for k in keys}, "encoder": encoder, "clips": sorted(plan["clips"])}
    )


def _start(folder: Path, plan: dict) -> None:
    """Write plan.json, or check that the folder's plan is this one."""
    path = folder / PLAN
    if path.is_file():
        try:
            held = json.loads(path.read_text(encoding="utf-8"))
            same = plan_id(held) == plan_id(plan)
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if not same:
            raise StoreError(
                f"{folder}: holds (part of) a store of other images, encoder, CLIPs, dtype or "
                "shard size; use a new --out (or delete it)"
            )
        return
    atomic_write_text(path, json.dumps(plan) + "\n")


class _ShardImages(Dataset):
    """(preprocessed pixels or None, RGB image) per record (decoded in loader workers)."""

    def __init__(self, corpus: Any, records: list, preprocess: Callable | None) -> None:
        self.corpus, self.records, self.preprocess = corpus, records, preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, Any]:
        from finecap.data.images import load_image

        image = load_image(self.corpus.image_path(self.records[i]))
        pixels = self.preprocess([image])[0] if self.preprocess is not None else None
        return pixels, image


def _collate(items: list) -> tuple[torch.Tensor | None, list]:
    pixels = [p for p, _ in items]
    return (torch.stack(pixels) if pixels[0] is not None else None), [im for _, im in items]


@torch.inference_mode()
def extract_shard(cfg: ExtractConfig, sources: Sources, records: list, bar: tqdm) -> dict:
    """The arrays of one shard: regions (N, R, D), pooled (N, D), clip/KEY (N, P)."""
    from finecap.clip.embed import ClipEmbedder

    encoder = sources.encoder
    loader = DataLoader(
        _ShardImages(sources.corpus, records, encoder.preprocess if encoder else None),
        cfg.batch_size,
        num_workers=cfg.workers,
        collate_fn=_collate,
    )
    embedders = {k: ClipEmbedder(b, cfg.batch_size) for k, b in sources.clips.items()}
    parts: dict[str, list[np.ndarray]] = {}
    for pixels, images in loader:
        batch: dict[str, torch.Tensor] = {}
        if encoder is not None:
            regions = encoder.backbone(pixels.to(cfg.device))  # (B, R, D)
            batch["regions"] = regions
            batch["pooled"] = encoder.encode_features(regions).pooled  # (B, D)
        for key, embedder in embedders.items():
            batch[f"clip/{key}"] = embedder.embed_images(images)  # (B, P) unit rows
        for name, values in batch.items():
            dtype = np.float32 if name.startswith("clip/") else np.dtype(cfg.dtype)
            parts.setdefault(name, []).append(values.float().cpu().numpy().astype(dtype))
        bar.update(len(images))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def merge(folder: Path) -> list[int]:
    """Write index.json if every shard of the plan is complete; returns the missing shards."""
    plan = json.loads((folder / PLAN).read_text(encoding="utf-8"))
    ids, size = plan["image_ids"], plan["shard_size"]
    pid = plan_id(plan)
    n = math.ceil(len(ids) / size)
    shard_ids = [ids[k * size : (k + 1) * size] for k in range(n)]
    missing = [
        k
        for k in range(n)
        if not complete_shard(folder / SHARDS / shard_name(k), pid, shard_ids[k])
    ]
    if missing:
        return missing
    header, _, _ = read_header(folder / SHARDS / shard_name(0))
    index = {
        "format": FORMAT,
        "plan": pid,
        "dataset": plan["dataset"],
        "splits": plan["splits"],
        "dtype": plan["dtype"],
        "encoder": plan["encoder"],
        "clips": {
            k: {**c, "dim": header[f"clip/{k}"]["shape"][1]} for k, c in plan["clips"].items()
        },
        "shapes": {name: entry["shape"][1:] for name, entry in header.items()},
        "shards": [shard_name(k) for k in range(n)],
        "images": {str(i): [p // size, p % size] for p, i in enumerate(ids)},
    }
    atomic_write_text(folder / INDEX, json.dumps(index) + "\n")
    return []


def _clean_torn(folder: Path, k: int) -> None:
    """Remove what a killed attempt at shard k left (its temporary files)."""
    for tmp in (folder / SHARDS).glob(f".{shard_name(k)}.*.tmp"):
        tmp.unlink(missing_ok=True)


def extract(cfg: ExtractConfig, log: Callable[[str], None] = print) -> Path:
    """Extract this process's part of the store; merge when every part is done."""
    out = Path(cfg.out)
    if cfg.merge:
        if not (out / PLAN).is_file():
            raise StoreError(f"{out}: no extraction to merge (no {PLAN})")
        missing = merge(out)
        if missing:
            raise StoreError(f"{out}: {len(missing)} shards not done yet: {missing[:20]}")
        log(f"{out}: index written")
        return out
    sources = resolve_sources(cfg)
    plan = make_plan(cfg, sources)
    part, parts = cfg.part()
    size = cfg.shard_size
    n = math.ceil(len(sources.records) / size)
    pid = plan_id(plan)
    # One process locks the folder; the parts of a split extraction write different shards.
    with FolderLock(out) if parts == 1 else nullcontext():
        _start(out, plan)
        todo = []
        for k in range(part, n, parts):
            ids = plan["image_ids"][k * size : (k + 1) * size]
            if not complete_shard(out / SHARDS / shard_name(k), pid, ids):
                todo.append(k)
        kept = len(range(part, n, parts)) - len(todo)
        images = sum(len(sources.records[k * size : (k + 1) * size]) for k in todo)
        log(
            f"{out}: {n} shards of {size} images; part {part}/{parts}: {len(todo)} to do, "
            f"{kept} done"
        )
        started = time.perf_counter()
        with tqdm(total=images, unit="img", desc="features", disable=None, smoothing=0.1) as bar:
            for k in todo:
                _clean_torn(out, k)
                records = sources.records[k * size : (k + 1) * size]
                arrays = extract_shard(cfg, sources, records, bar)
                metadata = {
                    "plan": pid,
                    "shard": str(k),
                    "ids": json.dumps([r.image_id for r in records]),
                }
                write_shard(out / SHARDS / shard_name(k), arrays, metadata)
        seconds = time.perf_counter() - started
        if images:
            log(f"extracted {images} images in {seconds:.1f} s ({images / seconds:.1f} images/s)")
        missing = merge(out)
    if missing:
        log(
            f"{out}: {len(missing)} shards of other parts still to do; the part that finishes "
            "last writes the index (or run again with --merge)"
        )
    else:
        log(f"{out}: feature store complete ({len(sources.records)} images)")
    return out
