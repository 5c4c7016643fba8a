"""`finecap caption PATH...`: caption images and folders of images with a saved captioner.

Every file is opened with the hardened `load_image`; a file that cannot be read (missing,
empty, corrupt, truncated, not an image, too large) gets an error line naming it and the
others are still captioned. Good images are captioned together in batches of --batch-size
(batched beam search is several times faster per image than one at a time), while memory stays
bounded by one batch of decoded images. Lines come out in input order, one per file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro
from PIL import Image
from pydantic import Field
from tqdm import tqdm
from tyro.conf import Positional

from finecap.attention_maps import figure_names, save_attention_figure
from finecap.captioner import DEFAULT_MODEL_DIR, Caption, Captioner
from finecap.config import PositiveInt, Settings
from finecap.data.images import ImageLoadError, iter_image_files, load_image
from finecap.decoding import DecodingConfig
from finecap.hub import WeightsNotFoundError

PROG = "finecap caption"
PROGRESS_MIN_IMAGES = 8  # a bar for a handful of images is noise


class CaptionOptions(Settings):
    """Caption images (folders give their image files). Prints PATH<TAB>caption per image (in
    PATH, a backslash, tab, newline or other unprintable character is written as a Python
    escape: \\\\, \\t, \\n, \\xff for a byte that is not UTF-8), or one JSON object per line
    with --json; unreadable files get an error line and make the exit status 1."""

    paths: Positional[list[str]] = Field(min_length=1)
    """Image files or folders."""
    model: str | None = None
    """Saved captioner folder (default: the bundled scenes model)."""
    beam_size: PositiveInt = 3
    """Beams per image; 1 = greedy."""
    max_len: PositiveInt = 20
    """Most words per caption, capped at the model's own limit."""
    batch_size: PositiveInt = 32
    """Images decoded together."""
    as_json: Annotated[bool, tyro.conf.arg(name="json")] = False
    """One JSON object per line."""
    attention: str | None = None
    """Write DIR/<image stem>.png: where the decoder looked for each word."""
    progress: bool = True
    """Show a progress bar (from 8 images on)."""


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


def handler(args: CaptionOptions) -> int:
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
        disable=True if not args.progress or len(items) < PROGRESS_MIN_IMAGES else None,
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
                _report(item, caption, args.as_json)
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


def escape_path(path: str) -> str:
    """`path` on one tab-free line: a backslash and every unprintable character (tab, newline,
    other controls, a lone surrogate) as its Python escape; a byte of a file name that is not
    UTF-8 (which Python holds as a surrogate U+DC80..U+DCFF) as \\xNN."""
    if path.isprintable() and "\\" not in path:
        return path
    out = []
    for char in path:
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= ord(char) <= 0xDCFF:
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


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
        tqdm.write(f"{escape_path(item.path)}\t{caption.text}", file=sys.stdout)
    if item.error is not None:
        tqdm.write(f"{PROG}: {item.error}", file=sys.stderr)


COMMANDS = {"caption": (CaptionOptions, handler)}
