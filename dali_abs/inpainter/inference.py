"""Run an inpainter ONNX file (ours, or a brought one wrapped by :mod:`dali_abs.inpainter.wrap`).

Conventions checked here, at the boundary (see :mod:`dali_abs.models.inpainter`):

- ``fill(images, masks)``: ``images`` float32 NCHW ``[B, 3, H, W]`` RGB in **0..1**;
  ``masks`` float32 ``[B, 1, H, W]`` in 0..1 with **1 = fill**, 0 = keep. Same B, H, W.
- Returns float32 ``[B, 3, H, W]`` in 0..1, equal to ``images`` where mask = 0.
- A batch whose masks are all zero is returned unchanged without running the model.
- Mask all ones: the fill's documented no-context result (0.5 gray for the built-in fills).

A file that is not a dali-abs inpainter (missing or different contract metadata, other
input/output names or types) raises :class:`InpainterError` naming the file and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dali_abs.errors import DaliAbsError
from dali_abs.models import inpainter_contract as net
from dali_abs.probe import ModelOutputError, output_problem, probe_images


class InpainterError(DaliAbsError, ValueError):
    """An inpainter model, its input, or a foreign-model spec that does not fit the conventions."""


_FIX = ("Export one with `dali-abs inpainter export`, train one with `dali-abs inpainter train`, "
        "or wrap a foreign model with `dali-abs inpainter wrap`.")


def check_model(session, path: Path) -> dict[str, str]:
    """Check a session's metadata and signature against the contract; returns the metadata."""
    from dali_abs.runtime import metadata

    meta = metadata(session)
    for key, want in net.META_REQUIRED.items():
        if meta.get(key) != want:
            raise InpainterError(f"{path}: not a dali-abs inpainter of this version: metadata {key} is "
                                 f"{meta.get(key, 'missing')!r}, expected {want!r}. {_FIX}")
    ins = {i.name: i for i in session.get_inputs()}
    outs = session.get_outputs()
    want_in = {net.IMAGE_NAME: 3, net.MASK_NAME: 1}
    if set(ins) != set(want_in) or len(outs) != 1:
        raise InpainterError(f"{path}: an inpainter has inputs {sorted(want_in)} and one output, this model has "
                             f"inputs {sorted(ins)} and outputs {[o.name for o in outs]}. {_FIX}")
    for name, ch in want_in.items():
        i = ins[name]
        if i.type != "tensor(float)" or len(i.shape) != 4 or (isinstance(i.shape[1], int) and i.shape[1] != ch):
            raise InpainterError(f"{path}: input {name!r} is {i.type} {i.shape}, expected float32 [B,{ch},H,W]. {_FIX}")
    if outs[0].type != "tensor(float)":
        raise InpainterError(f"{path}: output {outs[0].name!r} is {outs[0].type}, expected float32. {_FIX}")
    return meta


