"""Run an exported patch segmenter with onnxruntime (CUDA provider when usable, else CPU).

Conventions checked here, at the boundary:

- ``predict`` takes float32 NCHW ``[B, 3, S, S]``, RGB, values in 0..1, S = :attr:`Segmenter.input_size`
  (no normalisation by the caller: the graph normalises).
- It returns float32 ``[B, 1, R, R]``: the **foreground probability** per patch
  (1 = foreground), R = :attr:`Segmenter.grid`. Outputs are checked: NaN, Inf or values
  outside 0..1 raise :class:`~dali_abs.probe.ModelOutputError` (a probe batch at open, every batch after).

A file that is not a dali-abs segmenter (other inputs/outputs, missing or inconsistent
metadata) raises :class:`SegmenterError` naming the file and what is wrong.

The tight (cut-out) and loose (fill) thresholds chosen when the model was trained
(:mod:`dali_abs.segmenter.thresholds`) are :attr:`Segmenter.thresholds`, or without a
session :func:`read_thresholds` (None for a model exported before thresholds were recorded).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from dali_abs.errors import DaliAbsError
from dali_abs.files import read_rgb
from dali_abs.models import segmenter_contract as net
from dali_abs.probe import ModelOutputError, output_problem, probe_images
from dali_abs.segmenter.thresholds import ThresholdError, Thresholds, from_metadata


class SegmenterError(DaliAbsError, ValueError):
    """A segmenter model, its input, or a label grid that does not fit the conventions."""


def read_resized(path: str | os.PathLike, size: int, patch: int) -> np.ndarray:
    """uint8 HWC RGB image resized (bilinear) to ``size`` x ``size``.

    Raises :class:`SegmenterError` when a side is smaller than one patch (``patch`` px):
    such an image has less than one pixel per patch of the model's grid.
    """
    from PIL import Image

    img = read_rgb(path)
    h, w = img.shape[:2]
    if min(h, w) < patch:
        raise SegmenterError(f"{path}: image is {w}x{h} px, smaller than one patch ({patch} x {patch} px "
                             f"at the segmenter's {size} px input); use images of at least {patch} px per side "
                             "or a model with a finer grid")
    if (h, w) != (size, size):
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return img


def read_batch(paths: Sequence[str | os.PathLike], size: int, patch: int) -> np.ndarray:
    """uint8 NHWC stack of :func:`read_resized` images."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        out[i] = read_resized(p, size, patch)
    return out


def _meta_int(meta: dict, key: str, path: Path) -> int:
    try:
        v = int(meta[key])
    except (KeyError, ValueError):
        raise SegmenterError(f"{path}: not a dali-abs segmenter: metadata {key!r} is "
                             f"{meta.get(key, 'missing')!r}, expected a positive integer. "
                             "Export the model with `dali-abs segmenter train` or `segmenter export`.") from None
    if v < 1:
        raise SegmenterError(f"{path}: metadata {key!r} must be positive, got {v}")
    return v


def check_model(session, path: Path) -> tuple[int, int]:
    """Check a session's metadata and signature against the segmenter conventions; (grid, input_size)."""
    from dali_abs.runtime import metadata

    meta = metadata(session)
    fix = "Export the model with `dali-abs segmenter train` or `dali-abs segmenter export`."
    kind = meta.get("dali_abs.kind")
    if kind != net.KIND:
        raise SegmenterError(f"{path}: not a dali-abs segmenter (metadata dali_abs.kind is {kind!r}, expected "
                             f"{net.KIND!r}). {fix}")
    grid = _meta_int(meta, "dali_abs.grid", path)
    size = _meta_int(meta, "dali_abs.input_size", path)
    if size % grid:
        raise SegmenterError(f"{path}: metadata input_size {size} is not a multiple of grid {grid}")
    for key, want in (("dali_abs.polarity", net.POLARITY), ("dali_abs.input", net.INPUT_CONVENTION)):
        if meta.get(key) != want:
            raise SegmenterError(f"{path}: metadata {key} is {meta.get(key, 'missing')!r}, expected {want!r}; "
                                 f"this version reads only that convention. {fix}")
    if not meta.get("dali_abs.normalization", "").startswith("inside the graph"):
        raise SegmenterError(f"{path}: metadata dali_abs.normalization is "
                             f"{meta.get('dali_abs.normalization', 'missing')!r}; expected the normalisation "
                             f"to be inside the graph. {fix}")
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1 or len(outs) != 1:
        raise SegmenterError(f"{path}: a segmenter has one input and one output, this model has inputs "
                             f"{[i.name for i in ins]} and outputs {[o.name for o in outs]}")
    i, o = ins[0], outs[0]
    if i.type != "tensor(float)" or o.type != "tensor(float)":
        raise SegmenterError(f"{path}: input/output must be float32, got {i.type} -> {o.type}")
    want_in, want_out = [3, size, size], [1, grid, grid]
    if len(i.shape) != 4 or list(i.shape[1:]) != want_in:
        raise SegmenterError(f"{path}: input {i.name!r} has shape {i.shape}, expected [B, {', '.join(map(str, want_in))}] "
                             f"(float32 NCHW RGB 0..1 at the metadata's input_size {size})")
    shape = list(o.shape)
    if any(not isinstance(d, int) for d in shape[1:]) and len(shape) == 4:  # symbolic dims: run one image
        shape = [shape[0]] + list(session.run([o.name], {i.name: np.zeros([1] + want_in, np.float32)})[0].shape[1:])
    if len(shape) != 4 or shape[1:] != want_out:
        raise SegmenterError(f"{path}: output {o.name!r} has shape {shape}, expected "
                             f"[B, {', '.join(map(str, want_out))}] (the metadata's {grid} x {grid} grid)")
    return grid, size


