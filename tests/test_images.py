"""The hardened image loader: bad files fail clearly, every mode comes back as RGB."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finecap.data.images import ImageLoadError, iter_image_files, load_image, load_images

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose header claims width x height: costs bytes, not gigabytes."""
    data = bytearray(_png_bytes(Image.new("L", (1, 1))))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


# --- bad files ---------------------------------------------------------------------------


def test_missing_empty_directory_and_non_image(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image at all")
    cases = {
        tmp_path / "missing.jpg": "file not found",
        tmp_path / "empty.jpg": "empty file (0 bytes)",
        tmp_path / "notes.jpg": "not an image file",
        tmp_path: "is a directory",
    }
    for path, problem in cases.items():
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert str(path) in str(info.value) and problem in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_fails_on_full_decode(tmp_path: Path, fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\..*: corrupt or truncated image"):
        load_image(path)


def test_decompression_bomb_rejected_from_header(tmp_path: Path) -> None:
    # The header claims 8000x8000 but holds one pixel's data: decoding would fail differently.
    bomb = _png_claiming_size(tmp_path / "bomb.png", 8000, 8000)
    with pytest.raises(ImageLoadError, match=r"bomb.png: image is 8000x8000 .* over the limit"):
        load_image(bomb)
    huge = _png_claiming_size(tmp_path / "huge.png", 20000, 20000)  # past Pillow's own guard
    with pytest.raises(ImageLoadError, match=r"huge.png: too large, possible decompression bomb"):
        load_image(huge)
    with pytest.raises(ImageLoadError, match="over the limit of 100"):
        load_image(_save(Image.new("RGB", (20, 20)), tmp_path / "small.png"), max_pixels=100)


def test_pillow_bomb_guard_still_applies_without_our_cap(tmp_path: Path) -> None:
    # 100 MP is between Pillow's warning (89 MP) and error (179 MP) thresholds: the warning
    # must become an error here, without changing the process-wide warning filters.
    filters_before = list(warnings.filters)
    for side, path in ((10000, tmp_path / "warn.png"), (20000, tmp_path / "error.png")):
        _png_claiming_size(path, side, side)
        with pytest.raises(ImageLoadError, match=f"{path.name}: too large, possible decompression"):
            load_image(path, max_pixels=None)
    assert warnings.filters == filters_before


def test_load_images_keeps_going(tmp_path: Path) -> None:
    good = _save(Image.new("RGB", (3, 2), RED), tmp_path / "good.png")
    out = load_images([good, tmp_path / "missing.png", str(good)])
    assert isinstance(out[0], Image.Image) and isinstance(out[2], Image.Image)
    assert isinstance(out[1], ImageLoadError) and "missing.png" in str(out[1])


# --- modes -------------------------------------------------------------------------------


def _rgb(path: Path) -> tuple[Image.Image, np.ndarray]:
    img = load_image(path)
    assert img.mode == "RGB"
    return img, np.asarray(img).astype(int)


def test_grey_and_one_bit(tmp_path: Path) -> None:
    img, px = _rgb(_save(Image.new("L", (5, 3), 77), tmp_path / "grey.png"))
    assert img.size == (5, 3) and (px == 77).all()
    _, px = _rgb(_save(Image.new("1", (4, 4), 1), tmp_path / "bits.png"))
    assert (px == 255).all()


def test_alpha_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (2, 1), (*RED, 255))
    rgba.putpixel((1, 0), (*BLUE, 0))  # fully transparent pixel
    img, px = _rgb(_save(rgba, tmp_path / "rgba.png"))
    assert img.size == (2, 1) and tuple(px[0, 0]) == RED and tuple(px[0, 1]) == WHITE
    la = Image.new("LA", (2, 2), (0, 128))  # black at half opacity -> mid grey
    _, px = _rgb(_save(la, tmp_path / "la.png"))
    assert abs(px[0, 0, 0] - 127) <= 1


def test_palette_with_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (3, 1), 0)
    pal.putpalette([*RED, *BLUE] + [0] * 762)
    pal.putpixel((2, 0), 1)
    img, px = _rgb(_save(pal, tmp_path / "pal.gif", transparency=1))
    assert img.size == (3, 1) and tuple(px[0, 0]) == RED and tuple(px[0, 2]) == WHITE
    _, px = _rgb(_save(pal, tmp_path / "opaque.png"))  # no transparency: plain palette
    assert tuple(px[0, 2]) == BLUE


def test_cmyk(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # pure red in CMYK
    for name in ("cmyk.jpg", "cmyk.tif"):
        img, px = _rgb(_save(cmyk, tmp_path / name))
        assert img.size == (6, 4)
        assert px[..., 0].min() > 230 and px[..., 1:].max() < 25


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    img16 = Image.fromarray(values)
    assert img16.mode == "I;16"
    img, px = _rgb(_save(img16, tmp_path / "deep.png"))
    assert img.size == (3, 1) and px[0, :, 0].tolist() == [0, 100, 255]
    _, px = _rgb(_save(img16.convert("I"), tmp_path / "deep32.tif"))
    assert px[0, :, 0].tolist() == [0, 100, 255]


@pytest.mark.parametrize("name", ["anim.gif", "anim.webp"])
def test_animated_gives_first_frame(tmp_path: Path, name: str) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in (RED, BLUE, BLUE)]
    path = _save(frames[0], tmp_path / name, save_all=True, append_images=frames[1:], lossless=True)
    img, px = _rgb(path)
    assert img.size == (8, 6)
    assert px[..., 0].min() > 230 and px[..., 2].max() < 25


def test_exif_orientation_applied(tmp_path: Path) -> None:
    # Stored 32 wide x 16 high, left half red; orientation 6 means "rotate 90 deg clockwise to
    # display", so the loaded image is 16 x 32 with the red half on top.
    stored = Image.new("RGB", (32, 16), BLUE)
    stored.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    img, px = _rgb(_save(stored, tmp_path / "rotated.jpg", exif=exif, quality=95))
    assert img.size == (16, 32)
    assert px[:12, :, 0].min() > 200 and px[20:, :, 2].min() > 200  # JPEG blurs the seam


# --- file lists --------------------------------------------------------------------------


def test_iter_image_files_expands_folders_and_keeps_given_strings(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG", ".hidden.jpg", "notes.txt", "c.webp"):
        (folder / name).write_bytes(b"x")
    given = str(folder) + os.sep  # a trailing slash stays as typed
    odd = "./some/../weird//path.jpg"
    got = iter_image_files([odd, given, "missing.png"])
    assert got == [odd, given + "a.JPG", given + "b.png", given + "c.webp", "missing.png"]
    assert iter_image_files(str(folder / "b.png")) == [str(folder / "b.png")]
