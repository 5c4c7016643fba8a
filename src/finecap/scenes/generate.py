"""Writing a scenes dataset to disk: images, Karpathy-format JSON, FineCapEval CSV.

Layout of `out_dir`:

- `images/scene_000000.png` ... RGB PNGs of `image_size` pixels;
- `dataset.json` in Karpathy split format (`filepath` = "images", so
  `out_dir/filepath/filename` is the image), each entry also holding `"descriptions"`
  (detailed alt-text), `"partial_descriptions"` (the first description cut after each
  object: true texts of every length, for `data.learn_from`) and `"scene"` (the ground
  truth, canonical words, pixel boxes);
- `finecapeval.csv`, FineCapEval's format: 5 rows per image of the val and test splits.

Splits: `n` is the total; by default 10 % val, 10 % test (rounded down), the rest train,
in imgid order train, val, test. Test images come in groups of `group_size` that share the
salient object's shape and colour and draw their background from the same two, while
everything else varies; a generic caption ("a red ball on the grass") then fits several
test images and only a detailed one picks out its image, which is what retrieval and
distinctiveness metrics need.

Determinism: each image draws from its own `random.Random(f"{seed}:image:{imgid}")`, each
test group from `random.Random(f"{seed}:group:{g}")`, so the same seed gives the same bytes
and changing `n` keeps earlier train images unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator
from tqdm import tqdm

from finecap.config import NonNegativeInt, PositiveInt, Settings
from finecap.data.vocab import simple_tokenize
from finecap.io import atomic_write_text
from finecap.scenes.language import (
    FineCapEvalRow,
    describe_scene,
    finecapeval_rows,
    partial_descriptions,
    reference_captions,
)
from finecap.scenes.render import render_scene
from finecap.scenes.world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SalientSpec,
    allowed_colors,
    sample_scene,
)

IMAGE_DIR = "images"
DATASET_FILE = "dataset.json"
FINECAPEVAL_FILE = "finecapeval.csv"


class WorldConfig(Settings):
    """What to generate: `n` images split train/val/test (10 % val and 10 % test by default)."""

    # Frozen (hence hashable), like the dataclass it replaced.
    model_config = ConfigDict(frozen=True)

    n: PositiveInt = 1000
    """Total number of images."""
    seed: int = 0
    """Random seed."""
    image_size: int = Field(96, ge=32)
    """Image side in pixels (at least 32)."""
    val: NonNegativeInt | None = None
    """Val images (None: n // 10)."""
    test: NonNegativeInt | None = None
    """Test images (None: n // 10)."""
    group_size: PositiveInt = 5
    """Test images per group sharing the salient shape and colour."""
    finecapeval_splits: tuple[Literal["train", "val", "test"], ...] = ("val", "test")
    """Splits written to finecapeval.csv."""

    @model_validator(mode="after")
    def _splits_fit(self) -> WorldConfig:
        sizes = self.split_sizes()
        if sizes["train"] < 0:
            raise ValueError(f"val ({sizes['val']}) + test ({sizes['test']}) exceed n ({self.n})")
        return self

    def split_sizes(self) -> dict[str, int]:
        """Images per split, in imgid order (always valid once constructed)."""
        val = self.n // 10 if self.val is None else self.val
        test = self.n // 10 if self.test is None else self.test
        return {"train": self.n - val - test, "val": val, "test": test}


@dataclass(frozen=True)
class ImageJob:
    imgid: int
    split: str
    spec: SalientSpec | None  # set for test images: their group's constraints


def group_spec(seed: int, group: int) -> SalientSpec:
    """The shared salient shape + colour (and two backgrounds) of one test group."""
    rnd = random.Random(f"{seed}:group:{group}")
    shape, color = rnd.choice(SHAPES), rnd.choice(COLORS)
    backgrounds = [b for b in BACKGROUNDS if color in allowed_colors(b)]
    return SalientSpec(shape, color, tuple(rnd.sample(backgrounds, 2)))


def plan_jobs(cfg: WorldConfig) -> list[ImageJob]:
    jobs: list[ImageJob] = []
    for split, count in cfg.split_sizes().items():
        for k in range(count):
            spec = group_spec(cfg.seed, k // cfg.group_size) if split == "test" else None
            jobs.append(ImageJob(len(jobs), split, spec))
    return jobs


def _make_entry(
    cfg: WorldConfig, job: ImageJob, out_dir: Path
) -> tuple[dict[str, Any], list[FineCapEvalRow]]:
    """Sample, render and save one image; return its JSON entry and FineCapEval rows."""
    rnd = random.Random(f"{cfg.seed}:image:{job.imgid}")
    scene = sample_scene(rnd, cfg.image_size, job.spec)
    filename = f"scene_{job.imgid:06d}.png"
    render_scene(scene, rnd.getrandbits(32)).save(out_dir / IMAGE_DIR / filename, format="PNG")
    captions = reference_captions(scene, rnd)
    first = job.imgid * len(captions)
    sentences = [
        {"tokens": simple_tokenize(c), "raw": c, "imgid": job.imgid, "sentid": first + k}
        for k, c in enumerate(captions)
    ]
    entry = {
        "filepath": IMAGE_DIR,
        "filename": filename,
        "imgid": job.imgid,
        "split": job.split,
        "sentids": [s["sentid"] for s in sentences],
        "sentences": sentences,
        "descriptions": describe_scene(scene),
        "partial_descriptions": partial_descriptions(scene),
        "scene": scene.to_dict(),
    }
    rows = finecapeval_rows(scene, filename, rnd) if job.split in cfg.finecapeval_splits else []
    return entry, rows


def _write_csv(path: Path, rows: list[FineCapEvalRow]) -> None:
    columns = [f.name for f in fields(FineCapEvalRow)]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    atomic_write_text(path, text.getvalue())


def write_world(cfg: WorldConfig, out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Generate the dataset described by `cfg` into `out_dir`; return the dataset.json path."""
    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(cfg)
    entries, fce_rows = [], []
    for job in tqdm(jobs, desc="rendering scenes", unit="img", disable=not progress):
        entry, rows = _make_entry(cfg, job, out)
        entries.append(entry)
        fce_rows.extend(rows)
    info = {"generator": "finecap.scenes", "seed": cfg.seed, "image_size": cfg.image_size}
    info |= {"group_size": cfg.group_size, "splits": cfg.split_sizes()}
    dataset = {"dataset": "scenes", "info": info, "images": entries}
    # Both atomically, dataset.json last: once it exists, the world is complete.
    _write_csv(out / FINECAPEVAL_FILE, fce_rows)
    json_path = out / DATASET_FILE
    atomic_write_text(json_path, json.dumps(dataset))
    return json_path


def generate_world(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    image_size: int = 96,
    *,
    val: int | None = None,
    test: int | None = None,
    group_size: int = 5,
    progress: bool = False,
) -> Path:
    """Generate `n` scenes (train/val/test 80/10/10 unless val/test given) into `out_dir`.

    Returns the path of `dataset.json`; images are under `out_dir/images`, the FineCapEval
    annotations of the val and test splits in `out_dir/finecapeval.csv`.
    """
    cfg = WorldConfig(
        n=n, seed=seed, image_size=image_size, val=val, test=test, group_size=group_size
    )
    return write_world(cfg, out_dir, progress=progress)
