"""`finecap pairwise make|tally`: blind A/B human judgments of two systems' captions."""

from __future__ import annotations

import argparse
import glob
import re
import sys
from pathlib import Path

PROG = "finecap pairwise"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pairwise", help="human A/B comparison of two systems")
    sub = parser.add_subparsers(dest="pairwise_command", required=True)
    make = sub.add_parser(
        "make",
        help="write a self-contained judging page",
        description="Write an HTML page showing N images with the captions of A and B in "
        "random, hidden order; annotators choose the better caption on five criteria and "
        "save a judgments JSON file.",
    )
    make.add_argument("--a", required=True, metavar="[NAME=]FILE", help="system A predictions")
    make.add_argument("--b", required=True, metavar="[NAME=]FILE", help="system B predictions")
    make.add_argument("--images", metavar="DIR", help="image folder (default: the dataset's)")
    make.add_argument("--dataset", help="dataset.json mapping image ids to files")
    make.add_argument("--n", type=int, default=50, help="images on the page (default 50)")
    make.add_argument("--seed", type=int, default=0, help="sampling and side order (default 0)")
    make.add_argument("--out", required=True, metavar="HTML", help="page to write")
    make.set_defaults(func=make_handler)
    tal = sub.add_parser("tally", help="win/lose/tie percentages from saved judgments")
    tal.add_argument("judgments", nargs="+", metavar="FILE", help="judgments JSON (globs ok)")
    tal.set_defaults(func=tally_handler)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _named(item: str) -> tuple[str, Path]:
    name, eq, path = item.partition("=")
    if eq and name and not Path(item).exists():
        return name, Path(path)
    return Path(item).stem, Path(item)


def _image_files(folder: Path, ids: list[int | str]) -> dict[int | str, Path]:
    """Without a dataset: a file whose stem is the id, or ends in it as a number
    (COCO_val2014_000000522418.jpg for 522418)."""
    from finecap.data.images import iter_image_files

    by_stem: dict[str, Path] = {}
    for f in map(Path, iter_image_files(str(folder))):
        by_stem[f.stem] = f
        digits = re.search(r"(\d+)$", f.stem)
        if digits:
            by_stem.setdefault(str(int(digits.group(1))), f)
    return {i: by_stem[str(i)] for i in ids if str(i) in by_stem}


def make_handler(args: argparse.Namespace) -> int:
    from finecap.data.formats import DatasetFormatError, load_corpus, load_predictions
    from finecap.pairwise import make_items, write_page

    try:
        (a_name, a_path), (b_name, b_path) = _named(args.a), _named(args.b)
        a, b = load_predictions(a_path), load_predictions(b_path)
        ids = [k for k in a if k in b]
        if args.dataset:
            corpus = load_corpus(args.dataset, image_root=args.images)
            records = {str(r.image_id): r for r in corpus.images}
            unknown = [k for k in ids if str(k) not in records]
            if unknown:
                return _fail(f"image_id {unknown[0]!r} (of {a_path}) is not in {args.dataset}")
            paths = {k: corpus.image_path(records[str(k)]) for k in ids}
        elif args.images:
            paths = _image_files(Path(args.images), ids)
        else:
            return _fail("pass --images DIR or --dataset dataset.json to find the images")
        missing = [k for k, p in paths.items() if not p.is_file()] + [
            k for k in ids if k not in paths
        ]
        if missing:
            return _fail(f"{len(missing)} images not found (image_id {missing[0]!r}, ...)")
        items = make_items(a, b, paths, n=args.n, seed=args.seed)
    except (DatasetFormatError, FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    write_page(args.out, items, a_name, b_name, args.seed)
    print(f"{len(items)} images, A = {a_name}, B = {b_name}: {args.out}")
    return 0


def tally_handler(args: argparse.Namespace) -> int:
    from finecap.pairwise import format_tally, load_judgments, tally

    files = [f for pattern in args.judgments for f in sorted(glob.glob(pattern)) or [pattern]]
    try:
        print(format_tally(tally([load_judgments(f) for f in files])))
    except (OSError, ValueError, KeyError) as err:
        return _fail(str(err))
    return 0
