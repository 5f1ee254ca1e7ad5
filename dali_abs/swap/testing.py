"""Random compositing inputs for tests and for checks on a GPU machine (``benchmarks/gpu_check.py``)."""

from __future__ import annotations

import numpy as np


def random_batch(rng: np.random.Generator, n: int = 8, h: int = 48, w: int = 40, r: int = 8, f: int = 16,
                 degenerate_box: bool = False):
    """(images uint8 [N,H,W,3], soft float32 [N,R,R], fills uint8 [N,F,F,3], boxes float32 [N,4]):
    random pixels, blob-shaped foreground probabilities, and the boxes of their loose (> 0.1)
    cells in 0..1 image coordinates; ``degenerate_box``: the last box is empty (no fill region)."""
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:r, 0:r] + 0.5
    cy, cx = rng.uniform(0.3 * r, 0.7 * r, (2, n, 1, 1))
    rad = rng.uniform(0.15 * r, 0.35 * r, (n, 1, 1))
    soft = np.clip(1.3 - np.hypot(yy - cy, xx - cx) / rad, 0, 1).astype(np.float32)
    fills = rng.integers(0, 256, (n, f, f, 3), dtype=np.uint8)
    loose = soft > 0.1
    rows, cols = loose.any(2), loose.any(1)
    idx = np.arange(r)
    boxes = np.stack([np.where(rows, idx, r).min(1), np.where(cols, idx, r).min(1),
                      np.where(rows, idx, -1).max(1) + 1, np.where(cols, idx, -1).max(1) + 1], 1)
    boxes = (boxes / r).astype(np.float32)
    if degenerate_box:
        boxes[-1] = (0.5, 0.5, 0.5, 0.7)  # y1 <= y0: no fill region
    return images, soft, fills, boxes


def ragged(rng: np.random.Generator, n: int, lo: int = 20, hi: int = 70, tile_lo: int = 3, tile_hi: int = 24):
    """(images, fills): lists of N images and fill tiles each of its own size, as DALI hands them over."""
    images = [rng.integers(0, 256, (int(rng.integers(lo, hi)), int(rng.integers(lo, hi)), 3), dtype=np.uint8)
              for _ in range(n)]
    fills = [rng.integers(0, 256, (int(rng.integers(tile_lo, tile_hi)), int(rng.integers(tile_lo, tile_hi)), 3),
                          dtype=np.uint8) for _ in range(n)]
    return images, fills
