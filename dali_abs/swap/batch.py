"""A checked batch of compositing inputs, in the form every implementation reads.

A :class:`Batch` holds the pixels (per-sample images and fill tiles of any sizes, NumPy or CuPy)
and one parameter record per sample (:func:`dali_abs.swap.signature.sample_dtype`: the draws of
:func:`~dali_abs.swap.sampling.sample_params`, the crop window and the fill box in canvas px, the
soft mask and the patch permutation). Two ways in:

- :func:`batch` from the kornia-style arrays (soft masks, boxes and the ``params`` dict):
  checked here, then packed by :func:`pack_samples`;
- :func:`batch_of_records` from records that are already packed (the loader's sampling op
  writes them on the CPU side of the pipeline; on the GPU they are device data the host
  never reads).

The twin (:mod:`dali_abs.swap.twin`) and both backends take a :class:`Batch`; the conventions
are in :mod:`dali_abs.swap.twin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dali_abs.swap.config import SwapConfig, SwapError, require_thresholds
from dali_abs.swap.signature import REFS_DTYPE, fill_code, sample_dtype

F32 = np.float32
PARAMS = (("partner", np.int32, 1), ("swap", np.uint8, 1), ("affine", np.float32, 6),
          ("noise_seed", np.uint32, 1), ("perm", np.int32, None), ("fg_box", np.float32, 4),
          ("crop", np.float32, 4), ("flip", np.uint8, 1))


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _desc(a) -> str:
    return f"{getattr(a, 'dtype', type(a).__name__)} {tuple(getattr(a, 'shape', ()))}"


@dataclass
class Batch:
    """A checked batch: N samples composited onto an ``h x w`` canvas (the output size).

    ``images`` / ``fills``: lists of N uint8 HWC RGB arrays (NumPy or CuPy), each its own size
    (``image_hw`` / ``fill_hw``, int32 (N,2)). ``samples``: the parameter records, a
    :func:`~dali_abs.swap.signature.sample_dtype` (N,) NumPy array or a list of N uint8 arrays
    of one record each (what DALI hands over). ``cfg`` gives the thresholds and the fill.
    """

    n: int
    h: int
    w: int
    r: int
    cfg: SwapConfig
    images: list
    image_hw: np.ndarray
    fills: list
    fill_hw: np.ndarray
    samples: object

    @property
    def on_gpu(self) -> bool:
        """True when the pixels are device arrays (CuPy, or anything with ``__cuda_array_interface__``)."""
        return hasattr(self.images[0], "__cuda_array_interface__")

    def records(self) -> np.ndarray:
        """The parameter records as one (N,) structured NumPy array (host batches only)."""
        if isinstance(self.samples, np.ndarray):
            return self.samples
        return np.stack(self.samples).view(sample_dtype(self.r)).reshape(self.n)

    def sample_ptrs(self, ptr) -> list[int]:
        """The address of each sample's record (``ptr``: address of an array's first byte)."""
        if isinstance(self.samples, np.ndarray):
            base, size = ptr(self.samples), self.samples.dtype.itemsize
            return [base + i * size for i in range(self.n)]
        return [ptr(a) for a in self.samples]

    def refs(self, ptr) -> np.ndarray:
        """The kernel's ``refs`` table (:data:`~dali_abs.swap.signature.REFS`) from host metadata only."""
        refs = np.zeros(self.n, REFS_DTYPE)
        refs["image"] = [ptr(a) for a in self.images]
        refs["tile"] = [ptr(a) for a in self.fills]
        refs["sample"] = self.sample_ptrs(ptr)
        refs["ih"], refs["iw"] = self.image_hw[:, 0], self.image_hw[:, 1]
        refs["th"], refs["tw"] = self.fill_hw[:, 0], self.fill_hw[:, 1]
        refs["img_sx"] = self.image_hw[:, 1].astype(F32) / F32(self.w)
        refs["img_sy"] = self.image_hw[:, 0].astype(F32) / F32(self.h)
        return refs

    def kernel_values(self, refs, mean, out) -> dict:
        """Every kernel argument by name (:data:`~dali_abs.swap.signature.ARGS`)."""
        c = self.cfg
        return {"refs": refs, "mean_colour": mean, "out": out, "n": self.n, "h": self.h, "w": self.w, "r": self.r,
                "tight": c.tight, "loose": c.loose, "feather": c.feather, "fill_mode": fill_code(c.fill)}

    def dims(self) -> dict:
        return {"n": self.n, "h": self.h, "w": self.w, "r": self.r}


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


