"""`finecap caption PATH...`: caption images and folders of images with a saved captioner.

Every file is opened with the hardened `load_image`; a file that cannot be read (missing,
empty, corrupt, truncated, not an image, too large) gets an error line naming it and the
others are still captioned. Good images are captioned together in batches of --batch-size
(batched beam search is several times faster per image than one at a time), while memory stays
bounded by one batch of decoded images. Lines come out in input order, one per file.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from finecap.attention_maps import figure_names, save_attention_figure
from finecap.captioner import DEFAULT_MODEL_DIR, Caption, Captioner
from finecap.data.images import ImageLoadError, iter_image_files, load_image
from finecap.decoding import DecodingConfig
from finecap.hub import WeightsNotFoundError

PROG = "finecap caption"
PROGRESS_MIN_IMAGES = 8  # a bar for a handful of images is noise


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption images or folders of images",
        description="Caption images (folders give their image files). Prints PATH<TAB>caption "
        "per image, or one JSON object per line with --json; unreadable files get an error line "
        "and make the exit status 1.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--model", default=None, metavar="DIR", help="saved captioner folder (default: bundled)"
    )
    parser.add_argument(
        "--beam-size", type=int, default=3, metavar="N", help="1 = greedy (default 3)"
    )
    parser.add_argument(
        "--max-len",
        type=int,
        default=20,
        metavar="N",
        help="most words per caption, capped at the model's own limit (default 20)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--attention",
        metavar="DIR",
        default=None,
        help="write DIR/<image stem>.png: where the decoder looked for each word",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=handler)


@dataclass
class _Item:
    path: str  # exactly as given, or as listed from a given folder
    figure: str  # attention PNG file name, unique among the run's images
    image: Image.Image | None = None
    error: str | None = None


def _usage_error(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _load_captioner(model: str | None) -> Captioner:
    """The captioner, or a `ValueError` with one sentence saying why not."""
    if model is None and not DEFAULT_MODEL_DIR.is_dir():
        raise ValueError(
            f"no --model given and the bundled default model is not installed ({DEFAULT_MODEL_DIR})"
        )
    if model is not None and not Path(model).is_dir():
        raise ValueError(f"model folder {model!r} does not exist")
    try:
        return Captioner.from_pretrained(model)
    except (OSError, ValueError, KeyError, WeightsNotFoundError) as err:
        raise ValueError(f"cannot load the model: {err}") from err


def handler(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        return _usage_error("--batch-size must be at least 1")
    try:
        decoding = DecodingConfig(beam_size=args.beam_size, max_len=args.max_len)
        captioner = _load_captioner(args.model)
    except ValueError as err:
        return _usage_error(str(err))
    for given in args.paths:
        if Path(given).is_dir() and not iter_image_files([given]):
            print(f"{PROG}: {given}: no image files in this folder", file=sys.stderr)
    files = iter_image_files(args.paths)
    if not files:
        return _usage_error("no images to caption")
    items = [_Item(path, name) for path, name in zip(files, figure_names(files), strict=True)]

    failed = False
    bar = tqdm(
        total=len(items),
        unit="img",
        file=sys.stderr,
        disable=True if args.no_progress or len(items) < PROGRESS_MIN_IMAGES else None,
    )
    with bar:
        for window in _windows(items, args.batch_size):
            images = [item.image for item in window if item.image is not None]
            captions = iter(
                captioner.caption(
                    images,
                    decoding=decoding,
                    batch_size=args.batch_size,
                    with_attention=args.attention is not None,
                )
            )
            for item in window:
                caption = next(captions) if item.image is not None else None
                if caption is not None and args.attention is not None:
                    _write_figure(item, caption, Path(args.attention))
                failed |= item.error is not None
                _report(item, caption, args.json)
                item.image = None  # free the decoded pixels as soon as they are used
            sys.stdout.flush()
            bar.update(len(window))
    return 1 if failed else 0


def _windows(items: list[_Item], batch_size: int):
    """Load files in order; yield runs of items holding batch_size good images (or the rest)."""
    window: list[_Item] = []
    good = 0
    for item in items:
        try:
            item.image = load_image(item.path)
            good += 1
        except ImageLoadError as err:
            item.error = str(err)
        window.append(item)
        if good == batch_size:
            yield window
            window, good = [], 0
    if window:
        yield window


def _write_figure(item: _Item, caption: Caption, folder: Path) -> None:
    try:
        save_attention_figure(item.image, caption, folder / item.figure)
    except (OSError, ValueError) as err:
        item.error = f"{item.path}: cannot write the attention figure ({err})"


def _report(item: _Item, caption: Caption | None, as_json: bool) -> None:
    """One stdout line per image; errors go to stdout with --json (in order), else stderr."""
    if as_json:
        record = {"image": item.path}
        if caption is not None:
            record["caption"] = caption.text
        if item.error is not None:
            record["error"] = item.error
        tqdm.write(json.dumps(record), file=sys.stdout)
        return
    if caption is not None:
        tqdm.write(f"{item.path}\t{caption.text}", file=sys.stdout)
    if item.error is not None:
        tqdm.write(f"{PROG}: {item.error}", file=sys.stderr)
