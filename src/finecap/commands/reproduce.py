"""`finecap reproduce --out DIR [--quick]`: the papers' tables on the scenes world."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="scenes world -> CLIP, grammar head, MLE and SCST captioners -> metrics.json + report",
    )
    parser.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    parser.add_argument("--quick", action="store_true", help="a reduced run (minutes, for CI)")
    parser.add_argument(
        "--jobs", type=int, default=2, help="steps run side by side (default 2), threads split"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from finecap.reproduce import FULL, QUICK, reproduce

    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    reproduce(Path(args.out), QUICK if args.quick else FULL, jobs=args.jobs)
    return 0
