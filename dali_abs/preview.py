"""Preview pictures: PNG grids of images, masks, patch grids, fills and swapped samples.

Inputs are uint8 RGB HWC (0..255); masks bool HW (True = foreground); patch grids bool or
float (R, R), 1 = foreground.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dali_abs.files import write_image


def _resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))


def mask_overlay(img: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.5) -> np.ndarray:
    """Tint the foreground pixels of ``img`` (mask True = foreground)."""
    m = _resize(np.asarray(mask, np.uint8) * 255, img.shape[0], nearest=True)[:, :, None] > 127
    tint = (1 - alpha) * img + alpha * np.array(color, np.float32)
    return np.where(m, tint, img).astype(np.uint8)


def grid_overlay(img: np.ndarray, grid: np.ndarray, color=(255, 220, 0), alpha: float = 0.45) -> np.ndarray:
    """Shade the patches of an R x R grid (1 = foreground; floats shade by value) and draw patch lines."""
    g = np.asarray(grid, np.float32)
    r = g.shape[0]
    h, w = img.shape[:2]
    ys = (np.arange(h) * r // h)[:, None]
    xs = (np.arange(w) * r // w)[None, :]
    a = (alpha * g[ys, xs])[:, :, None]
    out = (1 - a) * img + a * np.array(color, np.float32)
    out[np.diff(ys[:, 0], prepend=-1) != 0, :, :] *= 0.55
    out[:, np.diff(xs[0], prepend=-1) != 0, :] *= 0.55
    return out.astype(np.uint8)


def save_grid(path: str | os.PathLike, rows: Sequence[Sequence[np.ndarray]], tile: int = 128, gap: int = 2) -> str:
    """Write a PNG with one row per entry of ``rows`` (each a list of uint8 HWC or HW tiles)."""
    ncols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (tile + gap) + gap, ncols * (tile + gap) + gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            t = np.asarray(t)
            if t.dtype == bool:
                t = t.astype(np.uint8) * 255
            if t.ndim == 2:
                t = np.repeat(t[:, :, None], 3, axis=2)
            y, x = gap + i * (tile + gap), gap + j * (tile + gap)
            canvas[y:y + tile, x:x + tile] = _resize(t, tile, nearest=t.shape[0] < tile // 2)
    write_image(path, canvas)
    return str(path)


def text_tile(lines: Sequence[str], side: int = 128, size: int = 12) -> np.ndarray:
    """A ``side`` x ``side`` uint8 HWC tile with ``lines`` of dark text on light gray (row labels of a grid)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (side, side), (235, 235, 235))
    draw = ImageDraw.Draw(im)
    f = font(size)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * (size + 3)), line, fill=(20, 20, 20), font=f)
    return np.asarray(im)


def caption(tile: np.ndarray, text: str, size: int = 11, fill=(0, 0, 0), pad: int = 5) -> np.ndarray:
    """``tile`` (uint8 HWC RGB) with ``text`` in white on a band of colour ``fill`` (default black),
    ``size + pad`` px high, along its bottom edge."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(tile, np.uint8))
    draw = ImageDraw.Draw(im)
    band = size + pad
    draw.rectangle([0, im.height - band, im.width, im.height], fill=fill)
    draw.text((3, im.height - band + 2), text, fill=(255, 255, 255), font=font(size))
    return np.asarray(im)


def font(size: int):
    """Pillow's default font at ``size`` px (the captions' and labels' font)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()
