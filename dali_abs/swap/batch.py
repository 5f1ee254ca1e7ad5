"""A checked batch of compositing inputs and the per-sample geometry every implementation shares.

:func:`check_batch` validates what the twin and both backends take (the conventions are in
:mod:`dali_abs.swap.twin`); :func:`geometry` derives the per-sample float32 quotients once, so
that the twin, the CPU build and the GPU kernel compute with the very same values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dali_abs.swap.config import SwapConfig, SwapError

F32 = np.float32
_PARAMS = (("partner", np.int32, 1), ("swap", np.uint8, 1), ("affine", np.float32, 6),
           ("noise_seed", np.uint32, 1), ("perm", np.int32, None), ("fg_box", np.float32, 4),
           ("crop", np.float32, 4), ("flip", np.uint8, 1))


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _desc(a) -> str:
    return f"{getattr(a, 'dtype', type(a).__name__)} {tuple(getattr(a, 'shape', ()))}"


@dataclass
class Batch:
    """A checked batch: per-sample images and tiles with their sizes, host params."""

    n: int
    h: int  # output (canvas) rows
    w: int  # output (canvas) columns
    r: int
    images: list
    image_hw: np.ndarray  # int32 (N,2)
    fills: list
    fill_hw: np.ndarray  # int32 (N,2)
    soft: object
    boxes: object
    params: dict


def _samples(name: str, a, n: int | None) -> list:
    """A list of N uint8 HWC RGB C-contiguous arrays from a list or an [N,H,W,3] array."""
    if hasattr(a, "ndim") and hasattr(a, "dtype"):
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != 3:
            raise SwapError(f"{name} must be uint8 [N,H,W,3] (HWC RGB 0..255) or a list of uint8 [H,W,3], "
                            f"got {_desc(a)}")
        if not a.flags.c_contiguous:
            raise SwapError(f"{name} must be C-contiguous (got strides {a.strides} for shape {tuple(a.shape)}); "
                            "copy it with ascontiguousarray first")
        items = [a[i] for i in range(a.shape[0])]
    elif isinstance(a, (list, tuple)):
        items = list(a)
    else:
        raise SwapError(f"{name} must be an array or a list of arrays, got {type(a).__name__}")
    if n is not None and len(items) != n:
        raise SwapError(f"{name} must hold N = {n} samples, got {len(items)}")
    for i, x in enumerate(items):
        if not hasattr(x, "dtype") or x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3 \
                or x.shape[0] < 1 or x.shape[1] < 1:
            raise SwapError(f"{name}[{i}] must be uint8 [H,W,3] (HWC RGB 0..255) with H, W >= 1, got {_desc(x)}")
        if not x.flags.c_contiguous:
            raise SwapError(f"{name}[{i}] must be C-contiguous (got strides {x.strides}); "
                            "copy it with ascontiguousarray first")
    return items


def check_batch(images, soft, fills, boxes, params, cfg, size=None) -> Batch:
    """Validate a batch (see the module docstring); raise :class:`SwapError` naming what is wrong."""
    if not isinstance(cfg, SwapConfig):
        raise SwapError(f"cfg must be a SwapConfig, got {type(cfg).__name__}")
    imgs = _samples("images", images, None)
    n = len(imgs)
    if n < 1:
        raise SwapError("images is empty: a batch needs at least one sample")
    image_hw = np.array([x.shape[:2] for x in imgs], np.int32)
    if size is None:
        if (image_hw != image_hw[0]).any():
            sizes = np.unique(image_hw, axis=0)
            raise SwapError(f"images differ in size ({', '.join(f'{a}x{b}' for a, b in sizes[:4])}"
                            f"{', ...' if len(sizes) > 4 else ''}); pass size=(H, W) for the output")
        h, w = (int(v) for v in image_hw[0])
    else:
        try:
            h, w = (int(size), int(size)) if np.isscalar(size) else (int(v) for v in size)
        except (TypeError, ValueError):
            raise SwapError(f"size must be an int or (H, W), got {size!r}") from None
        if h < 1 or w < 1:
            raise SwapError(f"size must be positive, got {size!r}")
    for name, a in (("soft", soft), ("boxes", boxes)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise SwapError(f"{name} must be an array, got {type(a).__name__}")
    if soft.dtype != np.float32 or soft.ndim != 3 or soft.shape[0] != n or soft.shape[1] != soft.shape[2] or soft.shape[1] < 1:
        raise SwapError(f"soft must be float32 [N,R,R] with N = {n} (foreground probability per patch), got {_desc(soft)}")
    r = int(soft.shape[1])
    tiles = _samples("fills", fills, n)
    if boxes.dtype != np.float32 or tuple(boxes.shape) != (n, 4):
        raise SwapError(f"boxes must be float32 [N,4] = (y0, x0, y1, x1) with N = {n}, got {_desc(boxes)}")
    for name, a in (("soft", soft), ("boxes", boxes)):
        if not a.flags.c_contiguous:
            raise SwapError(f"{name} must be C-contiguous (got strides {a.strides} for shape {tuple(a.shape)}); "
                            "copy it with ascontiguousarray first")
    if not isinstance(params, dict):
        raise SwapError(f"params must be the dict returned by sample_params, got {type(params).__name__}")
    missing = [k for k, _, _ in _PARAMS if k not in params]
    if missing:
        raise SwapError(f"params lacks {', '.join(missing)} (has {', '.join(sorted(params))})")
    p = {}
    for key, dtype, cols in _PARAMS:
        a = np.ascontiguousarray(_host(params[key]))
        shape = (n, r * r) if cols is None else (n,) if cols == 1 else (n, cols)  # perm: (N, R*R) even for R = 1
        if a.dtype != dtype or a.shape != shape:
            raise SwapError(f"params[{key!r}] must be {np.dtype(dtype).name} {shape}, got {_desc(a)}")
        p[key] = a
    if p["partner"].min() < 0 or p["partner"].max() >= n:
        raise SwapError(f"params['partner'] must index the batch (0..{n - 1}), got values "
                        f"{int(p['partner'].min())}..{int(p['partner'].max())}")
    if p["perm"].min() < 0 or p["perm"].max() >= r * r:
        raise SwapError(f"params['perm'] must hold patch indices 0..{r * r - 1}, got values "
                        f"{int(p['perm'].min())}..{int(p['perm'].max())}")
    fill_hw = np.array([t.shape[:2] for t in tiles], np.int32)
    return Batch(n, h, w, r, imgs, image_hw, tiles, fill_hw, soft, boxes, p)


GEO_COLUMNS = ("crop_x0", "crop_y0", "crop_sx", "crop_sy", "img_sx", "img_sy",
               "box_y0", "box_x0", "box_y1", "box_x1", "tile_sy", "tile_sx")


def geometry(b: Batch) -> np.ndarray:
    """float32 (N,12) per-sample geometry (columns :data:`GEO_COLUMNS`, the kernel's ABS_GEO_*):
    crop origin and canvas px per output px; image px per canvas px; the fill box in canvas px;
    tile px per canvas px. Computed once here so that the twin, the native build and the GPU
    kernel use the very same float32 values."""
    fw, fh = F32(b.w), F32(b.h)
    c = b.params["crop"]
    box = _host(b.boxes).astype(F32)
    g = np.empty((b.n, len(GEO_COLUMNS)), F32)
    g[:, 0], g[:, 1] = c[:, 0], c[:, 1]
    g[:, 2], g[:, 3] = (c[:, 2] - c[:, 0]) / fw, (c[:, 3] - c[:, 1]) / fh
    g[:, 4], g[:, 5] = b.image_hw[:, 1].astype(F32) / fw, b.image_hw[:, 0].astype(F32) / fh
    g[:, 6], g[:, 7], g[:, 8], g[:, 9] = box[:, 0] * fh, box[:, 1] * fw, box[:, 2] * fh, box[:, 3] * fw
    with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes: never read (no fill region)
        g[:, 10] = b.fill_hw[:, 0].astype(F32) / (g[:, 8] - g[:, 6])
        g[:, 11] = b.fill_hw[:, 1].astype(F32) / (g[:, 9] - g[:, 7])
    return g


def mean_colour(xp, fills: list):
    """float32 (N,3) mean colour of each tile (exact int64 sums, one float64 division)."""
    return xp.stack([(t.reshape(-1, 3).sum(axis=0, dtype=xp.int64) / float(t.shape[0] * t.shape[1]))
                     for t in fills]).astype(xp.float32)


def launch_args(b: Batch, cfg: SwapConfig, xp, ptr, mean, out) -> tuple:
    """The kernel's arguments (after the per-sample pointer arrays) in ABS_COMPOSITE_PARAMS order."""
    p = b.params
    return (b.soft, xp.asarray(np.array([ptr(t) for t in b.fills], np.uint64)), xp.asarray(b.fill_hw),
            *(xp.asarray(p[k]) for k in ("partner", "swap", "affine", "noise_seed", "perm")), mean,
            xp.asarray(p["fg_box"]), xp.asarray(p["flip"]), xp.asarray(geometry(b)), out)
