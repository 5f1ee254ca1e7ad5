"""Background swap of one batch, fused with the crop, flip and resize that follow it: the
foreground of image n over the clean background of image ``partner[n]``, seen through sample
n's crop window. :func:`composite_gpu` launches ``kernels/composite.cu`` once per batch;
:func:`composite_cpu` is its NumPy twin (the reference the kernel is tested against: same
float32 arithmetic in the same order). :func:`composite_host` is the CPU loader's hot path:
the same kernel text compiled for the CPU (:mod:`dali_abs.loader.native`), falling back to
:func:`composite_cpu` where no C++ compiler is available.

Inputs (one batch of N samples):

* ``images``: N uint8 HWC RGB 0..255 images, each C-contiguous, **of any sizes** (a list, as
  DALI hands a batch to ``python_function``, or one ``[N,H,W,3]`` array): the foregrounds,
  and through ``partner`` the backgrounds;
* ``soft`` float32 ``[N,R,R]``: cached soft patch mask, **foreground** probability (1 =
  foreground) on an ``R x R`` grid over the image; grid values sit at patch centres,
  bilinear in between, edge-replicated at the borders;
* ``fills``: N uint8 HWC tiles of any sizes (list or array): image j's inpainted background
  over ``boxes[j]`` (its content outside the loose region is not used);
* ``boxes`` float32 ``[N,4]`` = ``(y0, x0, y1, x1)`` in 0..1 image coordinates, the region
  the tile covers; ``y1 <= y0`` or ``x1 <= x0`` means no fill region. For the fills that do
  not read the tile (gray, noise, pixels, patches) pass ``(0, 0, 1, 1)`` to fill the whole
  loose region;
* ``params``: the dict of :func:`dali_abs.loader.params.sample_params` (NumPy arrays);
* ``cfg``: :class:`~dali_abs.loader.params.SwapConfig` (``tight``, ``loose``, ``feather``,
  ``fill`` are read here);
* ``size``: ``(H, W)`` of the output, which is also the canvas the params are drawn on
  (default: the images' size when they all have one).

Geometry: the canvas is ``H x W`` canvas px; every image is stretched over it. Output pixel
``(y, x)`` of sample n looks at the canvas point ``px = c0 + (x' + 0.5) * ((c2 - c0) / W)``,
``py = c1 + (y + 0.5) * ((c3 - c1) / H)`` with ``(c0, c1, c2, c3) = crop[n]`` and
``x' = W-1-x`` when ``flip[n]`` (else ``x``). "Image k at a canvas point" is bilinear in image
k (``h_k x w_k`` px) at ``(px * (w_k / W) - 0.5, py * (h_k / H) - 0.5)``, edge-clamped, as
DALI's linear resize without antialiasing. Every quotient here is computed once per sample in
float32 by :func:`geometry` and handed to all three implementations. Then:

1. ``swap[n] == 0``: image n at the point (a plain crop-resize-flip).
2. background, ``j = partner[n]``: image j at the point, except where the point lies in
   ``boxes[j]`` (``y0*H <= py < y1*H``, same for x) and ``soft[j]`` there exceeds ``loose``:
   the fill. Fills: ``cached`` bilinear in the tile (``t_h x t_w``) at
   ``((py - y0*H) * (t_h / (y1*H - y0*H)) - 0.5, ...)``; ``gray`` 128; ``mean`` the tile's mean
   colour; ``noise`` ``mix32(seed + mix32(pix*3 + c)) >> 24``; ``pixels`` image j's flat
   pixel ``mix32(seed ^ mix32(pix + 0x9e3779b9)) % (h_j*w_j)``; ``patches`` the same offset
   inside canvas patch ``perm[j][patch of (cy, cx)]``, nearest in image j. ``(cy, cx)`` is the
   canvas pixel under the point, ``pix = cy*W + cx``, ``mix32`` = lowbias32,
   ``seed = noise_seed[j]``.
3. foreground: ``(xs, ys) = affine[n]`` applied to the point (canvas to canvas); outside
   ``[0,W) x [0,H)`` alpha = 0; else ``pt = soft[n]`` at ``(xs, ys)``, alpha = ``pt > tight``
   (``feather == 0``), or ``clamp(0.5 + (pt - tight) / (2*feather*|grad pt|), 0, 1)`` with
   the analytic gradient of the bilinear interpolant in canvas px (hard rule where it is 0).
   Colour: image n at ``(xs, ys)``.
4. ``out = clamp(floor(alpha*fg + (1-alpha)*bg + 0.5), 0, 255)`` in float32, uint8
   ``[N,H,W,3]`` HWC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dali_abs.loader.params import FILLS, SwapConfig, SwapError, require_thresholds

F32 = np.float32
_PARAMS = (("partner", np.int32, 1), ("swap", np.uint8, 1), ("affine", np.float32, 6),
           ("noise_seed", np.uint32, 1), ("perm", np.int32, None), ("fg_box", np.float32, 4),
           ("crop", np.float32, 4), ("flip", np.uint8, 1))
_M1, _M2, _GOLD = np.uint32(0x7FEB352D), np.uint32(0x846CA68B), np.uint32(0x9E3779B9)


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
    require_thresholds(cfg)
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


def _canvas(img: np.ndarray, g: np.ndarray, px, py) -> np.ndarray:
    return _rgb_bilerp(img, px * g[4] - F32(0.5), py * g[5] - F32(0.5))


def _round_u8(v):
    return np.clip(np.floor(v + F32(0.5)), 0, 255).astype(np.uint8)


def _patch_start(r, size, grid):
    return (r * size + grid - 1) // grid


def _fill(mode, b: Batch, j: int, gj, px, py, mean):
    """Fill colour float32 (H,W,3) of partner j at every canvas point (used where the fill region is)."""
    h, w, r = b.h, b.w, b.r
    shape = (h, w, 3)
    if mode == "gray":
        return np.full(shape, 128.0, F32)
    if mode == "mean":
        return np.broadcast_to(mean[j], shape)
    if mode == "cached":
        ty = (py - gj[6]) * gj[10] - F32(0.5)
        tx = (px - gj[7]) * gj[11] - F32(0.5)
        return _rgb_bilerp(b.fills[j], tx, ty)
    cy = np.clip(np.floor(py).astype(np.int64), 0, h - 1)
    cx = np.clip(np.floor(px).astype(np.int64), 0, w - 1)
    cy, cx = np.broadcast_arrays(cy, cx)
    pix = (cy * w + cx).astype(np.uint32)
    seed = b.params["noise_seed"][j]
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
    q = b.params["perm"][j][pr * r + pc].astype(np.int64)
    qr, qc = q // r, q % r
    ys = np.clip(_patch_start(qr, h, r) + cy - _patch_start(pr, h, r), 0, _patch_start(qr + 1, h, r) - 1)
    xs = np.clip(_patch_start(qc, w, r) + cx - _patch_start(pc, w, r), 0, _patch_start(qc + 1, w, r) - 1)
    return img[((2 * ys + 1) * hj) // (2 * h), ((2 * xs + 1) * wj) // (2 * w)].astype(F32)


def composite_cpu(images, soft, fills, boxes, params: dict, cfg: SwapConfig, size=None) -> np.ndarray:
    """NumPy twin of the kernel: uint8 [N,H,W,3] composited batch (a new array).

    One sample at a time, vectorised over its pixels, float32 throughout with the kernel's
    operations in the kernel's order (see the module docstring for the rule). Every quantity is
    computed at every pixel and then selected, which is simple rather than fast: the loader
    uses the compiled kernel text (:func:`composite_host`).
    """
    b = check_batch(images, soft, fills, boxes, params, cfg, size)
    n, h, w, r, p = b.n, b.h, b.w, b.r, b.params
    fw, fh = F32(w), F32(h)
    sx, sy = F32(r) / fw, F32(r) / fh
    tight, loose, feather = F32(cfg.tight), F32(cfg.loose), F32(cfg.feather)
    mean = mean_colour(np, b.fills) if cfg.fill == "mean" else None
    geo = geometry(b)
    out = np.empty((n, h, w, 3), np.uint8)
    xcol = np.arange(w, dtype=F32)
    yrow = np.arange(h, dtype=F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for s in range(n):
            gs = geo[s]
            xm = (F32(w - 1) - xcol) if p["flip"][s] else xcol
            px = (gs[0] + (xm + F32(0.5)) * gs[2])[None, :]
            py = (gs[1] + (yrow + F32(0.5)) * gs[3])[:, None]
            if not p["swap"][s]:
                out[s] = _round_u8(_canvas(b.images[s], gs, px, py))
                continue
            j = int(p["partner"][s])
            gj = geo[j]
            bg = _canvas(b.images[j], gj, px, py)
            in_box = (py >= gj[6]) & (py < gj[8]) & (px >= gj[7]) & (px < gj[9])
            pl = _grid_bilerp(b.soft[j], px * sx - F32(0.5), py * sy - F32(0.5))[0]
            region = in_box & (pl > loose)
            if region.any():
                bg = np.where(region[..., None], _fill(cfg.fill, b, j, gj, px, py, mean), bg)

            a = p["affine"][s]
            fb = p["fg_box"][s]
            in_fb = (px >= fb[0]) & (px < fb[2]) & (py >= fb[1]) & (py < fb[3])
            xs = a[0] * px + a[1] * py + a[2]
            ys = a[3] * px + a[4] * py + a[5]
            inside = in_fb & (xs >= 0) & (xs < fw) & (ys >= 0) & (ys < fh)
            xs, ys = np.where(inside, xs, F32(0)), np.where(inside, ys, F32(0))
            pt, dgx, dgy = _grid_bilerp(b.soft[s], xs * sx - F32(0.5), ys * sy - F32(0.5))
            alpha = (pt > tight).astype(F32)
            if feather > 0:
                gx, gy = dgx * sx, dgy * sy
                gm = np.sqrt(gx * gx + gy * gy)
                ramp = np.clip(F32(0.5) + (pt - tight) / (F32(2) * feather * gm), F32(0), F32(1))
                alpha = np.where(gm > 0, ramp, alpha)
            alpha = np.where(inside, alpha, F32(0))[..., None]
            fg = _canvas(b.images[s], gs, xs, ys)
            out[s] = np.where(alpha > 0, _round_u8(alpha * fg + (F32(1) - alpha) * bg), _round_u8(bg))
    return out


def composite_host(images, soft, fills, boxes, params: dict, cfg: SwapConfig, size=None) -> np.ndarray:
    """The CPU loader's compositing: :func:`dali_abs.loader.native.composite_native` (the
    kernel text compiled for the host, multi-threaded, same output) when it builds, else
    :func:`composite_cpu` (after one warning)."""
    from dali_abs.loader import native

    if native.native_available():
        return native.composite_native(images, soft, fills, boxes, params, cfg, size=size)
    return composite_cpu(images, soft, fills, boxes, params, cfg, size=size)


def launch_args(b: Batch, cfg: SwapConfig, xp, ptr, mean, out) -> tuple:
    """The kernel's arguments (after the per-sample pointer arrays) in ABS_COMPOSITE_PARAMS order."""
    p = b.params
    return (b.soft, xp.asarray(np.array([ptr(t) for t in b.fills], np.uint64)), xp.asarray(b.fill_hw),
            *(xp.asarray(p[k]) for k in ("partner", "swap", "affine", "noise_seed", "perm")), mean,
            xp.asarray(p["fg_box"]), xp.asarray(p["flip"]), xp.asarray(geometry(b)), out)


