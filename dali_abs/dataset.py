"""Dataset manifests: the first stage of the flow. Reads a user's dataset, never writes into it.

Two layouts are understood:

- **Waterbirds-style** ``metadata.csv`` in the dataset root with columns
  ``img_id,img_filename,y,split,place`` (extra columns are kept in :attr:`Sample.extra`).
  ``img_filename`` is relative to the root; ``split`` is 0/1/2 (or ``train``/``val``/``test``);
  ``y`` is the integer class; ``place`` (optional) the integer background type.
  The group of a sample is ``y * n_places + place``, as in Waterbirds.
  ``y`` and ``place`` must be numbered 0..K-1: more than half of 0..max empty (``y = 5000000``
  in one row) is refused naming the row, a few empty indices are a :class:`DatasetWarning`.
  A ``Metadata.csv`` in another case is refused, never read as an ImageFolder.
  Column names can be remapped with :class:`Columns`.
- **ImageFolder**: ``root/<class>/<image>``, or ``root/<split>/<class>/<image>`` when the root
  holds ``train/`` (and optionally ``val/``, ``test/``). No groups. Class indices follow the
  sorted class-folder names, as in torchvision.

Every image must lie inside the root: a path with ``..`` that leaves it, an absolute path, or a
symbolic link resolving outside it is refused (naming the row or file) unless the dataset is
loaded with ``allow_outside=True`` (``--allow-outside``), e.g. for a folder of links into a
shared image store. See :func:`dataset_file`.

Bad manifests raise :class:`~dali_abs.errors.DatasetError` naming the row or file.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from dali_abs.errors import DatasetError, DatasetWarning
from dali_abs.files import ImageError, open_image, read_csv

SPLITS = ("train", "val", "test")
_SPLIT_CODES = {"0": "train", "1": "val", "2": "test", "train": "train", "val": "val",
                "valid": "val", "validation": "val", "test": "test"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
METADATA_FILE = "metadata.csv"


@dataclass(frozen=True)
class Columns:
    """Names of the metadata.csv columns (remap when your file uses other names)."""

    id: str = "img_id"
    filename: str = "img_filename"
    label: str = "y"
    split: str = "split"
    place: str = "place"


@dataclass(frozen=True)
class Sample:
    id: str
    path: Path  # absolute path of the image file
    relpath: str  # path relative to the dataset root, as written in the manifest
    label: int
    split: str  # one of SPLITS
    place: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Dataset:
    """A parsed manifest: samples in manifest order, classes, and places when present."""

    root: Path
    layout: str  # "metadata" or "imagefolder"
    samples: list[Sample]
    classes: list[str]
    n_places: int = 0
    ignored: list[str] = field(default_factory=list)  # files skipped by extension (ImageFolder)
    allow_outside: bool = False  # loaded with allow_outside=True: image paths may lead out of the root
    warnings: list[str] = field(default_factory=list)  # suspicious but usable (also issued as DatasetWarning)

    @property
    def has_groups(self) -> bool:
        return self.n_places > 0

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_groups(self) -> int:
        return self.n_classes * self.n_places if self.has_groups else 0

    def group(self, sample: Sample) -> int | None:
        """Group index ``y * n_places + place`` (Waterbirds convention), None without places."""
        if sample.place is None:
            return None
        return sample.label * self.n_places + sample.place

    def group_name(self, group: int) -> str:
        y, place = divmod(group, self.n_places)
        return f"y={y},place={place}"

    def split(self, name: str) -> list[Sample]:
        """Samples of one split; raises if the split is unknown or empty."""
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        out = [s for s in self.samples if s.split == name]
        if not out:
            counts = ", ".join(f"{k}={v}" for k, v in self.split_counts().items()) or "none"
            raise DatasetError(f"{self.root}: split {name!r} has no images (splits found: {counts}). "
                               f"Add {name} images or choose another split.")
        return out

    def split_counts(self) -> dict[str, int]:
        c = Counter(s.split for s in self.samples)
        return {k: c[k] for k in SPLITS if c[k]}

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}

    def majority_groups(self) -> set[int]:
        """For each class, the group (place) it appears with most often in the train split."""
        if not self.has_groups:
            raise DatasetError(f"{self.root}: the dataset has no place column, so it has no groups; "
                               "majority groups need a 'place' column in metadata.csv")
        counts = Counter(self.group(s) for s in self.split("train"))
        best: dict[int, tuple[int, int]] = {}
        for g, n in counts.items():
            y = g // self.n_places
            if y not in best or n > best[y][1]:
                best[y] = (g, n)
        return {g for g, _ in best.values()}

    def check_output(self, path: str | os.PathLike, option: str = "output") -> Path:
        """``path`` resolved (symbolic links followed); refuses one inside the dataset folder.

        The one check of every writer (reports, labels, caches, models): the user's dataset is
        read-only to us. ``option`` names the setting in the message (e.g. ``--out``).
        """
        p = Path(path).expanduser().resolve()
        if p == self.root or p.is_relative_to(self.root):
            given = f" ({path})" if str(path) != str(p) else ""
            raise DatasetError(f"{option} {p}{given} is inside the dataset folder {self.root}; the dataset is never "
                               f"written to. Choose a path outside it (run from another folder for a default path).")
        return p

    def fingerprint(self) -> str:
        """Hash of ids, paths, labels, splits, places and file sizes/mtimes (detects a changed dataset)."""
        h = hashlib.sha256()
        for s in self.samples:
            try:
                st = s.path.stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{s.id}\t{s.relpath}\t{s.label}\t{s.split}\t{s.place}\t{stamp}\n".encode())
        return h.hexdigest()[:16]


OUTSIDE_HINT = ("Images must lie inside the dataset folder; pass --allow-outside (allow_outside=True) if the "
                "dataset really links to images elsewhere")


def dataset_file(root: Path, rel: str, where: str, allow_outside: bool = False) -> Path:
    """The resolved absolute path of ``rel`` (a path relative to the resolved dataset ``root``).

    Refuses, naming ``where``: a NUL byte; unless ``allow_outside``, an absolute path, a path
    whose ``..`` leads out of ``root``, and a symbolic link that resolves outside ``root``.
    The one containment check: data check, precompute, training and the label server all read
    images through the samples that :func:`load_dataset` built with it.
    """
    if "\0" in rel:
        raise DatasetError(f"{where}: path {rel!r} holds a NUL byte; fix the path in the manifest")
    p = Path(rel)
    if allow_outside:
        return (root / p).resolve()
    if p.is_absolute():
        raise DatasetError(f"{where}: path {rel!r} is absolute; write it relative to the dataset folder {root}. "
                           + OUTSIDE_HINT)
    resolved = (root / p).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        how = "leads out of" if ".." in p.parts else f"resolves through a symbolic link to {resolved}, outside"
        raise DatasetError(f"{where}: path {rel!r} {how} the dataset folder {root}. " + OUTSIDE_HINT)
    return resolved


def load_dataset(root: str | os.PathLike, columns: Columns = Columns(), allow_outside: bool = False) -> Dataset:
    """Read the dataset at ``root``: ``metadata.csv`` if present, else an ImageFolder layout.

    ``allow_outside``: accept image paths that lead outside ``root`` (see :func:`dataset_file`).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found. Pass the folder that holds "
                           f"{METADATA_FILE} or the class folders.")
    if (root / METADATA_FILE).is_file():
        return _load_metadata(root, columns, allow_outside)
    other = sorted(p.name for p in root.iterdir() if p.name.lower() == METADATA_FILE and p.is_file())
    if other:
        # Never an ImageFolder then: its class folders would be masks/, backgrounds/ and the image folders.
        raise DatasetError(f"{root}: has {other[0]} but no {METADATA_FILE} (file names are case-sensitive). "
                           f"Rename it to {METADATA_FILE}; without it this folder would be read as an ImageFolder "
                           "with its sub-folders as classes.")
    return _load_imagefolder(root, allow_outside)


