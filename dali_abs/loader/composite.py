"""Background swap of one batch: the foreground of image n over the clean background of image
``partner[n]``. :func:`composite_gpu` launches ``kernels/composite.cu`` once per batch;
:func:`composite_cpu` is its NumPy twin (the reference the kernel is tested against: same
float32 arithmetic in the same order, within 1 LSB). :func:`composite_host` is the CPU
loader's hot path: the same kernel text compiled for the CPU (:mod:`dali_abs.loader.native`),
falling back to :func:`composite_cpu` where no C++ compiler is available.

Inputs (one batch of N samples, ``H x W`` fixed for the batch; all C-contiguous):

* ``images`` uint8 ``[N,H,W,3]`` RGB 0..255 (HWC; NCHW nowhere here): the foregrounds, and
  through ``partner`` the backgrounds;
* ``soft`` float32 ``[N,R,R]``: cached soft patch mask, **foreground** probability (1 =
  foreground) on an ``R x R`` grid; grid values sit at patch centres
  ``((c+0.5)*W/R, (r+0.5)*H/R)``, bilinear in between, edge-replicated at the borders;
* ``fills`` uint8 ``[N,F,F,3]``: image j's inpainted background over ``boxes[j]`` (its
  content outside the loose region is not used);
* ``boxes`` float32 ``[N,4]`` = ``(y0, x0, y1, x1)`` in 0..1 image coordinates, the region
  the tile covers; ``y1 <= y0`` or ``x1 <= x0`` means no fill region. For the fills that do
  not read the tile (gray, noise, pixels, patches) pass ``(0, 0, 1, 1)`` to fill the whole
  loose region;
* ``params``: the dict of :func:`dali_abs.loader.params.sample_params` (NumPy arrays; for
  the GPU they may also be CuPy arrays);
* ``cfg``: :class:`~dali_abs.loader.params.SwapConfig` (``tight``, ``loose``, ``feather``,
  ``fill`` are read here).

Per output pixel ``(n, y, x)`` with centre ``(px, py) = (x+0.5, y+0.5)``:

1. ``swap[n] == 0``: the input pixel, untouched.
2. background, ``j = partner[n]``: ``pl = soft[j]`` at ``(px, py)``; where ``pl > loose`` and
   the centre lies in ``boxes[j]`` (``y0 <= py/H < y1``, same for x) the fill value, else
   ``images[j, y, x]``. Fills: ``cached`` bilinear in the tile at
   ``((py/H - y0)/(y1 - y0)*F - 0.5, ...)`` (clamped); ``gray`` 128; ``mean`` the tile's
   mean colour; ``noise`` ``mix32(seed + mix32(pix*3 + c)) >> 24`` with ``pix = y*W + x``;
   ``pixels`` image j at flat pixel ``mix32(seed ^ mix32(pix + 0x9e3779b9)) % (H*W)``;
   ``patches`` the same offset inside patch ``perm[j][patch of (y, x)]`` of image j
   (``mix32`` = lowbias32, ``seed = noise_seed[j]``).
3. foreground: ``(xs, ys) = affine[n]`` applied to ``(px, py)``; outside ``[0,W) x [0,H)``
   alpha = 0; else ``pt = soft[n]`` at ``(xs, ys)``, alpha = ``pt > tight`` (``feather ==
   0``), or ``clamp(0.5 + (pt - tight) / (2*feather*|grad pt|), 0, 1)`` with the analytic
   gradient of the bilinear interpolant in source px (hard rule where it is 0). Colour:
   ``images[n, floor(ys), floor(xs)]`` (nearest, clamped).
4. ``out = clamp(floor(alpha*fg + (1-alpha)*bg + 0.5), 0, 255)`` in float32.
"""

from __future__ import annotations

import numpy as np

from dali_abs.loader.params import FILLS, SwapConfig, SwapError

F32 = np.float32
_PARAMS = (("partner", np.int32, 1), ("swap", np.uint8, 1), ("affine", np.float32, 6),
           ("noise_seed", np.uint32, 1), ("perm", np.int32, None), ("fg_box", np.float32, 4))
