"""`finecap scenes generate`: write the procedurally generated scenes dataset."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from finecap.data.vocab import simple_tokenize
from finecap.scenes.generate import FINECAPEVAL_FILE, IMAGE_DIR, WorldConfig, write_world


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("scenes", help="the embedded scenes world (our CLEVR)")
    sub = parser.add_subparsers(dest="scenes_command", required=True)
    gen = sub.add_parser(
        "generate",
        help="generate images, dataset.json (Karpathy format) and finecapeval.csv",
        description="Generate the scenes dataset: N images split train/val/test "
        "(10 %% val and 10 %% test unless --val/--test are given).",
    )
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--n", type=int, default=1000, help="total number of images (default 1000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--image-size", type=int, default=96, help="image side in pixels (default 96)")
    gen.add_argument("--val", type=int, default=None, help="val images (default n/10)")
    gen.add_argument("--test", type=int, default=None, help="test images (default n/10)")
    gen.add_argument(
        "--group-size",
        type=int,
        default=5,
        help="test images per group sharing the salient shape and colour (default 5)",
    )
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    gen.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    cfg = WorldConfig(
        n=args.n,
        seed=args.seed,
        image_size=args.image_size,
        val=args.val,
        test=args.test,
        group_size=args.group_size,
    )
    try:
        cfg.split_sizes()
    except ValueError as err:
        print(f"finecap scenes generate: {err}")
        return 2
    json_path = write_world(cfg, args.out, progress=not args.no_progress)
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
