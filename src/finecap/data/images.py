"""The one hardened image loader: everything in finecap that opens an image goes through here.

`load_image` returns an RGB `PIL.Image` or raises `ImageLoadError` naming the file and the
problem: missing, empty, not an image, corrupt/truncated, or too large. It never changes
Pillow's global settings (`LOAD_TRUNCATED_IMAGES`, `MAX_IMAGE_PIXELS`, warning filters).

Size cap: `DEFAULT_MAX_PIXELS` = 40 megapixels, checked against the size in the file header
*before* any pixel is decoded. That is larger than any photo in the captioning datasets
(COCO <= 640 px a side, phone cameras 12-48 MP) while a decoded 40 MP RGB image is still only
~120 MB. Pass `max_pixels=None` to lift it; Pillow's own bomb guard (~179 MP, an error) still
applies then, because we do not touch its global limit.

Colour handling: EXIF orientation is applied; transparency (LA, PA, RGBA, P or L/RGB with a
tRNS colour) is composited on white, the background every captioning dataset photo has;
16-bit greyscale (I;16*, and I, which Pillow uses for 16-bit PNG/TIFF) is scaled 65535 -> 255;
animated GIF/WebP/PNG give their first frame.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from finecap.errors import UserError

DEFAULT_MAX_PIXELS = 40_000_000

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageLoadError(UserError, ValueError):
    """An image file could not be turned into an RGB image; the message names the file."""


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `path` as an RGB image, fully decoded, or raise `ImageLoadError`."""
    with _opened(path, max_pixels) as img:
        _decode(path, img.load)  # a full decode now: truncation shows up here, not later
        return to_rgb(path, _apply_exif_orientation(img))


def check_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Raise `ImageLoadError` if `path` is not a readable image: the file, its header and size,
    and its data — a JPEG decoded at 1/8 scale (`draft`: every coefficient is read, so a
    truncated file fails, at a fraction of the cost), any other format `verify`-ed (a PNG's
    chunks and CRCs). A whole dataset is checked in seconds before training starts."""
    with _opened(path, max_pixels) as img:
        if img.format == "JPEG":
            img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            _decode(path, img.load)
        else:
            _decode(path, img.verify)


@contextmanager
def _opened(path: str | os.PathLike, max_pixels: int | None) -> Iterator[Image.Image]:
    """The file opened by Pillow after the file, header-size and bomb checks; every failure,
    in the `with` body too, becomes an `ImageLoadError` naming the file."""
    _check_file(path)
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; make it an error
            # here (and only here) so a bomb never reaches the decoder.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(path, img.size, max_pixels)
                yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{path}: too large, possible decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{path}: not an image file (or an unsupported format)") from err
    except OSError as err:  # unreadable file, or a header Pillow recognised but cannot parse
        raise ImageLoadError(f"{path}: cannot read image ({err})") from err


def _decode(path: str | os.PathLike, read: Callable[[], object]) -> None:
    try:
        read()
    except Exception as err:  # decoders raise OSError, SyntaxError, struct.error, ...
        raise ImageLoadError(f"{path}: corrupt or truncated image ({err})") from err


def shrink(image: Image.Image, side: int) -> Image.Image:
    """`image` with its shorter side at most `side` pixels (aspect kept; never enlarged)."""
    short = min(image.size)
    if short <= side:
        return image
    w, h = (round(x * side / short) for x in image.size)
    return image.resize((w, h), Image.Resampling.BICUBIC)


def load_images(
    paths: Iterable[str | os.PathLike], max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> list[Image.Image | ImageLoadError]:
    """Load every path; a bad file gives its `ImageLoadError` in its slot instead of stopping."""
    results: list[Image.Image | ImageLoadError] = []
    for path in paths:
        try:
            results.append(load_image(path, max_pixels=max_pixels))
        except ImageLoadError as err:
            results.append(err)
    return results


def iter_image_files(paths: str | Sequence[str]) -> list[str]:
    """Expand folders into their image files; keep every given file path exactly as given.

    A folder gives its own image files (by extension, case-insensitive; hidden files such as
    macOS `._x.jpg` skipped; not recursive), sorted by name and joined onto the folder string
    the user typed. Anything else, including a missing path, is passed through untouched so
    `load_image` reports it against the exact string the user gave.
    """
    if isinstance(paths, str):
        paths = [paths]
    files: list[str] = []
    for given in paths:
        if os.path.isdir(given):
            names = sorted(
                entry.name
                for entry in os.scandir(given)
                if entry.is_file()
                and not entry.name.startswith(".")
                and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            )
            files.extend(os.path.join(given, name) for name in names)
        else:
            files.append(given)
    return files


def _check_file(path: str | os.PathLike) -> None:
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"{path}: file not found")
    if p.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image file")
    if p.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file (0 bytes)")


def _check_size(path: str | os.PathLike, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{path}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{path}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (possible decompression bomb; raise max_pixels to allow it)"
        )


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """A new in-memory image (never the file-backed one), turned upright per EXIF."""
    try:
        return ImageOps.exif_transpose(img)  # returns a copy even when nothing to turn
    except Exception:  # broken EXIF block: the pixels are fine, keep them as stored
        return img.copy()


def to_rgb(path: str | os.PathLike, img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB."""
    try:
        if img.mode in _WIDE_GREY_MODES:
            # Pillow's own I -> L conversion clips at 255 instead of scaling; scale 16 bit -> 8 bit.
            grey = np.asarray(img).astype(np.float64)
            grey = np.clip(grey, 0, 65535) * (255 / 65535)
            return Image.fromarray(np.rint(grey).astype(np.uint8), mode="L").convert("RGB")
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return img if img.mode == "RGB" else img.convert("RGB")  # L, 1, P, CMYK, YCbCr, F, ...
    except (ValueError, OSError) as err:
        raise ImageLoadError(f"{path}: cannot convert {img.mode} image to RGB ({err})") from err