def _size(size, image_hw: np.ndarray) -> tuple[int, int]:
    if size is None:
        if (image_hw != image_hw[0]).any():
            sizes = np.unique(image_hw, axis=0)
            raise SwapError(f"images differ in size ({', '.join(f'{a}x{b}' for a, b in sizes[:4])}"
                            f"{', ...' if len(sizes) > 4 else ''}); pass size=(H, W) for the output")
        return int(image_hw[0, 0]), int(image_hw[0, 1])
    try:
        h, w = (int(size), int(size)) if np.isscalar(size) else (int(v) for v in size)
    except (TypeError, ValueError):
        raise SwapError(f"size must be an int or (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise SwapError(f"size must be positive, got {size!r}")
    return h, w


def _pixels(images, fills, cfg, size):
    if not isinstance(cfg, SwapConfig):
        raise SwapError(f"cfg must be a SwapConfig, got {type(cfg).__name__}")
    require_thresholds(cfg)
    imgs = _samples("images", images, None)
    n = len(imgs)
    if n < 1:
        raise SwapError("images is empty: a batch needs at least one sample")
    image_hw = np.array([x.shape[:2] for x in imgs], np.int32)
    h, w = _size(size, image_hw)
    tiles = _samples("fills", fills, n)
    fill_hw = np.array([t.shape[:2] for t in tiles], np.int32)
    return imgs, image_hw, tiles, fill_hw, h, w


def _check_ranges(partner: np.ndarray, perm: np.ndarray, n: int, r: int, what: str) -> None:
    if partner.min() < 0 or partner.max() >= n:
        raise SwapError(f"{what}['partner'] must index the batch (0..{n - 1}), got values "
                        f"{int(partner.min())}..{int(partner.max())}")
    if perm.min() < 0 or perm.max() >= r * r:
        raise SwapError(f"{what}['perm'] must hold patch indices 0..{r * r - 1}, got values "
                        f"{int(perm.min())}..{int(perm.max())}")


def check_params(soft, boxes, params, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Host copies of ``soft`` (float32 [N,R,R]), ``boxes`` (float32 [N,4]) and ``params`` (the dict of
    :func:`~dali_abs.swap.sampling.sample_params`), checked; raises :class:`SwapError` naming what is wrong."""
    for name, a in (("soft", soft), ("boxes", boxes)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise SwapError(f"{name} must be an array, got {type(a).__name__}")
    if soft.dtype != np.float32 or soft.ndim != 3 or soft.shape[0] != n or soft.shape[1] != soft.shape[2] \
            or soft.shape[1] < 1:
        raise SwapError(f"soft must be float32 [N,R,R] with N = {n} (foreground probability per patch), "
                        f"got {_desc(soft)}")
    r = int(soft.shape[1])
    if boxes.dtype != np.float32 or tuple(boxes.shape) != (n, 4):
        raise SwapError(f"boxes must be float32 [N,4] = (y0, x0, y1, x1) with N = {n}, got {_desc(boxes)}")
    for name, a in (("soft", soft), ("boxes", boxes)):
        if not a.flags.c_contiguous:
            raise SwapError(f"{name} must be C-contiguous (got strides {a.strides} for shape {tuple(a.shape)}); "
                            "copy it with ascontiguousarray first")
    if not isinstance(params, dict):
        raise SwapError(f"params must be the dict returned by sample_params, got {type(params).__name__}")
    missing = [k for k, _, _ in PARAMS if k not in params]
    if missing:
        raise SwapError(f"params lacks {', '.join(missing)} (has {', '.join(sorted(params))})")
    p = {}
    for key, dtype, cols in PARAMS:
        a = np.ascontiguousarray(_host(params[key]))
        shape = (n, r * r) if cols is None else (n,) if cols == 1 else (n, cols)  # perm: (N, R*R) even for R = 1
        if a.dtype != dtype or a.shape != shape:
            raise SwapError(f"params[{key!r}] must be {np.dtype(dtype).name} {shape}, got {_desc(a)}")
        p[key] = a
    _check_ranges(p["partner"], p["perm"], n, r, "params")
    return _host(soft), _host(boxes), p


def pack_samples(params: dict, soft: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The (N,) parameter records of a batch drawn on an ``H x W`` canvas (``size``), as the kernel reads them.

    ``params``: :func:`~dali_abs.swap.sampling.sample_params`; ``soft`` float32 [N,R,R]; ``boxes``
    float32 [N,4] ``(y0, x0, y1, x1)`` in 0..1 image coordinates. The crop window becomes its origin
    and canvas px per output px, the box canvas px: each quotient once per sample in float32, so the
    twin and both backends compute with the very same values.
    """
    n, r = soft.shape[0], soft.shape[1]
    h, w = size
    fw, fh = F32(w), F32(h)
    rec = np.zeros(n, sample_dtype(r))
    for key in ("partner", "swap", "flip", "noise_seed", "affine", "fg_box", "perm"):
        rec[key] = params[key].reshape(rec[key].shape)
    c = params["crop"]
    rec["crop_x0"], rec["crop_y0"] = c[:, 0], c[:, 1]
    rec["crop_sx"], rec["crop_sy"] = (c[:, 2] - c[:, 0]) / fw, (c[:, 3] - c[:, 1]) / fh
    box = boxes.astype(F32)
    rec["box_y0"], rec["box_x0"], rec["box_y1"], rec["box_x1"] = box[:, 0] * fh, box[:, 1] * fw, box[:, 2] * fh, \
        box[:, 3] * fw
    rec["soft"] = soft.reshape(n, r * r)
    return rec


def batch(images, soft, fills, boxes, params: dict, cfg: SwapConfig, size=None) -> Batch:
    """A checked, packed :class:`Batch` from the kornia-style inputs (the conventions are in
    :mod:`dali_abs.swap.twin`); ``size`` (H, W) defaults to the images' size when they share one."""
    imgs, image_hw, tiles, fill_hw, h, w = _pixels(images, fills, cfg, size)
    n = len(imgs)
    soft, boxes, p = check_params(soft, boxes, params, n)
    return Batch(n, h, w, int(soft.shape[1]), cfg, imgs, image_hw, tiles, fill_hw,
                 pack_samples(p, soft, boxes, (h, w)))


def batch_of_records(images, fills, samples, cfg: SwapConfig, size, r: int) -> Batch:
    """A :class:`Batch` from packed records (one uint8 array per sample, or a (N,) record array).

    Host records are checked in full (partner and patch indices in range); device records are
    data the host does not read: the kernel keeps ``partner`` and ``perm`` in range itself.
    """
    imgs, image_hw, tiles, fill_hw, h, w = _pixels(images, fills, cfg, size)
    n = len(imgs)
    dtype = sample_dtype(r)
    if isinstance(samples, np.ndarray) and samples.dtype == dtype:
        if samples.shape != (n,):
            raise SwapError(f"samples must hold N = {n} records, got shape {samples.shape}")
        recs = samples
    else:
        recs = list(samples)
        if len(recs) != n:
            raise SwapError(f"samples must hold N = {n} records, got {len(recs)}")
        for i, a in enumerate(recs):
            if getattr(a, "dtype", None) != np.uint8 or tuple(a.shape) != (dtype.itemsize,) \
                    or not a.flags.c_contiguous:
                raise SwapError(f"samples[{i}] must be one C-contiguous uint8 [{dtype.itemsize}] record (R = {r}), "
                                f"got {_desc(a)}")
    b = Batch(n, h, w, r, cfg, imgs, image_hw, tiles, fill_hw, recs)
    if not b.on_gpu:
        rec = b.records()
        _check_ranges(rec["partner"], rec["perm"], n, r, "samples")
    return b


def mean_colour(xp, fills: list):
    """float32 (N,3) mean colour of each tile (exact int64 sums, one float64 division)."""
    return xp.stack([(t.reshape(-1, 3).sum(axis=0, dtype=xp.int64) / float(t.shape[0] * t.shape[1]))
                     for t in fills]).astype(xp.float32)