def _load_metadata(root: Path, columns: Columns, allow_outside: bool) -> Dataset:
    path = root / METADATA_FILE
    header, reader = read_csv(path, DatasetError, as_dicts=True)
    header = header or []
    required = [columns.id, columns.filename, columns.label, columns.split]
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; header is {','.join(header)}. "
            "Rename the columns or remap them (--col-id, --col-filename, --col-label, --col-split).")
    has_place = columns.place in header
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for rowno, row in enumerate(reader, start=2):  # row 1 is the header
        where = f"{path} row {rowno}"
        sid = (row[columns.id] or "").strip()
        if not sid:
            raise DatasetError(f"{where}: empty {columns.id}")
        if sid in seen:
            raise DatasetError(f"{where}: duplicate {columns.id} {sid!r} (first seen in row {seen[sid]}). "
                               "Every image needs its own id.")
        seen[sid] = rowno
        rel = (row[columns.filename] or "").strip()
        img = dataset_file(root, rel, f"{where} ({columns.id}={sid})", allow_outside) if rel else None
        if img is None or not img.is_file():
            raise DatasetError(f"{where} ({columns.id}={sid}): image file {rel!r} not found under {root}. "
                               "Fix the path in the manifest or restore the file.")
        label = _parse_int(row[columns.label], where, columns.label, sid)
        split_raw = (row[columns.split] or "").strip().lower()
        if split_raw not in _SPLIT_CODES:
            raise DatasetError(f"{where} ({columns.id}={sid}): unknown {columns.split} value "
                               f"{row[columns.split]!r}; expected 0/1/2 or train/val/test.")
        place = _parse_int(row[columns.place], where, columns.place, sid) if has_place else None
        extra = {k: v for k, v in row.items() if k not in required and k != columns.place and k}
        samples.append(Sample(sid, img, rel, label, _SPLIT_CODES[split_raw], place, extra))
    if not samples:
        raise DatasetError(f"{path}: no rows. Add one row per image.")
    notes: list[str] = []
    n_classes = _index_range(path, columns.label, "class", [s.label for s in samples], notes)
    n_places = _index_range(path, columns.place, "place", [s.place for s in samples], notes) if has_place else 0
    ds = Dataset(root, "metadata", samples, [str(i) for i in range(n_classes)], n_places, allow_outside=allow_outside,
                 warnings=notes)
    ds.split("train")  # an empty train split is an error for every command
    for note in notes:
        warnings.warn(note, DatasetWarning, stacklevel=3)
    return ds


