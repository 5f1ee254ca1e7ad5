"""Patch labels: the second stage. Which R x R patches of an image show the foreground.

File format (``labels.csv``, UTF-8, one header line)::

    image_id,grid,mask
    00012,16,0000000000000000000000011000000...   (grid*grid characters)

- ``image_id``: the dataset's image id (``img_id`` of metadata.csv, or the relative path
  for ImageFolder datasets).
- ``grid``: R, the number of patches per side (the same R for every row).
- ``mask``: R*R characters ``0``/``1``, row-major (top row first), **1 = foreground**.

In memory a label is a bool array of shape (R, R), True = foreground.

The reference implementation's hand-label file (``masks.csv`` with columns ``info,mask``,
a 256-character 0/1 string, 16 x 16, 1 = foreground) is converted by
:func:`import_reference`.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from dali_abs.dataset import Dataset, Sample
from dali_abs.errors import LabelsError
from dali_abs.files import atomic_writer, read_csv, read_mask

HEADER = ("image_id", "grid", "mask")


def encode_grid(grid: np.ndarray) -> str:
    return "".join("1" if v else "0" for v in np.asarray(grid, bool).ravel())


def decode_grid(text: str, r: int, where: str) -> np.ndarray:
    """Parse R*R '0'/'1' characters (row-major, 1 = foreground) to a bool (R, R) array."""
    text = text.strip()
    if len(text) != r * r:
        raise LabelsError(f"{where}: mask has {len(text)} characters, expected {r * r} (grid {r} x {r})")
    bad = sorted(set(text) - {"0", "1"})
    if bad:
        raise LabelsError(f"{where}: mask may hold only 0 and 1, found {''.join(bad)!r}")
    return (np.frombuffer(text.encode("ascii"), np.uint8) == ord("1")).reshape(r, r)


def read_labels(path: str | os.PathLike, dataset: Dataset | None = None) -> dict[str, np.ndarray]:
    """Read a labels file to ``{image_id: bool (R, R) grid}`` in file order.

    With ``dataset``, every id must be one of its images. All rows must share one grid size.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found")
    known = dataset.by_id() if dataset is not None else None
    out: dict[str, np.ndarray] = {}
    grid_size: tuple[int, int] | None = None  # (R, row where first seen)
    header, reader = read_csv(path, LabelsError)
    if header is None or tuple(h.strip() for h in header) != HEADER:
        hint = (" (this looks like the reference implementation's masks.csv: convert it with "
                "`dali-abs labels import-reference`)") if header and header[:2] == ["info", "mask"] else ""
        raise LabelsError(f"{path}: header must be {','.join(HEADER)}, got {','.join(header or [])!r}{hint}")
    for rowno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path} row {rowno}"
        if len(row) != 3:
            raise LabelsError(f"{where}: expected 3 fields (image_id,grid,mask), got {len(row)}")
        sid, r_text, mask = (c.strip() for c in row)
        try:
            r = int(r_text)
        except ValueError:
            raise LabelsError(f"{where}: grid must be an integer, got {r_text!r}") from None
        if r < 1:
            raise LabelsError(f"{where}: grid must be positive, got {r}")
        if grid_size is None:
            grid_size = (r, rowno)
        elif r != grid_size[0]:
            raise LabelsError(f"{where}: grid {r} differs from grid {grid_size[0]} of row {grid_size[1]}; "
                              "one file holds one grid size")
        if sid in out:
            raise LabelsError(f"{where}: duplicate image_id {sid!r}")
        if known is not None and sid not in known:
            raise LabelsError(f"{where}: image_id {sid!r} is not in the dataset at {dataset.root}")
        out[sid] = decode_grid(mask, r, where)
    if not out:
        raise LabelsError(f"{path}: no labels (only a header)")
    return out


def grid_size(labels: Mapping[str, np.ndarray]) -> int:
    return next(iter(labels.values())).shape[0]


