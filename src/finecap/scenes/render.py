"""Drawing scenes with PIL + numpy: textured backgrounds, shapes, patterns.

Everything is drawn at SUPERSAMPLE times the target size and box-filtered down, which
gives anti-aliased edges and keeps thin stripes and small dots readable at 96 px.
Backgrounds are a registry (name -> texture function), shapes are polygons in the unit
square; adding a background or shape means adding one entry, not a branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from finecap.scenes.world import Scene, SceneObject

SUPERSAMPLE = 2

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 70, 225),
    "green": (30, 170, 50),
    "yellow": (250, 220, 20),
    "purple": (140, 50, 190),
    "orange": (250, 135, 20),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
    "pink": (250, 130, 195),
    "brown": (125, 70, 30),
}
# Stripes and dots are dark on light colours and white on dark ones, so they always show.
LIGHT_COLORS = frozenset({"yellow", "orange", "white", "pink"})
PATTERN_DARK, PATTERN_LIGHT = (25, 25, 25), (250, 250, 250)

Texture = Callable[[np.random.Generator, int], np.ndarray]  # (rng, side) -> (side, side, 3) float


# ---------------------------------------------------------------- backgrounds


def _smooth_noise(rng: np.random.Generator, side: int, cell: int) -> np.ndarray:
    """Value noise with features about `cell` pixels wide, roughly in [-1, 1]. (S, S)"""
    coarse = rng.standard_normal((side // cell + 2, side // cell + 2)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((side + cell, side + cell), Image.BICUBIC)
    return np.asarray(img)[:side, :side] / 1.2


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    return y, x


def _mix(base: tuple[int, ...], shade: np.ndarray, amp: float) -> np.ndarray:
    """Base colour (3,) brightened/darkened by `shade` (S, S) times amp. -> (S, S, 3)"""
    return np.asarray(base, np.float32)[None, None, :] + amp * shade[..., None]


def _grass(rng: np.random.Generator, side: int) -> np.ndarray:
    # Noise averaged along y only gives vertical streaks that read as blades.
    n = rng.standard_normal((side + 10, side)).astype(np.float32)
    blades = np.cumsum(n, axis=0)
    blades = (blades[10:] - blades[:-10]) / 3.2
    img = _mix((70, 150, 50), blades, 18) + _mix((0, 0, 0), _smooth_noise(rng, side, 24), 14)
    return img


def _sky(rng: np.random.Generator, side: int) -> np.ndarray:
    y, x = _grid(side)
    t = (y / side)[..., None]
    img = (1 - t) * np.array([80, 140, 225], np.float32) + t * np.array([165, 205, 245], np.float32)
    cloud = np.zeros((side, side), np.float32)
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0, side, 2)
        for _ in range(4):  # a cloud is a cluster of soft blobs
            bx, by = cx + rng.normal(0, side * 0.07), cy + rng.normal(0, side * 0.03)
            r = side * rng.uniform(0.05, 0.09)
            cloud += np.exp(-((x - bx) ** 2 / (2.5 * r * r) + (y - by) ** 2 / (r * r)))
    alpha = np.clip(cloud, 0, 0.85)[..., None]
    return img * (1 - alpha) + 245 * alpha


def _sand(rng: np.random.Generator, side: int) -> np.ndarray:
    y, x = _grid(side)
    phase = rng.uniform(0, 2 * np.pi)
    ripples = np.sin(y * 0.16 * 96 / side * 2 + 2 * np.sin(x * 0.04 + phase))
    grain = rng.standard_normal((side, side)).astype(np.float32)
    return _mix((222, 196, 140), ripples, 9) + _mix((0, 0, 0), grain, 9)


def _water(rng: np.random.Generator, side: int) -> np.ndarray:
    y, x = _grid(side)
    k = 2 * np.pi / (side / 14)
    wobble = 3 * np.sin(x * k / 5 + rng.uniform(0, 6)) + 6 * _smooth_noise(rng, side, 32)
    waves = np.clip(np.sin(y * k + wobble) - 0.55, 0, None) / 0.45
    img = _mix((35, 105, 175), _smooth_noise(rng, side, 40), 12)
    return img + waves[..., None] * np.array([70, 70, 60], np.float32)


def _brick_wall(rng: np.random.Generator, side: int) -> np.ndarray:
    y, x = _grid(side)
    bh, bw, mortar = side / 12, side / 6, max(2, side // 96 * 2)
    row = (y // bh).astype(int)
    xs = x + (row % 2) * bw / 2  # every other row is offset by half a brick
    col = (xs // bw).astype(int)
    shades = rng.uniform(-22, 22, (row.max() + 1, col.max() + 1)).astype(np.float32)
    img = _mix((165, 68, 48), shades[row, col], 1.0)
    img += _mix((0, 0, 0), rng.standard_normal((side, side)).astype(np.float32), 6)
    is_mortar = ((y % bh) < mortar) | ((xs % bw) < mortar)
    img[is_mortar] = (195, 190, 180)
    return img


def _wooden_floor(rng: np.random.Generator, side: int) -> np.ndarray:
    y, x = _grid(side)
    ph = side / 7
    row = (y // ph).astype(int)
    shades = rng.uniform(-25, 25, row.max() + 1).astype(np.float32)
    grain = np.sin(y * 1.3 + 3 * _smooth_noise(rng, side, 16) + x * 0.02)
    img = _mix((185, 135, 85), shades[row], 1.0) + _mix((0, 0, 0), grain, 10)
    ends = rng.uniform(0, side, row.max() + 1)  # one plank joint per row
    is_gap = ((y % ph) < 2) | (np.abs(x - ends[row]) < 1.5)
    img[is_gap] = (95, 60, 35)
    return img


def _snow(rng: np.random.Generator, side: int) -> np.ndarray:
    y, _ = _grid(side)
    drifts = _smooth_noise(rng, side, 36) + 0.4 * _smooth_noise(rng, side, 10)
    img = _mix((238, 242, 250), np.minimum(drifts, 0.3), 22)
    img -= (y / side * 12)[..., None] * np.array([1, 0.6, 0], np.float32)
    speck = rng.random((side, side)) < 0.02
    img[speck] -= np.array([40, 30, 10], np.float32)
    return img


def _tiled_floor(rng: np.random.Generator, side: int) -> np.ndarray:
    y, x = _grid(side)
    tile = side / 4
    grout = max(2, side // 96 * 2)
    r, c = (y // tile).astype(int), (x // tile).astype(int)
    shades = rng.uniform(-12, 12, (r.max() + 1, c.max() + 1)).astype(np.float32)
    img = _mix((200, 200, 195), shades[r, c] + 6 * ((r + c) % 2), 1.0)
    img += _mix((0, 0, 0), _smooth_noise(rng, side, 12), 4)
    is_grout = ((y % tile) < grout) | ((x % tile) < grout)
    img[is_grout] = (120, 120, 118)
    return img


TEXTURES: dict[str, Texture] = {
    "grass": _grass,
    "sky": _sky,
    "sand": _sand,
    "water": _water,
    "brick wall": _brick_wall,
    "wooden floor": _wooden_floor,
    "snow": _snow,
    "tiled floor": _tiled_floor,
}


# ---------------------------------------------------------------- shapes


def _regular(n: int, start_deg: float, radii: tuple[float, ...] = (0.5,)) -> list[tuple]:
    """Polygon with n vertices (alternating radii for stars) centred in the unit square."""
    pts = []
    for k in range(n):
        a = math.radians(start_deg + 360 * k / n)
        r = radii[k % len(radii)]
        pts.append((0.5 + r * math.cos(a), 0.5 + r * math.sin(a)))
    return pts


def _heart() -> list[tuple]:
    ts = [2 * math.pi * k / 48 for k in range(48)]
    xs = [16 * math.sin(t) ** 3 for t in ts]
    ys = [
        -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        for t in ts
    ]
    return _fit(list(zip(xs, ys, strict=True)))


def _cross(half_width: float) -> list[tuple]:
    """A plus sign whose arms are 2 * half_width wide, walking the 12 corners clockwise."""
    a, b = 0.5 - half_width, 0.5 + half_width
    xs = (a, b, b, 1, 1, b, b, a, a, 0, 0, a)
    ys = (0, 0, a, a, b, b, 1, 1, b, b, a, a)
    return list(zip(xs, ys, strict=True))


def _fit(pts: list[tuple]) -> list[tuple]:
    """Scale a polygon to fill the unit square (keeping its aspect ratio), centred."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    ox = (span - (max(xs) - min(xs))) / 2 - min(xs)
    oy = (span - (max(ys) - min(ys))) / 2 - min(ys)
    return [((px + ox) / span, (py + oy) / span) for px, py in pts]


