"""`finecap clip train`: train a small CLIP on a dataset (scenes: from scratch) or fine-tune one.

Options left out keep the defaults of `ScenesClipConfig` / `ClipTrainConfig`
(`finecap.clip.train`), imported only when the command runs so `finecap --help` stays fast.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("clip", help="train a CLIP for rewards and evaluation")
    sub = parser.add_subparsers(dest="clip_command", required=True)
    train = sub.add_parser(
        "train",
        help="train a CLIP (Hugging Face format) on a dataset's descriptions and references",
        description="Train a CLIP-style dual encoder with symmetric InfoNCE on the train split "
        "(from scratch, or from --init), save it in Hugging Face CLIP format, and write "
        "OUT/clip_eval.json: text-to-image retrieval on the test split with the first detailed "
        "description vs the first reference caption.",
    )
    train.add_argument("--dataset", required=True, help="dataset file (e.g. scenes dataset.json)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--init", help="fine-tune this Hugging Face CLIP (hub name or folder)")
    train.add_argument("--epochs", type=int, help="default 12")
    train.add_argument("--batch-size", type=int, help="default 128")
    train.add_argument("--lr", type=float, help="default 5e-4 from scratch, 1e-5 with --init")
    train.add_argument("--weight-decay", type=float, help="default 0.1")
    train.add_argument(
        "--description-prob",
        type=float,
        help="chance per image and epoch to train on a description, else a reference (0.8)",
    )
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument("--eval-split", help="default test")
    train.add_argument("--threads", type=int, dest="num_threads", help="torch CPU threads")
    train.add_argument("--image-size", type=int, help="ViT input side in pixels (default 96)")
    train.add_argument("--patch-size", type=int, help="ViT patch in pixels (default 12)")
    train.add_argument("--hidden", type=int, help="width of both towers (default 192)")
    train.add_argument("--layers", type=int, help="depth of both towers (default 4)")
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from finecap.clip.train import ClipTrainConfig, ScenesClipConfig, train_clip

    given = {k: v for k, v in vars(args).items() if v is not None}
    arch = {"patch_size": given.get("patch_size"), "image_size": given.get("image_size")}
    for side in ("vision", "text"):
        arch[f"{side}_hidden"] = given.get("hidden")
        arch[f"{side}_layers"] = given.get("layers")
    train_fields = ClipTrainConfig.__dataclass_fields__
    cfg = ClipTrainConfig(**{k: v for k, v in given.items() if k in train_fields})
    if args.lr is None and args.init:
        cfg.lr = 1e-5  # fine-tuning a pretrained CLIP
    arch_cfg = ScenesClipConfig(**{k: v for k, v in arch.items() if v is not None})
    result = train_clip(args.dataset, args.out, arch_cfg, cfg, init=args.init)
    print(json.dumps(result["retrieval"], indent=2))
    print(f"CLIP saved to {args.out} (train {result['train_seconds']} s)")
    return 0
