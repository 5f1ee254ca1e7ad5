"""Checks of what a model returns: the probe batch a model is opened with, and every batch after.

A model that breaks its output contract (NaN, infinities, logits where probabilities belong,
0..255 where 0..1 belongs) is refused with an error naming it, never clipped into plausible
wrong data (a NaN fill clipped and cast to uint8 is a black background). Used by
:class:`~dali_abs.segmenter.inference.Segmenter` and :class:`~dali_abs.inpainter.inference.Inpainter`.
"""

from __future__ import annotations

import numpy as np

from dali_abs.errors import DaliAbsError

RANGE_TOLERANCE = 1e-3  # float rounding around 0..1 that is clipped, not refused


class ModelOutputError(DaliAbsError, ValueError):
    """A model output that is not what the convention says (NaN, Inf, out of range); ``bad``: the
    indices of the samples of the batch that show it."""

    def __init__(self, message: str, bad: list[int]):
        super().__init__(message)
        self.bad = bad


def output_problem(y: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> tuple[str, list[int]] | None:
    """(what is wrong, bad sample indices) when float ``y`` [B, ...] has NaN / Inf or values outside
    ``lo..hi`` (beyond :data:`RANGE_TOLERANCE`); None when it is fine."""
    if y.size == 0:
        return None
    flat = y.reshape(len(y), -1)
    finite = np.isfinite(flat).all(1)
    if not finite.all():
        bad = np.nonzero(~finite)[0].tolist()
        return f"NaN or infinite values for {len(bad)} of {len(y)} inputs", bad
    mn, mx = flat.min(1), flat.max(1)
    out = (mn < lo - RANGE_TOLERANCE) | (mx > hi + RANGE_TOLERANCE)
    if out.any():
        bad = np.nonzero(out)[0].tolist()
        return (f"values from {float(mn.min()):.4g} to {float(mx.max()):.4g}, outside {lo:g}..{hi:g}, for "
                f"{len(bad)} of {len(y)} inputs"), bad
    return None


def probe_images(n: int, size: int) -> np.ndarray:
    """The probe batch models are opened with: float32 [n, 3, size, size] RGB in 0.25..0.75 (a mid-gray
    image, then smooth colour ramps), the kind of input every model must answer within its contract."""
    ramp = np.linspace(0.25, 0.75, size, dtype=np.float32)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        if i == 0:
            out[i] = 0.5
        else:
            out[i, 0] = ramp[None, :]
            out[i, 1] = ramp[:, None]
            out[i, 2] = ramp[::-1][None, :] if i % 2 else ramp[::-1][:, None]
    return out