SHAPE_POLYGONS: dict[str, list[tuple]] = {
    "circle": _regular(48, 0),
    "square": [(0.04, 0.04), (0.96, 0.04), (0.96, 0.96), (0.04, 0.96)],
    "triangle": [(0.5, 0.0), (1.0, 0.93), (0.0, 0.93)],
    "star": _fit(_regular(10, -90, (0.5, 0.27))),
    "heart": _heart(),
    "diamond": [(0.5, 0.0), (0.88, 0.5), (0.5, 1.0), (0.12, 0.5)],
    "cross": _cross(0.19),
    "hexagon": _fit(_regular(6, 0)),
}


PatternMask = Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (y, x, period) -> bool


def _stripes(y: np.ndarray, x: np.ndarray, period: float) -> np.ndarray:
    return ((x + y) % period) < 0.4 * period  # diagonal stripes, 40 % coverage


def _dots(y: np.ndarray, x: np.ndarray, period: float) -> np.ndarray:
    row = np.floor(y / period)  # staggered grid: odd rows shifted by half a period
    dx = (x + (row % 2) * period / 2) % period - period / 2
    dy = y % period - period / 2
    return dx * dx + dy * dy < (0.28 * period) ** 2


PATTERN_MASKS: dict[str, PatternMask] = {
    "plain": lambda y, x, period: np.zeros(y.shape, bool),
    "striped": _stripes,
    "dotted": _dots,
}


