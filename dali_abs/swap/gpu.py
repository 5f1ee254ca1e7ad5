"""GPU backend: ``composite.cu`` launched through CuPy, once per batch (same inputs and output as
:func:`dali_abs.swap.twin.composite_cpu`)."""

from __future__ import annotations

import numpy as np

from dali_abs.swap.batch import _desc, check_batch, launch_args, mean_colour
from dali_abs.swap.config import FILLS, SwapConfig, SwapError

_MODULE = None


def _kernel():
    """The compiled abs_composite kernel (compiled once per process, on first use)."""
    global _MODULE
    if _MODULE is None:
        import cupy

        from dali_abs.swap.sources import source

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