def _index_range(path: Path, column: str, what: str, values: list[int], notes: list[str]) -> int:
    """K for integer indices that must be 0..K-1 (classes, places), K = max + 1.

    The rule: a negative index, or a K more than twice the number of distinct values (most of
    0..K-1 empty: ``y = 5000000`` in one row), is refused naming the row; a few empty indices
    (labels numbered from 1, a class without images) are a warning added to ``notes``.
    Rows are numbered as in the file (row 1 is the header).
    """
    first: dict[int, int] = {}
    for i, v in enumerate(values):
        first.setdefault(v, i + 2)
    lo, hi = min(first), max(first)
    plural = "classes" if what == "class" else what + "s"
    if lo < 0:
        raise DatasetError(f"{path} row {first[lo]}: {column} = {lo}; {plural} must be numbered 0..K-1")
    k, present = hi + 1, len(first)
    if 2 * present < k:
        shown = ", ".join(str(v) for v in sorted(first)[:8]) + (", ..." if present > 8 else "")
        raise DatasetError(f"{path} row {first[hi]}: {column} = {hi} makes {k:,} {plural} (0..{hi}), but only "
                           f"{present} distinct values occur ({shown}). {plural.capitalize()} must be numbered "
                           f"0..K-1: renumber the {column} column (e.g. the sorted distinct values to 0, 1, 2, ...)")
    missing = sorted(set(range(k)) - set(first))
    if missing:
        shown = ", ".join(str(v) for v in missing[:8]) + (", ..." if len(missing) > 8 else "")
        hint = f" Numbered from 1? {plural.capitalize()} start at 0." if missing == [0] else ""
        notes.append(f"{path}: {column} has no rows for {len(missing)} of its {k} {plural} ({shown}); they are "
                     f"kept as empty {plural} (a classifier gets {k} outputs).{hint}" if what == "class" else
                     f"{path}: {column} has no rows for {len(missing)} of its {k} {plural} ({shown}); their "
                     f"groups are empty.{hint}")
    return k