class Segmenter:
    """An exported patch segmenter under onnxruntime.

    ``Segmenter(path, device="auto", batch_size=64)``; ``device`` is ``auto`` (CUDA provider
    when usable, else CPU), ``cuda`` or ``cpu``. Attributes: :attr:`grid` (R),
    :attr:`input_size` (square side S in px), :attr:`patch` (S / R), :attr:`path`,
    :attr:`providers`, :attr:`metadata`, :attr:`thresholds` (the recorded tight and loose
    thresholds, a :class:`~dali_abs.segmenter.thresholds.Thresholds`, or None).
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", batch_size: int = 64):
        from dali_abs.runtime import create_session, metadata

        if batch_size < 1:
            raise SegmenterError(f"batch_size must be positive, got {batch_size}")
        self.path = Path(path)
        self.batch_size = int(batch_size)
        self.session = create_session(self.path, device)
        self.grid, self.input_size = check_model(self.session, self.path)
        self.patch = self.input_size // self.grid
        self.metadata = metadata(self.session)
        self.thresholds = _thresholds(self.metadata, self.path)
        self.providers = self.session.get_providers()
        self._in = self.session.get_inputs()[0].name
        self._out = self.session.get_outputs()[0].name
        self.probe()

    def probe(self) -> None:
        """Run the probe batch (:func:`probe_images`, 2 images); refuse a model whose output is not
        [B, 1, R, R] foreground probabilities: NaN, infinite, or outside 0..1 (e.g. logits from a
        graph without its final sigmoid), instead of clipping it."""
        x = probe_images(2, self.input_size)
        y = self.session.run([self._out], {self._in: x})[0]
        if y.shape != (2, 1, self.grid, self.grid):
            raise SegmenterError(f"{self.path}: on a probe batch of 2 images the model returned shape "
                                 f"{list(y.shape)}, expected [2, 1, {self.grid}, {self.grid}]")
        bad = output_problem(y)
        if bad:
            raise SegmenterError(f"{self.path}: on a probe batch (gray and colour-ramp images) the model output "
                                 f"{bad[0]}; a segmenter returns foreground probabilities in 0..1 (a sigmoid "
                                 "at the end of the graph). Export it with `dali-abs segmenter export`.")

    def __repr__(self) -> str:
        return (f"Segmenter({str(self.path)!r}, grid={self.grid}, input_size={self.input_size}, "
                f"providers={self.providers})")

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Float32 [B,3,S,S] RGB 0..1 -> float32 [B,1,R,R] foreground probability (1 = foreground)."""
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (self.input_size, self.input_size):
            raise SegmenterError(f"predict expects [B, 3, {self.input_size}, {self.input_size}] (NCHW RGB), "
                                 f"got shape {list(x.shape)}")
        if not np.issubdtype(x.dtype, np.floating):
            raise SegmenterError(f"predict expects float32 values in 0..1, got dtype {x.dtype} "
                                 "(divide uint8 images by 255)")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.size:
            lo, hi = float(x.min()), float(x.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise SegmenterError(f"predict expects RGB values in 0..1, got min {lo:.4g}, max {hi:.4g} "
                                     "(do not normalise: the model does)")
        out = np.empty((x.shape[0], 1, self.grid, self.grid), np.float32)
        for i in range(0, x.shape[0], self.batch_size):
            y = self.session.run([self._out], {self._in: x[i:i + self.batch_size]})[0]
            bad = output_problem(y)
            if bad:
                raise ModelOutputError(f"segmenter {self.path} output {bad[0]} (foreground probabilities must be "
                                  "in 0..1)", [i + j for j in bad[1]])
            out[i:i + self.batch_size] = np.clip(y, 0.0, 1.0)
        return out

    def predict_files(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Read, resize (bilinear) and predict image files: float32 [N,1,R,R] foreground probability."""
        paths = list(paths)
        out = np.empty((len(paths), 1, self.grid, self.grid), np.float32)
        for i in range(0, len(paths), self.batch_size):
            u8 = read_batch(paths[i:i + self.batch_size], self.input_size, self.patch)
            out[i:i + len(u8)] = self.predict(u8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        return out


def _thresholds(meta: dict, path: Path) -> Thresholds | None:
    try:
        return from_metadata(meta, str(path))
    except ThresholdError as e:
        raise SegmenterError(f"{e}. Re-export the model with `dali-abs segmenter train`.") from None


def read_thresholds(path: str | os.PathLike) -> Thresholds | None:
    """The tight and loose thresholds recorded in a segmenter ONNX file (None when it has none).

    Reads only the metadata (the file is checked as a dali-abs segmenter)::

        th = read_thresholds("seg.onnx")
        th.tight, th.loose, th.stats["precision_at_tight"]
    """
    from dali_abs.runtime import create_session, metadata

    path = Path(path)
    session = create_session(path, "cpu")
    check_model(session, path)
    return _thresholds(metadata(session), path)
