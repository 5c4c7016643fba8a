"""Where the decoder looked: one panel per generated word, attention upsampled over the image.

The interpretability figure of Xu et al. (2015), "Show, Attend and Tell" (Figs. 2-3): each
word's attention weights over the R = rows x cols region grid (LSTM soft attention, or the
transformer's last-layer cross-attention averaged over heads) are upsampled smoothly (bicubic)
to the image size and drawn over it, with the word as the panel title.

Figures are built on matplotlib's object API with the Agg canvas, never `pyplot`, so plotting
changes no global backend or figure state and works on machines without a display.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from finecap.captioner import Caption
from finecap.io import atomic_write_bytes

PANEL_INCHES = 2.0
DPI = 100
DISPLAY_SIDE = 224
"""Longest image side in a panel, in pixels: big photos are shrunk before plotting."""


def upsample(weights: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Attention weights (R,) on a rows x cols grid -> a smooth (height, width) map.

    `size` is (width, height) as PIL gives it. Bicubic resampling maps each region's weight to
    the centre of its cell, so the map lines up with the image; overshoot is clipped at 0.
    """
    rows, cols = grid
    cells = Image.fromarray(np.asarray(weights, np.float32).reshape(rows, cols), mode="F")
    smooth = np.asarray(cells.resize(size, Image.Resampling.BICUBIC))
    return np.clip(smooth, 0.0, None)


def attention_figure(image: Image.Image, caption: Caption, columns: int = 5) -> Figure:
    """One panel per word of `caption` (its `attention` rows reshaped to its `grid`).

    An empty caption gives a single panel with the plain image.
    """
    if caption.attention is None or caption.grid is None:
        raise ValueError("caption has no attention over a square region grid to plot")
    attention = caption.attention.float().numpy()  # (len(words) + 1, R), last row: <eos>
    if attention.shape[0] < len(caption.words):
        raise ValueError(
            f"caption has {len(caption.words)} words but {attention.shape[0]} attention maps"
        )
    shown = image.convert("RGB")
    shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BICUBIC)
    pixels = np.asarray(shown)
    panels = max(len(caption.words), 1)
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    aspect = shown.height / shown.width
    fig = Figure(figsize=(PANEL_INCHES * columns, (PANEL_INCHES * aspect + 0.35) * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    for k in range(panels):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(pixels)
        ax.set_axis_off()
        if not caption.words:
            ax.set_title("(empty caption)", fontsize=10)
            continue
        heat = upsample(attention[k], caption.grid, shown.size)
        # Each panel on its own scale: the question is where this word looked, not how sharply.
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0.0, vmax=max(float(heat.max()), 1e-8))
        ax.set_title(caption.words[k], fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.12 / rows, wspace=0.04)
    return fig


def save_attention_figure(
    image: Image.Image, caption: Caption, path: str | os.PathLike, columns: int = 5
) -> Path:
    """Render `attention_figure` to a PNG at path, atomically (temp file + os.replace)."""
    buffer = io.BytesIO()
    attention_figure(image, caption, columns).savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def figure_names(paths: list[str]) -> list[str]:
    """`<stem>.png` per image path, `<stem>-2.png`, ... for repeated stems (case-insensitive)."""
    used: set[str] = set()
    names = []
    for path in paths:
        stem = Path(path).stem or "image"
        name, n = stem, 2
        while name.lower() in used:
            name, n = f"{stem}-{n}", n + 1
        used.add(name.lower())
        names.append(f"{name}.png")
    return names