_MODULE = None


def _kernel():
    """The compiled abs_composite kernel (compiled once per process, on first use)."""
    global _MODULE
    if _MODULE is None:
        import cupy

        from dali_abs.kernels import source

        # --fmad=false: no fused multiply-adds, so the float32 results match the NumPy twin.
        _MODULE = cupy.RawModule(code=source("composite.cu"), options=("--fmad=false",))
    return _MODULE.get_function("abs_composite")


def prepare_gpu(images, soft, fills, boxes, params: dict, cfg: SwapConfig, size=None, out=None, block: int = 256):
    """Check a batch of CuPy arrays and upload its per-batch arguments; returns ``(launch, out)``
    where ``launch()`` runs the kernel once on CuPy's current stream (timing: launch alone).
    ``boxes`` may be NumPy or CuPy: only the host reads them (:func:`geometry`)."""
    import cupy

    b = check_batch(images, soft, fills, boxes, params, cfg, size)
    for name, arrays in (("images", b.images), ("fills", b.fills), ("soft", [soft])):
        for a in arrays:
            if not isinstance(a, cupy.ndarray):
                raise SwapError(f"composite_gpu needs CuPy arrays, got {name} of type {type(a).__name__}")
    shape = (b.n, b.h, b.w, 3)
    if out is None:
        out = cupy.empty(shape, cupy.uint8)
    elif out.dtype != cupy.uint8 or out.shape != shape or not out.flags.c_contiguous:
        raise SwapError(f"out must be a C-contiguous uint8 {shape} CuPy array, got {_desc(out)}")
    mean = mean_colour(cupy, b.fills) if cfg.fill == "mean" else cupy.zeros((b.n, 3), cupy.float32)
    ptr = lambda a: a.data.ptr
    args = (cupy.asarray(np.array([ptr(a) for a in b.images], np.uint64)), cupy.asarray(b.image_hw),
            *launch_args(b, cfg, cupy, ptr, mean, out),
            np.int32(b.n), np.int32(b.h), np.int32(b.w), np.int32(b.r),
            np.float32(cfg.tight), np.float32(cfg.loose), np.float32(cfg.feather), np.int32(FILLS.index(cfg.fill)))
    grid = min((b.n * b.h * b.w + block - 1) // block, 65535 * 4)
    kernel = _kernel()
    keep = (b.images, b.fills)  # the pointer tables point into these: keep them alive while launch() can run

    def launch():
        kernel((grid,), (block,), args)
        return keep

    return launch, out


def composite_gpu(images, soft, fills, boxes, params: dict, cfg: SwapConfig, size=None, out=None, block: int = 256):
    """CUDA version of :func:`composite_cpu` on CuPy arrays (same inputs; ``params`` may be
    NumPy or CuPy). One kernel launch for the whole batch on CuPy's current stream; returns
    ``out`` (a new uint8 [N,H,W,3] CuPy array unless one is given)."""
    launch, out = prepare_gpu(images, soft, fills, boxes, params, cfg, size, out, block)
    launch()
    return out