def write_labels(path: str | os.PathLike, labels: Mapping[str, np.ndarray]) -> None:
    """Write ``{image_id: bool (R, R)}`` atomically in the format above."""
    sizes = {np.asarray(g).shape for g in labels.values()}
    if len(sizes) > 1:
        raise LabelsError(f"labels mix grid shapes {sorted(sizes)}; one file holds one grid size")
    for shape in sizes:
        if len(shape) != 2 or shape[0] != shape[1]:
            raise LabelsError(f"a label grid must be square (R, R), got shape {shape}")
    with atomic_writer(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        for sid, g in labels.items():
            w.writerow([sid, np.asarray(g).shape[0], encode_grid(g)])


def import_reference(masks_csv: str | os.PathLike, out: str | os.PathLike,
                     dataset: Dataset | None = None) -> dict[str, np.ndarray]:
    """Convert the reference implementation's ``masks.csv`` (``info,mask``, 16 x 16, 1 = fg)."""
    masks_csv = Path(masks_csv)
    if not masks_csv.is_file():
        raise LabelsError(f"{masks_csv}: file not found")
    known = dataset.by_id() if dataset is not None else None
    labels: dict[str, np.ndarray] = {}
    fieldnames, reader = read_csv(masks_csv, LabelsError, as_dicts=True)
    if not fieldnames or not {"info", "mask"} <= set(fieldnames):
        raise LabelsError(f"{masks_csv}: expected columns info,mask (the reference implementation's "
                          f"hand-label file), got {','.join(fieldnames or [])!r}")
    for rowno, row in enumerate(reader, start=2):
        where = f"{masks_csv} row {rowno}"
        sid = (row["info"] or "").strip()
        if not sid:
            raise LabelsError(f"{where}: empty info (image id)")
        text = (row["mask"] or "").strip()
        r = math.isqrt(len(text))
        if r * r != len(text) or len(text) != 256:
            raise LabelsError(f"{where}: mask has {len(text)} characters, expected 256 (16 x 16)")
        if sid in labels:
            raise LabelsError(f"{where}: duplicate info {sid!r}")
        if known is not None and sid not in known:
            raise LabelsError(f"{where}: image id {sid!r} is not in the dataset at {dataset.root}")
        labels[sid] = decode_grid(text, r, where)
    if not labels:
        raise LabelsError(f"{masks_csv}: no rows")
    write_labels(out, labels)
    return labels


def patch_coverage(mask: np.ndarray, grid: int) -> np.ndarray:
    """Fraction of foreground pixels in each of R x R patches (float32 (R, R), 0..1).

    ``mask`` is bool or 0/1, HW. Patch edges fall at ``round(i * H / R)``, so sizes that R
    does not divide are handled (patches differ by at most one pixel).
    """
    m = np.asarray(mask, np.float64)
    if m.ndim != 2:
        raise ValueError(f"mask must be HW, got shape {m.shape}")
    h, w = m.shape
    if h < grid or w < grid:
        raise ValueError(f"mask {w}x{h} is smaller than the {grid} x {grid} patch grid")
    ys = np.round(np.arange(grid + 1) * h / grid).astype(int)
    xs = np.round(np.arange(grid + 1) * w / grid).astype(int)
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    sums = integral[np.ix_(ys[1:], xs[1:])] - integral[np.ix_(ys[:-1], xs[1:])] \
        - integral[np.ix_(ys[1:], xs[:-1])] + integral[np.ix_(ys[:-1], xs[:-1])]
    areas = np.outer(np.diff(ys), np.diff(xs))
    return (sums / areas).astype(np.float32)


def find_mask_file(masks_dir: Path, sample: Sample) -> Path:
    """The first of ``<masks>/<img_id>.png``, ``<masks>/<img_filename with .png>`` (CUB's
    segmentations), ``<masks>/<img_filename below its first folder, with .png>`` (masks beside
    ``images/``: ``images/a/b.jpg`` -> ``<masks>/a/b.png``) and ``<masks>/<image file stem>.png``
    that exists."""
    rel = Path(sample.relpath)
    candidates = [masks_dir / f"{sample.id}.png", (masks_dir / rel).with_suffix(".png")]
    if len(rel.parts) > 1:
        candidates.append((masks_dir / Path(*rel.parts[1:])).with_suffix(".png"))
    candidates.append(masks_dir / f"{rel.stem}.png")
    for c in candidates:
        if c.is_file():
            return c
    raise LabelsError(f"no mask for image {sample.id!r} ({sample.relpath}): looked for "
                      f"{', '.join(str(c) for c in candidates)}")


def select_for_labelling(dataset: Dataset, count: int | None, majority_only: bool, seed: int) -> list[Sample]:
    """Train-split images to label: ``count`` drawn at random (all if None), optionally
    only from the majority groups (each class on its most frequent place), as the paper does."""
    pool = dataset.split("train")
    if majority_only:
        major = dataset.majority_groups()
        pool = [s for s in pool if dataset.group(s) in major]
    if count is None:
        return pool
    if count < 1:
        raise LabelsError(f"--count must be positive, got {count}")
    if count > len(pool):
        which = "majority-group training images" if majority_only else "training images"
        raise LabelsError(f"--count {count} is more than the {len(pool)} {which} of {dataset.root}")
    idx = np.sort(np.random.default_rng(seed).choice(len(pool), size=count, replace=False))
    return [pool[i] for i in idx]


def labels_from_masks(dataset: Dataset, masks_dir: str | os.PathLike, grid: int = 16, threshold: float = 0.25,
                      count: int | None = None, majority_only: bool = False, seed: int = 0,
                      progress: bool = True) -> dict[str, np.ndarray]:
    """Derive patch labels from pixel masks: a patch is foreground when its coverage > ``threshold``.

    Masks are grayscale images, 255 = foreground (see :func:`dali_abs.files.read_mask`),
    at the size of their image.
    """
    from tqdm import tqdm

    if not 0.0 <= threshold < 1.0:
        raise LabelsError(f"--threshold must be in [0, 1), got {threshold}")
    if grid < 1:
        raise LabelsError(f"--grid must be positive, got {grid}")
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise LabelsError(f"{masks_dir}: masks folder not found")
    chosen = select_for_labelling(dataset, count, majority_only, seed)
    out: dict[str, np.ndarray] = {}
    for s in tqdm(chosen, desc="patch labels", unit="img", disable=not progress):
        path = find_mask_file(masks_dir, s)
        mask = read_mask(path)
        if min(mask.shape) < grid:
            raise LabelsError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} px, smaller than the "
                              f"{grid} x {grid} grid; use a smaller --grid")
        out[s.id] = patch_coverage(mask, grid) > threshold
    return out