def _pattern_mask(pattern: str, w: int, h: int, side: float) -> np.ndarray:
    """Where stripes/dots go inside a (h, w) box; the period scales with the object's side
    but never drops below 4.5 output pixels, so small objects keep a readable pattern."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return PATTERN_MASKS[pattern](y, x, max(4.5 * SUPERSAMPLE, side / 3.6))


def _draw_object(canvas: np.ndarray, obj: SceneObject) -> list[tuple[float, float]]:
    """Fill one object into canvas (S, S, 3) in place; return its outline polygon."""
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in obj.bbox)
    w, h = x1 - x0, y1 - y0
    poly = [(px * (w - 1), py * (h - 1)) for px, py in SHAPE_POLYGONS[obj.shape]]
    mask_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask_img).polygon(poly, fill=255)
    mask = np.asarray(mask_img) > 127
    region = canvas[y0:y1, x0:x1]
    region[mask] = COLOR_RGB[obj.color]
    ink = PATTERN_DARK if obj.color in LIGHT_COLORS else PATTERN_LIGHT
    region[mask & _pattern_mask(obj.pattern, w, h, w)] = ink
    return [(px + x0, py + y0) for px, py in poly]


def render_scene(scene: Scene, seed: int) -> Image.Image:
    """Draw `scene` as an RGB image of scene.image_size pixels; `seed` drives the texture."""
    side = scene.image_size * SUPERSAMPLE
    rng = np.random.default_rng(seed)
    canvas = np.clip(TEXTURES[scene.background](rng, side), 0, 255).astype(np.uint8)
    outlines = [(_draw_object(canvas, obj), obj.color) for obj in scene.objects]
    img = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(img)
    for poly, color in outlines:
        # A darker rim separates the object from busy textures of similar brightness.
        rim = tuple(int(c * 0.55) for c in COLOR_RGB[color])
        draw.polygon(poly, outline=rim, width=SUPERSAMPLE)
    return img.reduce(SUPERSAMPLE)
