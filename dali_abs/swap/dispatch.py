"""One call for both sides of the pipeline: :func:`composite` runs a :class:`~dali_abs.swap.batch.Batch`
where its arrays live (CuPy: the GPU backend; NumPy: the CPU backend, or the twin where the CPU
build cannot be made). The loader's CPU and GPU operators both make exactly this call."""

from __future__ import annotations

from dali_abs.swap.batch import Batch
from dali_abs.swap.config import SwapError, check_normalize


def composite(b: Batch, out=None, normalize=None, normalized=None):
    """uint8 [N,H,W,3] composited batch, on the device the batch's arrays are on. Host batches
    only: ``out``, a buffer of that shape to write into (the CPU loader reuses one); ``normalize``
    (a :class:`~dali_abs.swap.config.Normalize`), the batch normalised to float [N,3,H,W] instead
    (into ``normalized`` when given), in the same pass."""
    check_normalize(normalize)
    if b.on_gpu:
        if out is not None or normalize is not None or normalized is not None:
            raise SwapError("out=, normalize= and normalized= are for host batches; this batch holds device arrays")
        from dali_abs.swap import gpu

        return gpu.composite(b)
    from dali_abs.swap import cpu

    return cpu.composite_host(b, out, normalize, normalized)
