"""Scores of a patch segmenter: patch accuracy, balanced accuracy and IoU, pixel IoU, per group.

- Against **patch labels** (``--labels``): every labelled image, each patch scored as
  foreground when the predicted probability >= ``threshold``.
- Against **ground-truth masks** (``--gt-masks DIR``, 255 = foreground): the images of one
  split (default test). Patch scores use labels derived from the masks (coverage >
  ``label_threshold``, as ``dali-abs labels from-masks`` does); **pixel IoU** compares the
  predicted grid, upsampled (nearest) to the image's own size, with the mask.

IoU is pooled over images (sum of intersections over sum of unions); balanced accuracy is
the mean of the foreground and background patch recall. With groups (metadata.csv with a
place column) every score is also given per group and for the majority groups (each class
on its most frequent training place) versus the minority groups (all others).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from dali_abs.dataset import Dataset, Sample
from dali_abs.segmenter.inference import Segmenter, SegmenterError


def confusion(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[tp, fp, fn, tn] counts of two bool arrays of one shape."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    tp = int(np.sum(pred & target))
    fp = int(np.sum(pred & ~target))
    fn = int(np.sum(~pred & target))
    return np.array([tp, fp, fn, pred.size - tp - fp - fn], np.int64)


def scores(c: np.ndarray) -> dict[str, float | None]:
    """patch accuracy, balanced accuracy (mean of the recalls present) and IoU from [tp, fp, fn, tn]."""
    tp, fp, fn, tn = (int(v) for v in c)
    n = tp + fp + fn + tn
    recalls = [r for r in (tp / (tp + fn) if tp + fn else None, tn / (tn + fp) if tn + fp else None) if r is not None]
    return {"accuracy": (tp + tn) / n if n else None,
            "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
            "iou": tp / (tp + fp + fn) if tp + fp + fn else None}


class _Pool:
    """Confusion counts pooled overall, per group and for majority/minority groups."""

    def __init__(self, dataset: Dataset):
        self.ds = dataset
        self.major = dataset.majority_groups() if dataset.has_groups else set()
        self.counts: dict[str, dict[str, np.ndarray]] = {}
        self.images: dict[str, int] = {}

    def _keys(self, sample: Sample) -> list[str]:
        g = self.ds.group(sample)
        if g is None:
            return ["overall"]
        return ["overall", self.ds.group_name(g), "majority" if g in self.major else "minority"]

    def add(self, sample: Sample, kind: str, c: np.ndarray) -> None:
        for k in self._keys(sample):
            self.counts.setdefault(k, {}).setdefault(kind, np.zeros(4, np.int64))
            self.counts[k][kind] += c

    def count(self, sample: Sample) -> None:
        for k in self._keys(sample):
            self.images[k] = self.images.get(k, 0) + 1

    def report(self) -> dict:
        def one(key: str) -> dict:
            d = {"images": self.images.get(key, 0)}
            p = self.counts[key].get("patch")
            if p is not None:
                s = scores(p)
                d.update(patch_accuracy=s["accuracy"], balanced_accuracy=s["balanced_accuracy"], patch_iou=s["iou"])
            q = self.counts[key].get("pixel")
            if q is not None:
                d["pixel_iou"] = scores(q)["iou"]
            return d

        out = {"overall": one("overall")}
        for key in ("majority", "minority"):
            if key in self.counts:
                out[key] = one(key)
        groups = sorted(k for k in self.counts if k not in ("overall", "majority", "minority"))
        if groups:
            out["groups"] = {k: one(k) for k in groups}
        return out


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest upsampling of an (R, R) grid to (h, w) with patch edges at round(i * h / R)."""
    r = grid.shape[0]
    rows = np.minimum((np.arange(h) * r) // h, r - 1)
    cols = np.minimum((np.arange(w) * r) // w, r - 1)
    return grid[np.ix_(rows, cols)]


def evaluate(dataset: Dataset, model: Segmenter | str | os.PathLike, *,
             labels: Mapping[str, np.ndarray] | None = None, gt_masks: str | os.PathLike | None = None,
             split: str = "test", threshold: float = 0.5, label_threshold: float = 0.25,
             device: str = "auto", progress: bool = True) -> dict:
    """Scores as described in the module docstring; returns a JSON-ready dict."""
    from dali_abs.files import read_mask
    from dali_abs.labels import find_mask_file, grid_size, patch_coverage

    if labels is None and gt_masks is None:
        raise SegmenterError("nothing to score against: give patch labels (--labels) or ground-truth masks (--gt-masks)")
    if not 0.0 < threshold < 1.0:
        raise SegmenterError(f"threshold must be in (0, 1), got {threshold}")
    seg = model if isinstance(model, Segmenter) else Segmenter(model, device=device)
    out: dict = {"model": str(seg.path), "grid": seg.grid, "input_size": seg.input_size, "threshold": threshold}
    if labels is not None:
        if not labels:
            raise SegmenterError("the labels hold no image")
        r = grid_size(labels)
        if r != seg.grid:
            raise SegmenterError(f"the labels use a {r} x {r} grid but the model {seg.path} predicts "
                                 f"{seg.grid} x {seg.grid}; label with --grid {seg.grid} or train a model on these labels")
        known = dataset.by_id()
        missing = [k for k in labels if k not in known]
        if missing:
            raise SegmenterError(f"{len(missing)} labelled image(s) are not in the dataset at {dataset.root}, "
                                 f"e.g. {missing[0]!r}")
        samples = [known[k] for k in labels]
        probs = _predict(seg, samples, progress, "eval labels")
        pool = _Pool(dataset)
        for s, p in zip(samples, probs):
            pool.count(s)
            pool.add(s, "patch", confusion(p[0] >= threshold, labels[s.id]))
        out["labels"] = pool.report()
    if gt_masks is not None:
        masks_dir = Path(gt_masks)
        if not masks_dir.is_dir():
            raise SegmenterError(f"{masks_dir}: ground-truth masks folder not found")
        samples = dataset.split(split)
        probs = _predict(seg, samples, progress, f"eval {split}")
        pool = _Pool(dataset)
        for s, p in zip(samples, probs):
            mask = read_mask(find_mask_file(masks_dir, s))
            pred = p[0] >= threshold
            if mask.shape[0] < seg.grid or mask.shape[1] < seg.grid:
                raise SegmenterError(f"{find_mask_file(masks_dir, s)}: mask is {mask.shape[1]}x{mask.shape[0]} px, "
                                     f"smaller than the {seg.grid} x {seg.grid} grid")
            pool.count(s)
            pool.add(s, "patch", confusion(pred, patch_coverage(mask, seg.grid) > label_threshold))
            pool.add(s, "pixel", confusion(_upsample(pred, *mask.shape), mask))
        out["masks"] = {"split": split, "label_threshold": label_threshold, **pool.report()}
    return out


def _predict(seg: Segmenter, samples: Sequence[Sample], progress: bool, desc: str) -> np.ndarray:
    from tqdm import tqdm

    paths = [s.path for s in samples]
    bs = seg.batch_size
    chunks = [seg.predict_files(paths[i:i + bs])
              for i in tqdm(range(0, len(paths), bs), desc=desc, unit="batch", disable=not progress)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 1, seg.grid, seg.grid), np.float32)