def check_inputs(images, masks) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``images`` / ``masks`` to contiguous float32; errors report the values found."""
    x, m = np.asarray(images), np.asarray(masks)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InpainterError(f"images must be float32 [B, 3, H, W] (NCHW RGB), got shape {list(x.shape)}"
                             + (" - looks like NHWC; transpose to NCHW" if x.ndim == 4 and x.shape[-1] == 3 else ""))
    if m.ndim == 3 and m.shape[0] == x.shape[0]:
        raise InpainterError(f"masks must be [B, 1, H, W], got shape {list(m.shape)}; add the channel axis "
                             "(masks[:, None])")
    if m.ndim != 4 or m.shape[1] != 1:
        raise InpainterError(f"masks must be float32 [B, 1, H, W] with 1 = fill, got shape {list(m.shape)}")
    if m.shape[0] != x.shape[0] or m.shape[2:] != x.shape[2:]:
        raise InpainterError(f"masks {list(m.shape)} do not match images {list(x.shape)}: need the same B, H and W "
                             "(resize the mask with nearest-neighbour sampling to the image size)")
    for name, a, hint in (("images", x, "divide uint8 images by 255"),
                          ("masks", m, "use 1.0 = fill, 0.0 = keep (uint8 255-masks: divide by 255)")):
        if a.dtype == bool and name == "masks":
            continue
        if not np.issubdtype(a.dtype, np.floating):
            raise InpainterError(f"{name} must be float32 in 0..1, got dtype {a.dtype} ({hint})")
    x = np.ascontiguousarray(x, dtype=np.float32)
    m = np.ascontiguousarray(m, dtype=np.float32)
    for name, a in (("images", x), ("masks", m)):
        if a.size:
            if not np.isfinite(a).all():
                raise InpainterError(f"{name} contain NaN or infinite values ({int((~np.isfinite(a)).sum())} of them)")
            lo, hi = float(a.min()), float(a.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise InpainterError(f"{name} must be in 0..1, got min {lo:.4g}, max {hi:.4g}"
                                     + (" (uint8-range values: divide by 255)" if hi > 2 else "")
                                     + (" (normalised with mean/std? pass raw 0..1 RGB)" if lo < 0 else ""))
    return np.clip(x, 0.0, 1.0), np.clip(m, 0.0, 1.0)


class Inpainter:
    """An inpainter ONNX file under onnxruntime.

    ``Inpainter(path, device="auto", batch_size=16)``; ``device`` is ``auto`` (CUDA provider
    when usable, else CPU), ``cuda`` or ``cpu``. Attributes: :attr:`path`, :attr:`metadata`,
    :attr:`fill_name` (``dali_abs.fill``), :attr:`max_batch` (None = any), :attr:`providers`.
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", batch_size: int = 16,
                 threads: int | None = None):
        from dali_abs.runtime import create_session

        if batch_size < 1:
            raise InpainterError(f"batch_size must be positive, got {batch_size}")
        self.path = Path(path)
        self.session = create_session(self.path, device, threads=threads)
        self.metadata = check_model(self.session, self.path)
        self.fill_name = self.metadata.get("dali_abs.fill", "unknown")
        mb = self.metadata.get("dali_abs.max_batch", "none")
        try:
            self.max_batch = None if mb in ("none", "") else max(1, int(mb))
        except ValueError:
            raise InpainterError(f"{self.path}: metadata dali_abs.max_batch is {mb!r}, expected 'none' or an "
                                 "integer") from None
        self.batch_size = min(int(batch_size), self.max_batch or int(batch_size))
        self.providers = self.session.get_providers()
        self._out = self.session.get_outputs()[0].name
        self.probe()

    def probe(self, size: int = 32) -> None:
        """Fill a probe batch (gray and colour-ramp images, :func:`~dali_abs.probe.probe_images`,
        with a centred square hole) and refuse a model whose output has another shape, NaN or
        infinite values, or values outside 0..1."""

        n = min(2, self.max_batch or 2)
        x = probe_images(n, size)
        m = np.zeros((n, 1, size, size), np.float32)
        m[:, :, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
        y = self.session.run([self._out], {net.IMAGE_NAME: x, net.MASK_NAME: m})[0]
        if y.shape != x.shape:
            raise InpainterError(f"{self.path}: on a probe batch {list(x.shape)} the model returned shape "
                                 f"{list(y.shape)}. {_FIX}")
        bad = output_problem(y)
        if bad:
            raise InpainterError(f"{self.path}: on a probe batch (gray and colour-ramp images, a square hole) the "
                                 f"model output {bad[0]}; an inpainter returns RGB in 0..1. {_FIX}")

    def __repr__(self) -> str:
        return f"Inpainter({str(self.path)!r}, fill={self.fill_name!r}, providers={self.providers})"

    def fill(self, images, masks) -> np.ndarray:
        """Float32 [B,3,H,W] RGB 0..1 and [B,1,H,W] mask (1 = fill) -> float32 [B,3,H,W] 0..1.

        Raises :class:`~dali_abs.probe.ModelOutputError` (``bad``: the samples) when the
        model returns NaN, Inf or values outside 0..1, never a clipped (black) fill."""
        x, m = check_inputs(images, masks)
        out = x.copy()
        for i in range(0, x.shape[0], self.batch_size):
            xb, mb = x[i:i + self.batch_size], m[i:i + self.batch_size]
            if not mb.any():
                continue  # nothing to fill: unchanged
            y = self.session.run([self._out], {net.IMAGE_NAME: xb, net.MASK_NAME: mb})[0]
            if y.shape != xb.shape:
                raise InpainterError(f"{self.path}: model returned shape {list(y.shape)} for input {list(xb.shape)}")
            bad = output_problem(y)
            if bad:
                raise ModelOutputError(f"inpainter {self.path} output {bad[0]} (RGB must be in 0..1)",
                                  [i + j for j in bad[1]])
            out[i:i + self.batch_size] = np.clip(y, 0.0, 1.0)
        return out
