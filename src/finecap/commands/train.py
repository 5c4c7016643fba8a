"""`finecap train --config FILE.yaml [--init MODEL] [--set key=value ...]`."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a captioner from a YAML recipe (MLE or SCST)"
    )
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.add_argument(
        "--init", help="start from this captioner folder (e.g. an MLE model for SCST)"
    )
    parser.add_argument("--output-dir", help="override output_dir of the recipe")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.max_epochs=2 (repeatable)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from finecap.train.config import load_config
    from finecap.train.run import train

    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    try:
        config = load_config(args.config, overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder = train(config, init=args.init)
    print(f"model saved to {folder}")
    return 0
