"""Per-batch randomness of the background swap, drawn on the host as plain arrays.

Kornia-style: :func:`sample_params` draws every random choice of one batch into a dict of
NumPy arrays, and the compositing functions (:mod:`dali_abs.swap.twin`, the CPU and GPU
backends) are deterministic functions of (images, masks, fills, params). A batch can be
replayed by passing the same dict again.

Conventions shared with :mod:`dali_abs.swap.twin`:

* the canvas is ``H x W`` canvas px (the output size); images of any size are stretched
  over it;
* ``soft`` is the cached soft patch mask, float32 ``[N,R,R]``, **foreground** probability
  (1 = foreground); patch ``(r, c)`` covers canvas rows ``[r*H/R, (r+1)*H/R)`` and columns
  ``[c*W/R, (c+1)*W/R)``;
* canvas pixel ``(i, j)`` (row, column) has its centre at ``(x, y) = (j + 0.5, i + 0.5)``;
* ``affine`` is the INVERSE map canvas point -> foreground source canvas point:
  ``xs = a0*x + a1*y + a2``, ``ys = a3*x + a4*y + a5``; identity = ``(1, 0, 0, 0, 1, 0)``.
"""

from __future__ import annotations

import numpy as np

from dali_abs.swap.config import AugmentConfig, SwapConfig, SwapError, require_thresholds