def _parse_int(value: str | None, where: str, column: str, sid: str) -> int:
    text = (value or "").strip()
    try:
        return int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            f = None
        if f is not None and f.is_integer():
            return int(f)
        raise DatasetError(f"{where} (img_id={sid}): {column} must be an integer, got {value!r}") from None


def _load_imagefolder(root: Path, allow_outside: bool) -> Dataset:
    split_dirs = [d for d in SPLITS if (root / d).is_dir()]
    if split_dirs and "train" not in split_dirs:
        raise DatasetError(f"{root}: has split folder(s) {', '.join(split_dirs)} but no train/ folder")
    bases = [(root / d, d) for d in split_dirs] if split_dirs else [(root, "train")]
    class_names = sorted({c.name for base, _ in bases for c in _subdirs(base)})
    if not class_names:
        raise DatasetError(f"{root}: no {METADATA_FILE} and no class folders. Expected "
                           "root/<class>/<image> or root/train/<class>/<image>.")
    index = {c: i for i, c in enumerate(class_names)}
    samples: list[Sample] = []
    ignored: list[str] = []
    for base, split in bases:
        for cdir in _subdirs(base):
            for dirpath, dirnames, filenames in os.walk(cdir):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    p = Path(dirpath) / name
                    rel = p.relative_to(root).as_posix()
                    if p.suffix.lower() not in IMAGE_EXTENSIONS:
                        ignored.append(rel)
                        continue
                    samples.append(Sample(rel, dataset_file(root, rel, str(p), allow_outside), rel,
                                          index[cdir.name], split))
    if not samples:
        raise DatasetError(f"{root}: class folders hold no images with extensions "
                           f"{', '.join(IMAGE_EXTENSIONS)}")
    ds = Dataset(root, "imagefolder", samples, class_names, 0, ignored, allow_outside)
    ds.split("train")
    return ds


def _subdirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def check_images(dataset: Dataset, min_size: int = 1, progress: bool = True, max_pixels: int | None = None) -> dict:
    """Decode every image; return a report of the unreadable, damaged, too small and too large ones.

    A JPEG is damaged when its strict decode reports corrupt data (:func:`dali_abs.jpeg.jpeg_defect`,
    the rule by which ``precompute`` skips it too).

    Images over ``max_pixels`` (default :data:`dali_abs.files.MAX_PIXELS`, the limit every
    reader applies) are reported from their header without being decoded.
    The report is a dict with ``checked``, ``ok``, ``problems`` (a list of
    ``{"id", "path", "reason"}``), ``ignored`` (non-image files) and ``modes`` (counts of
    PIL modes, e.g. how many grayscale or CMYK images need conversion).
    """
    from tqdm import tqdm

    from dali_abs.jpeg import jpeg_defect

    problems: list[dict] = []
    modes: Counter = Counter()
    for s in tqdm(dataset.samples, desc="checking images", unit="img", disable=not progress):
        try:
            with open_image(s.path, max_pixels=max_pixels) as im:
                defect = jpeg_defect(s.path) if im.format == "JPEG" else None  # the rule precompute skips by
                if defect:
                    problems.append({"id": s.id, "path": s.relpath, "reason": defect})
                    continue
                im.load()
                modes[im.mode] += 1
                w, h = im.size
            if min(w, h) < min_size:
                problems.append({"id": s.id, "path": s.relpath,
                                 "reason": f"too small: {w}x{h}, need at least {min_size} px per side"})
        except ImageError as e:
            problems.append({"id": s.id, "path": s.relpath, "reason": e.reason})
    return {"root": str(dataset.root), "layout": dataset.layout, "checked": len(dataset.samples),
            "ok": len(dataset.samples) - len(problems), "problems": problems,
            "ignored": list(dataset.ignored), "modes": dict(modes),
            "splits": dataset.split_counts(), "classes": dataset.n_classes,
            "groups": dataset.n_groups, "fingerprint": dataset.fingerprint(), "warnings": list(dataset.warnings)}