_M1, _M2, _GOLD = np.uint32(0x7FEB352D), np.uint32(0x846CA68B), np.uint32(0x9E3779B9)


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _desc(a) -> str:
    return f"{getattr(a, 'dtype', type(a).__name__)} {tuple(getattr(a, 'shape', ()))}"


def _check(images, soft, fills, boxes, params, cfg):
    """Validate the batch; return (n, h, w, r, f, host params)."""
    if not isinstance(cfg, SwapConfig):
        raise SwapError(f"cfg must be a SwapConfig, got {type(cfg).__name__}")
    for name, a in (("images", images), ("soft", soft), ("fills", fills), ("boxes", boxes)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise SwapError(f"{name} must be an array, got {type(a).__name__}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise SwapError(f"images must be uint8 [N,H,W,3] (HWC RGB 0..255), got {_desc(images)}")
    n, h, w = (int(v) for v in images.shape[:3])
    if n < 1 or h < 1 or w < 1:
        raise SwapError(f"images must hold at least one pixel of one sample, got shape {tuple(images.shape)}")
    if soft.dtype != np.float32 or soft.ndim != 3 or soft.shape[0] != n or soft.shape[1] != soft.shape[2] or soft.shape[1] < 1:
        raise SwapError(f"soft must be float32 [N,R,R] with N = {n} (foreground probability per patch), got {_desc(soft)}")
    r = int(soft.shape[1])
    if fills.dtype != np.uint8 or fills.ndim != 4 or fills.shape[0] != n or fills.shape[1] != fills.shape[2] \
            or fills.shape[3] != 3 or fills.shape[1] < 1:
        raise SwapError(f"fills must be uint8 [N,F,F,3] with N = {n}, got {_desc(fills)}")
    f = int(fills.shape[1])
    if boxes.dtype != np.float32 or tuple(boxes.shape) != (n, 4):
        raise SwapError(f"boxes must be float32 [N,4] = (y0, x0, y1, x1) with N = {n}, got {_desc(boxes)}")
    for name, a in (("images", images), ("soft", soft), ("fills", fills), ("boxes", boxes)):
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
        cols = r * r if cols is None else cols
        shape = (n,) if cols == 1 else (n, cols)
        if a.dtype != dtype or a.shape != shape:
            raise SwapError(f"params[{key!r}] must be {np.dtype(dtype).name} {shape}, got {_desc(a)}")
        p[key] = a
    if p["partner"].min() < 0 or p["partner"].max() >= n:
        raise SwapError(f"params['partner'] must index the batch (0..{n - 1}), got values "
                        f"{int(p['partner'].min())}..{int(p['partner'].max())}")
    if p["perm"].min() < 0 or p["perm"].max() >= r * r:
        raise SwapError(f"params['perm'] must hold patch indices 0..{r * r - 1}, got values "
                        f"{int(p['perm'].min())}..{int(p['perm'].max())}")
    return n, h, w, r, f, p


def _mean_colour(xp, fills):
    """float32 (N,3) mean colour of each tile (exact int64 sums, one float64 division)."""
    n, f = fills.shape[0], fills.shape[1]
    return (fills.reshape(n, f * f, 3).sum(axis=1, dtype=xp.int64) / float(f * f)).astype(xp.float32)


def _mix32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * _M1
    x = x ^ (x >> np.uint32(15))
    x = x * _M2
    return x ^ (x >> np.uint32(16))


def _lerp_setup(g: np.ndarray, size: int, in_range: bool = False):
    """floor / fraction / clamped neighbour indices of grid coordinates (any shape).
    ``in_range``: the caller guarantees -1 <= g < size (fewer clamps)."""
    g0 = np.floor(g)
    frac = g - g0
    if in_range:
        i0 = g0.astype(np.int32)
        return frac, np.maximum(i0, 0), np.minimum(i0 + 1, size - 1)
    i0 = np.clip(g0, -1, size).astype(np.intp)
    return frac, np.clip(i0, 0, size - 1), np.clip(i0 + 1, 0, size - 1)


def _grid_sep(grids, gx, gy, grads=False):
    """Bilinear sample of grids (m,R,R) at separable coordinates gx (W,)|(m,W), gy (H,)|(m,H)
    -> (m,H,W) [, d/dgx, d/dgy]: the arithmetic of abs_grid_bilerp, row pass first."""
    m, r = grids.shape[0], grids.shape[1]
    fx, x0, x1 = _lerp_setup(gx, r, True)
    fy, y0, y1 = _lerp_setup(gy, r, True)
    ar = np.arange(m)[:, None, None]
    rows = np.arange(r)[None, :, None]
    if gx.ndim == 1:
        v0, v1 = grids[:, :, x0], grids[:, :, x1]
        fx = fx[None, None, :]
    else:
        v0, v1 = grids[ar, rows, x0[:, None, :]], grids[ar, rows, x1[:, None, :]]
        fx = fx[:, None, :]
    d = v1 - v0
    t = v0 + d * fx  # (m,R,W)
    a2 = np.arange(m)[:, None]
    if gy.ndim == 1:
        top, bot = t[:, y0], t[:, y1]
        fy = fy[None, :, None]
    else:
        top, bot = t[a2, y0], t[a2, y1]
        fy = fy[:, :, None]
    dy = bot - top
    val = top + dy * fy
    if not grads:
        return val
    d0 = d[:, y0] if gy.ndim == 1 else d[a2, y0]
    d1 = d[:, y1] if gy.ndim == 1 else d[a2, y1]
    return val, d0 + (d1 - d0) * fy, dy


def _grid_2d(grids, gx, gy, grads=False):
    """Bilinear sample of grids (m,R,R) at per-pixel coordinates gx, gy (m,H,W)."""
    m, r = grids.shape[0], grids.shape[1]
    fx, x0, x1 = _lerp_setup(gx, r, True)
    fy, y0, y1 = _lerp_setup(gy, r, True)
    flat = grids.reshape(-1)
    base = (np.arange(m, dtype=np.int32) * (r * r))[:, None, None]
    r0, r1 = base + y0 * r, base + y1 * r
    v00, v01 = np.take(flat, r0 + x0), np.take(flat, r0 + x1)
    v10, v11 = np.take(flat, r1 + x0), np.take(flat, r1 + x1)
    d0, d1 = v01 - v00, v11 - v10
    top, bot = v00 + d0 * fx, v10 + d1 * fx
    dy = bot - top
    val = top + dy * fy
    if not grads:
        return val
    return val, d0 + (d1 - d0) * fy, dy


def _patch_start(r, size, grid):
    return (r * size + grid - 1) // grid


_PIX = np.dtype((np.void, 3))  # one RGB pixel as a 3-byte item: gathers move whole pixels


def _pixels(a: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] C-contiguous -> flat array of 3-byte pixels (a view)."""
    return a.reshape(-1).view(_PIX)


def _take_rgb(pix: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """uint8 (K,3) pixels at flat indices ``idx`` of a :func:`_pixels` view."""
    return np.take(pix, idx).view(np.uint8).reshape(-1, 3)


def _fill_values(mode, images, fills, b, j, seeds, perm, mean_colour, jj, aa, yy, xx, h, w, r, f):
    """Fill colour float32 (K,3) at pixels (yy, xx) of partner images jj (K,); ``aa`` indexes
    the rows of ``b`` = the partners' boxes (m,4) and of ``j`` = the partners (m,)."""
    k = jj.size
    if mode == "gray":
        return np.full((k, 3), 128.0, F32)
    if mode == "mean":
        return mean_colour[jj]
    plane = h * w
    pix = (yy * w + xx).astype(np.uint32)
    if mode == "noise":
        key = seeds[jj][:, None]
        idx = pix[:, None] * np.uint32(3) + np.arange(3, dtype=np.uint32)[None, :]
        return (_mix32(key + _mix32(idx)) >> np.uint32(24)).astype(F32)
    src = _pixels(images)
    if mode == "pixels":
        at = _mix32(seeds[jj] ^ _mix32(pix + _GOLD)) % np.uint32(plane)
        return _take_rgb(src, jj.astype(np.int64) * plane + at).astype(F32)
    if mode == "patches":
        pr, pc = (yy * r) // h, (xx * r) // w
        q = perm[jj, pr * r + pc]
        qr, qc = q // r, q % r
        ys = np.clip(_patch_start(qr, h, r) + yy - _patch_start(pr, h, r), 0, _patch_start(qr + 1, h, r) - 1)
        xs = np.clip(_patch_start(qc, w, r) + xx - _patch_start(pc, w, r), 0, _patch_start(qc + 1, w, r) - 1)
        return _take_rgb(src, (jj.astype(np.int64) * h + ys) * w + xs).astype(F32)
    # cached: bilinear in the tile; tile coordinates are separable: ty per (sample, row), tx per (sample, column)
    v = (np.arange(h, dtype=F32) + F32(0.5)) / F32(h)
    u = (np.arange(w, dtype=F32) + F32(0.5)) / F32(w)
    ty = (v[None, :] - b[:, 0:1]) / (b[:, 2:3] - b[:, 0:1]) * F32(f) - F32(0.5)
    tx = (u[None, :] - b[:, 1:2]) / (b[:, 3:4] - b[:, 1:2]) * F32(f) - F32(0.5)
    ay, y0, y1 = (t.ravel() for t in _lerp_setup(ty, f))
    ax, x0, x1 = (t.ravel() for t in _lerp_setup(tx, f))
    # row pass: the kernel's top/bot rows of every tile row at every output column (m,F,W,3),
    # then the column pass at the fill pixels only
    tiles = _pixels(fills)
    cols = (j.astype(np.int64)[:, None, None] * f + np.arange(f)[None, :, None]) * f  # (m,F,1)
    t0 = _take_rgb(tiles, cols + x0.reshape(-1, 1, w)).astype(F32).reshape(-1, f, w, 3)
    t1 = _take_rgb(tiles, cols + x1.reshape(-1, 1, w)).astype(F32).reshape(-1, f, w, 3)
    t1 -= t0  # in place, same arithmetic: rowpass = t0 + (t1 - t0) * ax
    t1 *= ax.reshape(-1, 1, w, 1)
    t1 += t0
    rp = t1.reshape(-1).view(np.dtype((np.void, 12)))  # one float32 RGB triple per item
    ri = aa * h + yy
    base = aa.astype(np.int64) * f
    top = np.take(rp, (base + y0[ri]) * w + xx).view(F32).reshape(-1, 3)
    bot = np.take(rp, (base + y1[ri]) * w + xx).view(F32).reshape(-1, 3)
    return top + (bot - top) * ay[ri][:, None]


def _round_u8(v):
    return np.clip(np.floor(v + F32(0.5)), 0, 255).astype(np.uint8)


def composite_cpu(images: np.ndarray, soft: np.ndarray, fills: np.ndarray, boxes: np.ndarray,
                  params: dict, cfg: SwapConfig) -> np.ndarray:
    """NumPy twin of the kernel: uint8 [N,H,W,3] composited batch (a new array).

    Vectorised over the batch (no Python loop over samples or pixels); float32 throughout,
    with the kernel's operations in the kernel's order. Work is done per pixel class: pixels
    with alpha = 1 take the foreground, fill pixels not covered by it the fill, only the
    feathered edge (0 < alpha < 1) is blended. See the module docstring for the rule.
    """
    n, h, w, r, f, p = _check(images, soft, fills, boxes, params, cfg)
    sel = np.flatnonzero(p["swap"])
    if sel.size == 0:
        return images.copy()
    m = sel.size
    j = p["partner"][sel].astype(np.intp)
    sx, sy = F32(r) / F32(w), F32(r) / F32(h)
    fw, fh = F32(w), F32(h)
    px = np.arange(w, dtype=F32) + F32(0.5)
    py = np.arange(h, dtype=F32) + F32(0.5)
    tight, loose, feather = F32(cfg.tight), F32(cfg.loose), F32(cfg.feather)
    plane = h * w
    pix = _pixels(images)

    # foreground: where the inverse affine map lands (alpha), nearest-neighbour colour (src_at)
    a = p["affine"][sel]
    with np.errstate(invalid="ignore", over="ignore"):
        if not (a[:, 1].any() or a[:, 3].any()):
            # axis-aligned: xs depends on x only, ys on y only (bitwise the kernel's values,
            # as a1*py = 0 exactly)
            xs = a[:, 0:1] * px[None, :] + a[:, 2:3]
            ys = a[:, 4:5] * py[None, :] + a[:, 5:6]
            in_x, in_y = (xs >= 0) & (xs < fw), (ys >= 0) & (ys < fh)
            xs, ys = np.where(in_x, xs, F32(0)), np.where(in_y, ys, F32(0))
            res = _grid_sep(soft[sel], xs * sx - F32(0.5), ys * sy - F32(0.5), grads=feather > 0)
            inside = in_y[:, :, None] & in_x[:, None, :]
            row_base = ((sel[:, None] * h + np.minimum(np.floor(ys), h - 1).astype(np.intp)) * w).ravel()  # (m*H,)
            col = np.minimum(np.floor(xs), w - 1).astype(np.intp).ravel()  # (m*W,)

            def src_at(k):
                ka, kr = np.divmod(k, plane)
                ky, kx = np.divmod(kr, w)
                return row_base[ka * h + ky] + col[ka * w + kx]
        else:
            pxx, pyy = px[None, None, :], py[None, :, None]
            xs = (a[:, 0, None, None] * pxx + a[:, 1, None, None] * pyy) + a[:, 2, None, None]
            ys = (a[:, 3, None, None] * pxx + a[:, 4, None, None] * pyy) + a[:, 5, None, None]
            inside = (xs >= 0) & (xs < fw) & (ys >= 0) & (ys < fh)
            xs, ys = np.where(inside, xs, F32(0)), np.where(inside, ys, F32(0))
            res = _grid_2d(soft[sel], xs * sx - F32(0.5), ys * sy - F32(0.5), grads=feather > 0)
            xsf, ysf = xs.reshape(-1), ys.reshape(-1)

            def src_at(k):
                iy = np.minimum(np.floor(ysf[k]), h - 1).astype(np.intp)
                ix = np.minimum(np.floor(xsf[k]), w - 1).astype(np.intp)
                return (sel[k // plane] * h + iy) * w + ix
    if feather == 0:
        covered = inside & (res > tight)
        edge = alpha_e = None
    else:
        pt, dgx, dgy = res
        gx, gy = dgx * sx, dgy * sy
        gm = np.sqrt(gx * gx + gy * gy)
        with np.errstate(divide="ignore", invalid="ignore"):
            soft_alpha = np.clip(F32(0.5) + (pt - tight) / (F32(2) * feather * gm), F32(0), F32(1))
        alpha = np.where(inside, np.where(gm > 0, soft_alpha, (pt > tight).astype(F32)), F32(0))
        covered = alpha == 1
        edge = np.flatnonzero((alpha > 0) & ~covered)
        alpha_e = alpha.reshape(-1)[edge][:, None]

    # background: the partner image, its fill where pl > loose inside its box (and not covered)
    bg = images[j]  # (m,H,W,3) copy
    pl = _grid_sep(soft[j], px * sx - F32(0.5), py * sy - F32(0.5))
    b = boxes[j]
    u, v = px / fw, py / fh
    rows_in = (v[None, :] >= b[:, 0:1]) & (v[None, :] < b[:, 2:3])
    cols_in = (u[None, :] >= b[:, 1:2]) & (u[None, :] < b[:, 3:4])
    fm = (pl > loose) & rows_in[:, :, None] & cols_in[:, None, :] & ~covered
    fi = np.flatnonzero(fm)
    aa, rem = np.divmod(fi, plane)
    yy, xx = np.divmod(rem, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        fillv = _fill_values(cfg.fill, images, fills, b, j, p["noise_seed"], p["perm"],
                             _mean_colour(np, fills) if cfg.fill == "mean" else None,
                             j[aa], aa, yy, xx, h, w, r, f)
    bgp = _pixels(bg)
    if edge is not None and edge.size:  # the background there before rounding (fill or image)
        bg_e = _take_rgb(bgp, edge).astype(F32)
        pos = np.minimum(np.searchsorted(fi, edge), max(fi.size - 1, 0))
        hit = np.flatnonzero(fi[pos] == edge) if fi.size else np.zeros(0, np.intp)
        bg_e[hit] = fillv[pos[hit]]
    np.put(bgp, fi, _round_u8(fillv).reshape(-1).view(_PIX))

    # composite: alpha = 1 -> foreground, 0 < alpha < 1 -> blend, alpha = 0 -> background
    ci = np.flatnonzero(covered)
    np.put(bgp, ci, np.take(pix, src_at(ci)))
    if edge is not None and edge.size:
        fg_e = _take_rgb(pix, src_at(edge)).astype(F32)
        blend = _round_u8(alpha_e * fg_e + (F32(1) - alpha_e) * bg_e)
        np.put(bgp, edge, blend.reshape(-1).view(_PIX))
    if m == n:  # bg is a fresh array holding every output sample
        return bg
    out = images.copy()
    out[sel] = bg
    return out


def composite_host(images: np.ndarray, soft: np.ndarray, fills: np.ndarray, boxes: np.ndarray,
                   params: dict, cfg: SwapConfig) -> np.ndarray:
    """The CPU loader's compositing: :func:`dali_abs.loader.native.composite_native` (the
    kernel text compiled for the host, multi-threaded, same output) when it builds, else
    :func:`composite_cpu` (after one warning)."""
    from dali_abs.loader import native

    if native.native_available():
        return native.composite_native(images, soft, fills, boxes, params, cfg)
    return composite_cpu(images, soft, fills, boxes, params, cfg)


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


def composite_gpu(images, soft, fills, boxes, params: dict, cfg: SwapConfig, out=None, block: int = 256):
    """CUDA version of :func:`composite_cpu` on CuPy arrays (same inputs; ``params`` may be
    NumPy or CuPy). One kernel launch for the whole batch on CuPy's current stream; returns
    ``out`` (a new uint8 [N,H,W,3] CuPy array unless one is given)."""
    import cupy

    n, h, w, r, f, p = _check(images, soft, fills, boxes, params, cfg)
    for name, a in (("images", images), ("soft", soft), ("fills", fills), ("boxes", boxes)):
        if not isinstance(a, cupy.ndarray):
            raise SwapError(f"composite_gpu needs CuPy arrays, got {name} of type {type(a).__name__}")
    if out is None:
        out = cupy.empty_like(images)
    elif out.dtype != cupy.uint8 or out.shape != images.shape or not out.flags.c_contiguous:
        raise SwapError(f"out must be a C-contiguous uint8 {tuple(images.shape)} CuPy array, got {_desc(out)}")
    dev = {k: cupy.asarray(v) for k, v in p.items()}
    mean = _mean_colour(cupy, fills) if cfg.fill == "mean" else cupy.zeros((n, 3), cupy.float32)
    total = n * h * w
    grid = min((total + block - 1) // block, 65535 * 4)
    _kernel()((grid,), (block,), (
        images, soft, fills, boxes, dev["partner"], dev["swap"], dev["affine"], dev["noise_seed"], dev["perm"],
        mean, dev["fg_box"], out, np.int32(n), np.int32(h), np.int32(w), np.int32(r), np.int32(f),
        np.float32(cfg.tight), np.float32(cfg.loose), np.float32(cfg.feather), np.int32(FILLS.index(cfg.fill))))
    return out
