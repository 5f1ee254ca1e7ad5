"""The compositing rule, and its NumPy reference twin.

Background swap of one batch, fused with the crop, flip and resize that follow it: the
foreground of image n over the clean background of image ``partner[n]``, seen through sample
n's crop window. The rule is written once as kernel text, ``composite.cu``, which the GPU
backend launches (:mod:`dali_abs.swap.gpu`) and the CPU backend compiles for the host
(:mod:`dali_abs.swap.cpu`). :func:`composite` here is its twin: the same float32 arithmetic in
the same order on the same records, the reference both backends are tested against
(:func:`composite_cpu` takes the kornia-style inputs below).

Inputs (one batch of N samples, checked and packed by :func:`dali_abs.swap.batch.batch`):

* ``images``: N uint8 HWC RGB 0..255 images, each C-contiguous, **of any sizes** (a list, as
  DALI hands a batch to ``python_function``, or one ``[N,H,W,3]`` array): the foregrounds,
  and through ``partner`` the backgrounds;
* ``soft`` float32 ``[N,R,R]``: cached soft patch mask, **foreground** probability (1 =
  foreground) on an ``R x R`` grid over the image; for the alpha, grid values sit at patch
  centres, bilinear in between, edge-replicated at the borders; for the fill region, per cell;
* ``fills``: N uint8 HWC tiles of any sizes (list or array): image j's inpainted background
  over ``boxes[j]`` (its content outside the loose region is not used);
* ``boxes`` float32 ``[N,4]`` = ``(y0, x0, y1, x1)`` in 0..1 image coordinates, the region
  the tile covers; ``y1 <= y0`` or ``x1 <= x0`` means no fill region. For the fills that do
  not read the tile (gray, noise, pixels, patches) pass ``(0, 0, 1, 1)`` to fill the whole
  loose region;
* ``params``: the dict of :func:`dali_abs.swap.sampling.sample_params` (NumPy arrays);
* ``cfg``: :class:`~dali_abs.swap.config.SwapConfig` (``tight``, ``loose``, ``feather``,
  ``fill`` are read here);
* ``size``: ``(H, W)`` of the output, which is also the canvas the params are drawn on
  (default: the images' size when they all have one).

Geometry: the canvas is ``H x W`` canvas px; every image is stretched over it. Output pixel
``(y, x)`` of sample n looks at the canvas point ``px = c0 + (x' + 0.5) * ((c2 - c0) / W)``,
``py = c1 + (y + 0.5) * ((c3 - c1) / H)`` with ``(c0, c1, c2, c3) = crop[n]`` and
``x' = W-1-x`` when ``flip[n]`` (else ``x``). "Image k at a canvas point" is bilinear in image
k (``h_k x w_k`` px) at ``(px * (w_k / W) - 0.5, py * (h_k / H) - 0.5)``, edge-clamped, as
DALI's linear resize without antialiasing. Every quotient here is computed once per sample in
float32 (:func:`~dali_abs.swap.batch.pack_samples`, :meth:`~dali_abs.swap.batch.Batch.refs`) and
read by all three implementations; only the tile's px per canvas px is divided out where it is
used (the same float32 division everywhere). Then:

1. ``swap[n] == 0``: image n at the point (a plain crop-resize-flip).
2. background: ``backdrop_rgb[n]`` where ``backdrop[n]`` (a constant colour; nothing of any
   image). Else, ``j = partner[n]``: image j at the point, except where the point lies in
   ``boxes[j]`` (``y0*H <= py < y1*H``, same for x) and in a loose cell of j, the cell
   ``(floor(py*R/H), floor(px*R/W))`` (clamped) with ``soft[j] > loose``: the fill. The fill
   region goes by cells, not bilinear, because the cells are exactly what the fill was computed
   for; a bilinear loose mask reaches into the box's other cells, which hold a placeholder. Fills: ``cached`` bilinear in the tile (``t_h x t_w``) at
   ``((py - y0*H) * (t_h / (y1*H - y0*H)) - 0.5, ...)``; ``gray`` 128; ``mean`` the tile's mean
   colour; ``noise`` ``mix32(seed + mix32(pix*3 + c)) >> 24``; ``pixels`` image j's flat
   pixel ``mix32(seed ^ mix32(pix + 0x9e3779b9)) % (h_j*w_j)``; ``patches`` the same offset
   inside canvas patch ``perm[j][patch of (cy, cx)]``, nearest in image j. ``(cy, cx)`` is the
   canvas pixel under the point, ``pix = cy*W + cx``, ``mix32`` = lowbias32,
   ``seed = noise_seed[j]``.
3. foreground: ``(xs, ys) = affine[n]`` applied to the point (canvas to canvas); outside
   ``fg_box[n]`` (empty: nothing pasted) or outside ``[0,W) x [0,H)`` alpha = 0; else ``pt = soft[n]`` at ``(xs, ys)``, alpha = ``pt > tight``
   (``feather == 0``), or ``clamp(0.5 + (pt - tight) / (2*feather*|grad pt|), 0, 1)`` with
   the analytic gradient of the bilinear interpolant in canvas px (hard rule where it is 0).
   Colour: image n at ``(xs, ys)``.
4. ``out = clamp(floor(alpha*fg + (1-alpha)*bg + 0.5), 0, 255)`` in float32, uint8
   ``[N,H,W,3]`` HWC.
"""

