"""``make demo`` / ``dali-abs demo OUT``: the chain on the built-in data, step by step.

Each step writes its output into OUT and is skipped when that output already exists, so an
interrupted demo resumes where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from dali_abs.dataset import load_dataset
from dali_abs.files import read_mask, read_rgb
from dali_abs.labels import labels_from_masks, read_labels, write_labels
from dali_abs.preview import grid_overlay, mask_overlay, save_grid
from dali_abs.synthetic import SyntheticConfig, make_dataset

GRID = 8  # 8 x 8 patches of 16 px at 128 px: the CPU demo's setting
LABELLED = 200


def _step(name: str, output: Path, fn) -> None:
    if output.exists():
        print(f"[demo] {name}: done before ({output})")
        return
    t0 = time.perf_counter()
    fn()
    print(f"[demo] {name}: {time.perf_counter() - t0:.1f} s -> {output}")


def run_demo(out: Path, fresh: bool = False) -> int:
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    labels_path = out / "labels.csv"
    preview = out / "preview-labels.png"

    _step("make the built-in dataset", data / "metadata.csv",
          lambda: make_dataset(data, SyntheticConfig()))
    ds = load_dataset(data)
    _step(f"derive {GRID} x {GRID} patch labels for {LABELLED} majority-group images", labels_path,
          lambda: write_labels(labels_path, labels_from_masks(ds, data / "masks", grid=GRID, threshold=0.25,
                                                              count=LABELLED, majority_only=True, seed=0)))
    labels = read_labels(labels_path, ds)

    def write_preview() -> None:
        by_id = ds.by_id()
        rows = []
        for sid in list(labels)[:6]:
            s = by_id[sid]
            img = read_rgb(s.path)
            mask = read_mask(data / s.extra["mask_filename"])
            rows.append([img, mask_overlay(img, mask), grid_overlay(img, labels[sid])])
        save_grid(preview, rows)

    _step("preview: image | ground-truth mask | patch labels", preview, write_preview)
    fg = float(np.mean([g.mean() for g in labels.values()]))
    print()
    print(f"dataset   {data}  ({', '.join(f'{k} {v}' for k, v in ds.split_counts().items())}; "
          f"{ds.n_classes} classes x {ds.n_places} places)")
    print(f"labels    {labels_path}  ({len(labels)} images, {GRID} x {GRID}, {fg:.1%} foreground patches)")
    print(f"preview   {preview}")
    return 0