def sample_crops(rng: np.random.Generator, n: int, augment: AugmentConfig | None, image_size: tuple[int, int],
                 tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``crop`` float32 (N,4) = (x0, y0, x1, y1) canvas px and ``flip`` uint8 (N,)."""
    h, w = image_size
    crop = np.tile(np.array([0.0, 0.0, w, h]), (n, 1))
    if augment is None:
        return crop.astype(np.float32), np.zeros(n, np.uint8)
    if augment.random_resized_crop:
        area = rng.uniform(augment.area[0], augment.area[1], (n, tries)) * (h * w)
        ratio = np.exp(rng.uniform(np.log(augment.ratio[0]), np.log(augment.ratio[1]), (n, tries)))
        cw, ch = np.sqrt(area * ratio), np.sqrt(area / ratio)
        ok = (cw <= w) & (ch <= h)
        first = ok.argmax(axis=1)
        cw, ch = cw[np.arange(n), first], ch[np.arange(n), first]
        x0 = rng.random(n) * (w - cw)
        y0 = rng.random(n) * (h - ch)
        hit = ok.any(axis=1)
        crop[hit] = np.stack([x0, y0, x0 + cw, y0 + ch], 1)[hit]
    flip = (rng.random(n) < augment.flip).astype(np.uint8)
    return crop.astype(np.float32), flip


def _pick_other(rng: np.random.Generator, keys: np.ndarray, what: str, policy: str, same: bool | None) -> np.ndarray:
    """Partner indices: a key (class or group) uniformly among those present — any
    (``same=None``), the sample's own (``True``) or another (``False``) — then a sample of
    that key uniformly."""
    n = len(keys)
    uniq, inv = np.unique(keys, return_inverse=True)
    k = len(uniq)
    if same is None:
        pick = rng.integers(0, k, n)
    elif same:
        pick = inv
    else:
        if k < 2:
            raise SwapError(f"background={policy!r} needs at least two {what}es in the batch; "
                            f"this batch of {n} holds only {what} {uniq[0].item()!r}")
        pick = rng.integers(0, k - 1, n)
        pick = pick + (pick >= inv)
    order = np.argsort(inv, kind="stable")
    counts = np.bincount(inv, minlength=k)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    within = np.minimum((rng.random(n) * counts[pick]).astype(np.int64), counts[pick] - 1)
    return order[starts[pick] + within].astype(np.int32)


def _as_host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def sample_params(labels, rng: np.random.Generator, cfg: SwapConfig, groups=None, epoch: int = 0, *,
                  image_size: tuple[int, int], soft, augment: AugmentConfig | None = None) -> dict[str, np.ndarray]:
    """Draw the random choices of one batch.

    ``labels``: int (N,) class of each sample. ``groups``: int (N,) or None (needed by
    ``background="other_group"``). ``image_size``: (H, W) of the batch. ``soft``: float32
    [N,R,R] foreground probability per patch (a CuPy array is copied to the host): the tight
    patches (> ``cfg.tight``) give each object's centre and bounding box.

    Returns (per sample, N rows): ``partner`` int32 (N,) — the sample whose background
    sample n gets; ``swap`` uint8 (N,) — 1 = composite, 0 = keep the original image;
    ``affine`` float32 (N,6) — inverse map canvas point -> source canvas point (module docstring);
    ``noise_seed`` uint32 (N,); ``perm`` int32 (N,R*R) — a permutation of the patch indices;
    ``fg_box`` float32 (N,4) — see :func:`foreground_box`; ``crop`` float32 (N,4) and ``flip``
    uint8 (N,) — the window each output shows and its mirroring (:func:`sample_crops`; the
    whole canvas, unmirrored, when ``augment`` is None).
    """
    require_thresholds(cfg)
    labels = _as_host(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise SwapError(f"labels must be an integer array of shape (N,), got {labels.dtype} {labels.shape}")
    n = len(labels)
    if n == 0:
        raise SwapError("labels is empty: a batch needs at least one sample")
    soft = _as_host(soft)
    if soft.ndim != 3 or soft.shape[0] != n or soft.shape[1] != soft.shape[2]:
        raise SwapError(f"soft must be [N,R,R] with N = len(labels) = {n}, got shape {soft.shape}")
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise SwapError(f"image_size must be (H, W), got {image_size!r}") from None
    if h < 1 or w < 1:
        raise SwapError(f"image_size must be positive, got {image_size!r}")
    r = soft.shape[1]

    # 1. partners
    pol = cfg.background
    if pol == "uniform":
        partner = rng.integers(0, n, n).astype(np.int32)
    elif pol == "other_group":
        if groups is None:
            raise SwapError("background='other_group' needs groups (int array of shape (N,)); got None")
        groups = _as_host(groups)
        if groups.shape != (n,) or groups.dtype.kind not in "iu":
            raise SwapError(f"groups must be an integer array of shape ({n},), got {groups.dtype} {groups.shape}")
        partner = _pick_other(rng, groups, "group", pol, same=False)
    else:
        same = {"class_balanced": None, "same_class": True, "other_class": False}[pol]
        partner = _pick_other(rng, labels, "class", pol, same=same)

    # 2. swap or not
    swap = (rng.random(n) < cfg.swap_probability(epoch)).astype(np.uint8)

    # 3. foreground jitter: forward map p_out = c + t + s R(theta) (p_src - c)
    s = rng.uniform(cfg.scale[0], cfg.scale[1], n) if cfg.scale[0] < cfg.scale[1] else np.full(n, float(cfg.scale[0]))
    lo, hi = cfg.rotation
    theta = np.deg2rad(rng.uniform(lo, hi, n) if lo < hi else np.full(n, float(lo)))
    t = rng.uniform(-1.0, 1.0, (n, 2)) * (cfg.translate * np.array([w, h], np.float64))

    tightm = soft.astype(np.float32) > np.float32(cfg.tight)  # (N,R,R)
    any_fg = tightm.any(axis=(1, 2))
    pw, ph = w / r, h / r
    cx_grid = (np.arange(r) + 0.5) * pw
    cy_grid = (np.arange(r) + 0.5) * ph
    cnt = np.maximum(tightm.sum(axis=(1, 2)), 1)
    cx = np.where(any_fg, (tightm * cx_grid[None, None, :]).sum(axis=(1, 2)) / cnt, w / 2)
    cy = np.where(any_fg, (tightm * cy_grid[None, :, None]).sum(axis=(1, 2)) / cnt, h / 2)

    cos, sin = np.cos(theta), np.sin(theta)
    if cfg.keep_inside:
        cols = tightm.any(axis=1)  # (N,R)
        rows = tightm.any(axis=2)
        idx = np.arange(r)
        bx0 = np.where(cols, idx, r).min(1) * pw
        bx1 = (np.where(cols, idx, -1).max(1) + 1) * pw
        by0 = np.where(rows, idx, r).min(1) * ph
        by1 = (np.where(rows, idx, -1).max(1) + 1) * ph
        # the four corners of the box under the forward map without translation
        xs_c = np.stack([bx0, bx1, bx0, bx1], 1) - cx[:, None]
        ys_c = np.stack([by0, by0, by1, by1], 1) - cy[:, None]
        fx = cx[:, None] + s[:, None] * (cos[:, None] * xs_c - sin[:, None] * ys_c)
        fy = cy[:, None] + s[:, None] * (sin[:, None] * xs_c + cos[:, None] * ys_c)
        for d, (f, side) in enumerate(((fx, w), (fy, h))):
            lo_t, hi_t = -f.min(1), side - f.max(1)
            clipped = np.where(lo_t <= hi_t, np.clip(t[:, d], lo_t, np.maximum(lo_t, hi_t)), (lo_t + hi_t) / 2)
            t[:, d] = np.where(any_fg, clipped, 0.0)
    # inverse: p_src = c + (1/s) R(-theta) (p_out - c - t)
    inv = 1.0 / s
    a0, a1 = inv * cos, inv * sin
    a3, a4 = -inv * sin, inv * cos
    ox, oy = cx + t[:, 0], cy + t[:, 1]
    a2 = cx - (a0 * ox + a1 * oy)
    a5 = cy - (a3 * ox + a4 * oy)
    affine = np.stack([a0, a1, a2, a3, a4, a5], 1).astype(np.float32)  # theta = 0 gives exact zeros in a1, a3

    # 4. fill randomness
    noise_seed = rng.integers(0, 2**32, n, dtype=np.uint32)
    perm = np.argsort(rng.random((n, r * r)), axis=1).astype(np.int32)
    fg_box = foreground_box(soft, affine, cfg, (h, w))
    crop, flip = sample_crops(rng, n, augment, (h, w))
    return {"partner": partner, "swap": swap, "affine": affine, "noise_seed": noise_seed, "perm": perm,
            "fg_box": fg_box, "crop": crop, "flip": flip}


def foreground_box(soft: np.ndarray, affine: np.ndarray, cfg: SwapConfig, image_size: tuple[int, int]) -> np.ndarray:
    """float32 (N,4) = (x0, y0, x1, y1) in canvas px: outside it alpha is 0 for sure.

    Not randomness but derived data that lets the kernel skip the foreground mask lookup for
    most pixels. Conservative by construction: a bilinear value can exceed ``tight`` only
    within one patch spacing of a cell at or above it (the cells' source box, widened by half
    a patch on each side), mapped to canvas px through the forward map and widened by 2 px.
    With feathering, alpha reaches below the threshold: the box is the whole image.
    """
    h, w = image_size
    n, r = soft.shape[0], soft.shape[1]
    if cfg.feather > 0:
        return np.tile(np.array([0.0, 0.0, w, h], np.float32), (n, 1))
    sup = soft.astype(np.float32) >= np.float32(cfg.tight) - np.float32(1e-6)
    has = sup.any(axis=(1, 2))
    cols, rows = sup.any(axis=1), sup.any(axis=2)
    idx = np.arange(r)
    pw, ph = w / r, h / r
    sx0 = np.clip((np.where(cols, idx, r).min(1) - 0.5) * pw, 0, w)
    sx1 = np.clip((np.where(cols, idx, -1).max(1) + 1.5) * pw, 0, w)
    sy0 = np.clip((np.where(rows, idx, r).min(1) - 0.5) * ph, 0, h)
    sy1 = np.clip((np.where(rows, idx, -1).max(1) + 1.5) * ph, 0, h)
    a = affine.astype(np.float64)
    det = a[:, 0] * a[:, 4] - a[:, 1] * a[:, 3]
    cx = np.stack([sx0, sx1, sx0, sx1], 1) - a[:, 2:3]
    cy = np.stack([sy0, sy0, sy1, sy1], 1) - a[:, 5:6]
    ox = (a[:, 4:5] * cx - a[:, 1:2] * cy) / det[:, None]
    oy = (-a[:, 3:4] * cx + a[:, 0:1] * cy) / det[:, None]
    box = np.stack([np.clip(ox.min(1) - 2, 0, w), np.clip(oy.min(1) - 2, 0, h),
                    np.clip(ox.max(1) + 2, 0, w), np.clip(oy.max(1) + 2, 0, h)], 1)
    return np.where(has[:, None], box, 0.0).astype(np.float32)