from __future__ import annotations

import numpy as np

from dali_abs.swap.batch import F32, Batch, batch, mean_colour
from dali_abs.swap.config import SwapConfig, SwapError

_M1, _M2, _GOLD = np.uint32(0x7FEB352D), np.uint32(0x846CA68B), np.uint32(0x9E3779B9)


def _mix32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * _M1
    x = x ^ (x >> np.uint32(15))
    x = x * _M2
    return x ^ (x >> np.uint32(16))


def _corners(g, size):
    """floor / fraction / clamped neighbour indices of coordinates (the kernel's int casts)."""
    g0 = np.floor(g)
    frac = g - g0
    i0 = np.clip(np.nan_to_num(g0, nan=0.0), -2, size + 1).astype(np.intp)
    return frac, np.clip(i0, 0, size - 1), np.clip(i0 + 1, 0, size - 1)


def _rgb_bilerp(img: np.ndarray, gx, gy) -> np.ndarray:
    """abs_rgb_bilerp: image (ih,iw,3) at pixel coordinates gx, gy (broadcastable) -> float32 (...,3)."""
    ih, iw = img.shape[:2]
    gx, gy = np.broadcast_arrays(gx, gy)
    ax, x0, x1 = _corners(gx, iw)
    ay, y0, y1 = _corners(gy, ih)
    v00, v01 = img[y0, x0].astype(F32), img[y0, x1].astype(F32)
    v10, v11 = img[y1, x0].astype(F32), img[y1, x1].astype(F32)
    ax, ay = ax[..., None], ay[..., None]
    top, bot = v00 + (v01 - v00) * ax, v10 + (v11 - v10) * ax
    return top + (bot - top) * ay


def _grid_bilerp(g: np.ndarray, gx, gy):
    """abs_grid_bilerp: grid (r,r) at grid coordinates -> (value, d/dgx, d/dgy), float32."""
    r = g.shape[0]
    gx, gy = np.broadcast_arrays(gx, gy)
    fx, x0, x1 = _corners(gx, r)
    fy, y0, y1 = _corners(gy, r)
    v00, v01, v10, v11 = g[y0, x0], g[y0, x1], g[y1, x0], g[y1, x1]
    d0, d1 = v01 - v00, v11 - v10
    top, bot = v00 + d0 * fx, v10 + d1 * fx
    dgy = bot - top
    return top + dgy * fy, d0 + (d1 - d0) * fy, dgy


