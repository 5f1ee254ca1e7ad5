"""GPU backend: ``composite.cu`` launched through CuPy, once per batch, on CuPy's current stream.

The host side reads only metadata (shapes and device addresses) to write the ``refs`` table
(48 bytes per sample), which CuPy uploads asynchronously through pinned memory; the parameter
records are device data the host never reads, so nothing waits for the device. The launch is
the only kernel (two with ``fill="mean"``: the tile means first). Same output as the twin
:func:`dali_abs.swap.twin.composite` (``--fmad=false``: no contracted multiply-adds).
"""

from __future__ import annotations

import numpy as np

from dali_abs.swap import signature
from dali_abs.swap.batch import Batch, _desc
from dali_abs.swap.config import SwapError

_MODULE = None


def _module():
    """The compiled kernel module (compiled once per process, on first use)."""
    global _MODULE
    if _MODULE is None:
        import cupy

        from dali_abs.swap.sources import source

        # --fmad=false: no fused multiply-adds, so the float32 results match the NumPy twin.
        _MODULE = cupy.RawModule(code=source("composite.cu"), options=("--fmad=false",))
    return _MODULE


def prepare(b: Batch, out=None, block: int = 256):
    """Check a batch of CuPy arrays and upload its ``refs`` table; returns ``(launch, out)`` where
    ``launch()`` runs the kernel(s) once on CuPy's current stream (timing: the launch alone)."""
    import cupy

    for name, arrays in (("images", b.images), ("fills", b.fills)):
        for a in arrays:
            if not isinstance(a, cupy.ndarray):
                raise SwapError(f"the GPU backend needs CuPy arrays, got {name} of type {type(a).__name__}")
    samples = b.samples
    if isinstance(samples, np.ndarray):  # host records (tests, replay): one upload
        samples = cupy.asarray(samples.view(np.uint8).reshape(b.n, -1))
        b = Batch(b.n, b.h, b.w, b.r, b.cfg, b.images, b.image_hw, b.fills, b.fill_hw, [samples[i] for i in range(b.n)])
    for i, a in enumerate(b.samples):
        if not isinstance(a, cupy.ndarray):
            raise SwapError(f"the GPU backend needs CuPy arrays, got samples[{i}] of type {type(a).__name__}")
        if a.data.ptr % 4:
            raise SwapError(f"samples[{i}] lies at a device address that is not 4-byte aligned ({a.data.ptr:#x})")
    shape = (b.n, b.h, b.w, 3)
    if out is None:
        out = cupy.empty(shape, cupy.uint8)
    elif out.dtype != cupy.uint8 or out.shape != shape or not out.flags.c_contiguous:
        raise SwapError(f"out must be a C-contiguous uint8 {shape} CuPy array, got {_desc(out)}")
    refs = b.refs(lambda a: a.data.ptr)
    mean = cupy.zeros((b.n, 3), cupy.float32)
    values = b.kernel_values(refs, mean, out)
    signature.check(values, b.dims())  # on the host copy of refs
    refs_dev = cupy.asarray(refs.view(np.uint8))
    args = signature.cupy_args({**values, "refs": refs_dev})
    module = _module()
    kernel = module.get_function("abs_composite")
    grid = min((b.n * b.h * b.w + block - 1) // block, 65535 * 4)
    tile_mean = module.get_function("abs_tile_mean") if b.cfg.fill == "mean" else None
    keep = (b.images, b.fills, b.samples, refs_dev)  # the refs point into these: alive while launch() can run

    def launch():
        if tile_mean is not None:
            tile_mean(((b.n + 127) // 128,), (128,), (refs_dev, mean, np.int32(b.n)))
        kernel((grid,), (block,), args)
        return keep

    return launch, out


def composite(b: Batch, out=None, block: int = 256):
    """The batch composited on the GPU: ``out`` (a new uint8 [N,H,W,3] CuPy array unless one is given)."""
    launch, out = prepare(b, out, block)
    launch()
    return out
