"""`finecap scenes generate`: write the procedurally generated scenes dataset."""

from __future__ import annotations

import json
from collections import Counter

from finecap.config import Settings
from finecap.data.vocab import simple_tokenize
from finecap.scenes.generate import FINECAPEVAL_FILE, IMAGE_DIR, WorldConfig, write_world


class ScenesGenerateOptions(Settings):
    """Generate the scenes dataset: N images split train/val/test (10 % val and 10 % test
    unless --val/--test are given), dataset.json (Karpathy format) and finecapeval.csv."""

    out: str = "data/scenes"
    """Output folder (default: where the shipped scenes SCST recipes read their dataset)."""
    world: WorldConfig = WorldConfig()
    progress: bool = True
    """Show a progress bar."""


def handler(options: ScenesGenerateOptions) -> int:
    cfg = options.world
    json_path = write_world(cfg, options.out, progress=options.progress)
    images = json.loads(json_path.read_text(encoding="utf-8"))["images"]
    splits = Counter(entry["split"] for entry in images)
    words = {w for e in images for s in e["sentences"] for w in s["tokens"]}
    words |= {w for e in images for d in e["descriptions"] for w in simple_tokenize(d)}
    out = json_path.parent
    print(
        f"{len(images)} images ({', '.join(f'{k} {v}' for k, v in splits.items())}), "
        f"{cfg.image_size}x{cfg.image_size}, {len(words)} distinct words"
    )
    print(f"images:      {out / IMAGE_DIR}")
    print(f"dataset:     {json_path}")
    print(f"finecapeval: {out / FINECAPEVAL_FILE}")
    return 0


COMMANDS = {"generate": (ScenesGenerateOptions, handler)}