def _canvas(img: np.ndarray, ref, px, py) -> np.ndarray:
    """abs_canvas_sample: image k at canvas points (``ref``: its refs record)."""
    return _rgb_bilerp(img, px * ref["img_sx"] - F32(0.5), py * ref["img_sy"] - F32(0.5))


def _cell(g, r):
    """abs_cell: the grid cell 0..r-1 of grid coordinates (canvas px times R / side)."""
    return np.clip(np.floor(g), 0, r - 1).astype(np.intp)


def _round_u8(v):
    return np.clip(np.floor(v + F32(0.5)), 0, 255).astype(np.uint8)


def _patch_start(r, size, grid):
    return (r * size + grid - 1) // grid


def _fill(mode, b: Batch, j: int, rj, ref_j, px, py, mean):
    """Fill colour float32 (H,W,3) of partner j at every canvas point (used where the fill region is);
    ``rj``: j's parameter record, ``ref_j``: its refs record."""
    h, w, r = b.h, b.w, b.r
    shape = (h, w, 3)
    if mode == "gray":
        return np.full(shape, 128.0, F32)
    if mode == "mean":
        return np.broadcast_to(mean[j], shape)
    if mode == "cached":
        tile_sy = F32(ref_j["th"]) / (rj["box_y1"] - rj["box_y0"])  # tile px per canvas px
        tile_sx = F32(ref_j["tw"]) / (rj["box_x1"] - rj["box_x0"])
        ty = (py - rj["box_y0"]) * tile_sy - F32(0.5)
        tx = (px - rj["box_x0"]) * tile_sx - F32(0.5)
        return _rgb_bilerp(b.fills[j], tx, ty)
    cy = np.clip(np.floor(py).astype(np.int64), 0, h - 1)
    cx = np.clip(np.floor(px).astype(np.int64), 0, w - 1)
    cy, cx = np.broadcast_arrays(cy, cx)
    pix = (cy * w + cx).astype(np.uint32)
    seed = rj["noise_seed"]
    img = b.images[j]
    hj, wj = img.shape[:2]
    if mode == "noise":
        idx = pix[..., None] * np.uint32(3) + np.arange(3, dtype=np.uint32)
        return (_mix32(seed + _mix32(idx)) >> np.uint32(24)).astype(F32)
    if mode == "pixels":
        at = (_mix32(seed ^ _mix32(pix + _GOLD)) % np.uint32(hj * wj)).astype(np.int64)
        return img.reshape(-1, 3)[at].astype(F32)
    # patches
    pr, pc = (cy * r) // h, (cx * r) // w
    q = np.clip(rj["perm"][pr * r + pc].astype(np.int64), 0, r * r - 1)
    qr, qc = q // r, q % r
    ys = np.clip(_patch_start(qr, h, r) + cy - _patch_start(pr, h, r), 0, _patch_start(qr + 1, h, r) - 1)
    xs = np.clip(_patch_start(qc, w, r) + cx - _patch_start(pc, w, r), 0, _patch_start(qc + 1, w, r) - 1)
    return img[((2 * ys + 1) * hj) // (2 * h), ((2 * xs + 1) * wj) // (2 * w)].astype(F32)


def composite(b: Batch) -> np.ndarray:
    """NumPy twin of the kernel: uint8 [N,H,W,3] composited batch (a new array).

    One sample at a time, vectorised over its pixels, float32 throughout with the kernel's
    operations in the kernel's order (see the module docstring for the rule), reading the same
    records (fields by name). Every quantity is computed at every pixel and then selected,
    which is simple rather than fast: the loader runs the kernel text (:mod:`dali_abs.swap.cpu`).
    """
    if b.on_gpu:
        raise SwapError("the twin composites host (NumPy) batches; this one holds CuPy arrays")
    cfg = b.cfg
    n, h, w, r = b.n, b.h, b.w, b.r
    fw, fh = F32(w), F32(h)
    sx, sy = F32(r) / fw, F32(r) / fh
    tight, loose, feather = F32(cfg.tight), F32(cfg.loose), F32(cfg.feather)
    mean = mean_colour(np, b.fills) if cfg.fill == "mean" else None
    recs = b.records()
    refs = b.refs(lambda a: 0)  # sizes and scales only: the twin indexes the arrays themselves
    soft = recs["soft"].reshape(n, r, r)
    out = np.empty((n, h, w, 3), np.uint8)
    xcol = np.arange(w, dtype=F32)
    yrow = np.arange(h, dtype=F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for s in range(n):
            rs, ref_s = recs[s], refs[s]
            xm = (F32(w - 1) - xcol) if rs["flip"] else xcol
            px = (rs["crop_x0"] + (xm + F32(0.5)) * rs["crop_sx"])[None, :]
            py = (rs["crop_y0"] + (yrow + F32(0.5)) * rs["crop_sy"])[:, None]
            if not rs["swap"]:
                out[s] = _round_u8(_canvas(b.images[s], ref_s, px, py))
                continue
            if rs["backdrop"]:  # a constant colour instead of any image's background
                bg = np.broadcast_to(rs["backdrop_rgb"].astype(F32), (h, w, 3))
            else:
                j = int(rs["partner"])
                j = j if 0 <= j < n else s
                rj, ref_j = recs[j], refs[j]
                bg = _canvas(b.images[j], ref_j, px, py)
                in_box = (py >= rj["box_y0"]) & (py < rj["box_y1"]) & (px >= rj["box_x0"]) & (px < rj["box_x1"])
                cell = soft[j][_cell(py * sy, r), _cell(px * sx, r)]  # by cells: the cells the fill was made for
                region = in_box & (cell > loose)
                if region.any():
                    bg = np.where(region[..., None], _fill(cfg.fill, b, j, rj, ref_j, px, py, mean), bg)

            a = rs["affine"]
            fb = rs["fg_box"]
            in_fb = (px >= fb[0]) & (px < fb[2]) & (py >= fb[1]) & (py < fb[3])
            xs = a[0] * px + a[1] * py + a[2]
            ys = a[3] * px + a[4] * py + a[5]
            inside = in_fb & (xs >= 0) & (xs < fw) & (ys >= 0) & (ys < fh)
            xs, ys = np.where(inside, xs, F32(0)), np.where(inside, ys, F32(0))
            pt, dgx, dgy = _grid_bilerp(soft[s], xs * sx - F32(0.5), ys * sy - F32(0.5))
            alpha = (pt > tight).astype(F32)
            if feather > 0:
                gx, gy = dgx * sx, dgy * sy
                gm = np.sqrt(gx * gx + gy * gy)
                ramp = np.clip(F32(0.5) + (pt - tight) / (F32(2) * feather * gm), F32(0), F32(1))
                alpha = np.where(gm > 0, ramp, alpha)
            alpha = np.where(inside, alpha, F32(0))[..., None]
            fg = _canvas(b.images[s], ref_s, xs, ys)
            out[s] = np.where(alpha > 0, _round_u8(alpha * fg + (F32(1) - alpha) * bg), _round_u8(bg))
    return out


def composite_cpu(images, soft, fills, boxes, params: dict, cfg: SwapConfig, size=None) -> np.ndarray:
    """The twin on the kornia-style inputs: :func:`composite` of :func:`~dali_abs.swap.batch.batch`."""
    return composite(batch(images, soft, fills, boxes, params, cfg, size))


def normalize(images: np.ndarray, norm) -> np.ndarray:
    """uint8 [N,H,W,3] -> [N,3,H,W] ``norm.dtype`` (:class:`~dali_abs.swap.config.Normalize`):
    ``(x - mean) * (1 / std)`` in float32, as DALI's crop_mirror_normalize; the reference of
    :func:`dali_abs.swap.cpu.normalize`."""
    mean, inv = norm.constants()
    out = (np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32) - mean[:, None, None]) \
        * inv[:, None, None]
    return out.astype(np.float16) if norm.dtype == "float16" else out
