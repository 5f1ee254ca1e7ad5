"""Score a fill against the true clean background (``dali-abs inpainter eval``), and time it.

Needs a dataset whose ``metadata.csv`` has ``mask_filename`` (pixel mask, 255 = foreground)
and ``background_filename`` (the clean background) columns, paths relative to the dataset
root - the built-in benchmark has both. Per image of the split, the hole is the mask
dilated by ``dilate`` px (as loose as a segmenter's loose mask would be); inside the hole,
against the true background, all images of the split pooled:

- ``mae``: mean absolute error per pixel and channel, 0..1 scale (x 255 for 8-bit levels);
- ``psnr``: peak signal-to-noise ratio in dB (peak 1.0), per image over its hole, averaged;
- ``texture_ratio``: mean gradient magnitude of the fill inside the hole divided by the same
  on the true background (|grad| = sqrt(dx^2 + dy^2) per channel, channels averaged, at pixels
  whose right and lower neighbours are in the hole too). 1.0 is right; a blur is near 0.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from dali_abs.inpainter.inference import Inpainter, InpainterError

COLUMNS = ("mask_filename", "background_filename")


def _check_columns(dataset, samples) -> None:
    missing = [c for c in COLUMNS if not all(s.extra.get(c) for s in samples)]
    if missing:
        raise InpainterError(f"{dataset.root}: eval needs the metadata.csv column(s) {', '.join(missing)} "
                             "(pixel mask, 255 = foreground; the true clean background) for every image of the "
                             "split, relative to the dataset root. The built-in benchmark (`dali-abs make-dataset`) "
                             "has them; other datasets have no clean background to score against.")


def evaluate(dataset, model: str | os.PathLike | Inpainter, *, split: str = "test", dilate: int = 2,
             device: str = "auto", batch_size: int = 16, limit: int | None = None, progress: bool = True) -> dict:
    """MAE, PSNR and texture ratio of ``model`` inside the (dilated) object masks of ``split``."""
    from tqdm import tqdm

    from dali_abs.files import read_mask, read_rgb
    from dali_abs.inpainter.train import dilate as dilate_masks
    from dali_abs.inpainter.train import gradient_magnitude

    if dilate < 0:
        raise InpainterError(f"dilate must be >= 0 px, got {dilate}")
    inp = model if isinstance(model, Inpainter) else Inpainter(model, device=device, batch_size=batch_size)
    samples = dataset.split(split)
    if limit is not None:
        samples = samples[:max(1, int(limit))]
    _check_columns(dataset, samples)
    root = Path(dataset.root)
    tot = {"abs": 0.0, "n": 0.0, "g_fill": 0.0, "g_true": 0.0, "hole": 0.0, "px": 0.0}
    psnrs = []
    t_model = 0.0

    def flush(batch):
        nonlocal t_model
        x = torch.from_numpy(np.stack([b[0] for b in batch])).permute(0, 3, 1, 2).float() / 255.0
        bg = torch.from_numpy(np.stack([b[2] for b in batch])).permute(0, 3, 1, 2).float() / 255.0
        fg = torch.from_numpy(np.stack([b[1] for b in batch])).unsqueeze(1)
        hole = dilate_masks(fg, dilate)
        t = time.perf_counter()
        y = torch.from_numpy(inp.fill(x.numpy(), hole.numpy()))
        t_model += time.perf_counter() - t
        err = (y - bg) * hole
        n = hole.sum((1, 2, 3)) * 3
        tot["abs"] += float(err.abs().sum())
        tot["n"] += float(n.sum())
        tot["hole"] += float(hole.sum())
        tot["px"] += hole.numel()
        mse = (err * err).sum((1, 2, 3)) / n.clamp_min(1)
        for k in range(len(batch)):
            if n[k] > 0:
                psnrs.append(10.0 * math.log10(1.0 / max(float(mse[k]), 1e-10)))
        tot["g_fill"] += float(gradient_magnitude(y, hole)[0].sum())
        tot["g_true"] += float(gradient_magnitude(bg, hole)[0].sum())

    batch = []
    for s in tqdm(samples, desc=f"eval {inp.fill_name}", unit="img", disable=not progress):
        img = read_rgb(s.path)
        mask = read_mask(root / s.extra["mask_filename"])
        bg = read_rgb(root / s.extra["background_filename"])
        if mask.shape != img.shape[:2] or bg.shape != img.shape:
            raise InpainterError(f"image {s.id}: image {img.shape[:2]}, mask {mask.shape} and background "
                                 f"{bg.shape[:2]} differ in size")
        if batch and batch[0][0].shape != img.shape:
            flush(batch)
            batch = []
        batch.append((img, mask, bg))
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if not tot["n"]:
        raise InpainterError(f"split {split!r}: every mask is empty; nothing to score")
    return {"model": str(inp.path), "fill": inp.fill_name, "split": split, "images": len(samples),
            "dilate": dilate, "hole_fraction": tot["hole"] / tot["px"],
            "mae": tot["abs"] / tot["n"], "psnr": float(np.mean(psnrs)),
            "texture_ratio": tot["g_fill"] / max(tot["g_true"], 1e-12),
            "model_seconds": round(t_model, 3)}


def throughput(model: str | os.PathLike | Inpainter, *, size: int = 224, batch_size: int = 16, seconds: float = 3.0,
               device: str = "auto", seed: int = 0) -> dict:
    """Images/s of ``model`` through onnxruntime on random ``size`` x ``size`` images with a
    centred disk hole (~20 % of the pixels), batches of ``batch_size``, after one warm-up batch."""
    inp = model if isinstance(model, Inpainter) else Inpainter(model, device=device, batch_size=batch_size)
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, 3, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.25 * size) ** 2).astype(np.float32)
    m = np.broadcast_to(disk, (batch_size, 1, size, size)).copy()
    inp.fill(x, m)
    n, t0 = 0, time.perf_counter()
    while True:
        inp.fill(x, m)
        n += batch_size
        dt = time.perf_counter() - t0
        if dt >= seconds:
            break
    return {"fill": inp.fill_name, "size": size, "batch_size": inp.batch_size, "images_per_s": n / dt,
            "providers": inp.providers}
