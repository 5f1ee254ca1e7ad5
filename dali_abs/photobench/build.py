"""Build the benchmark: check every source photo, split, pair, composite, write (see the package doc)."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dali_abs.dataset import METADATA_FILE, SPLITS, Columns, Dataset, Sample, load_dataset
from dali_abs.errors import DaliAbsError, LabelsError
from dali_abs.files import atomic_write_text, atomic_writer, read_rgb, read_soft_mask, write_image
from dali_abs.photobench import compose
from dali_abs.photobench.config import PhotoBenchError, PhotoConfig
from dali_abs.photobench.plan import Composite, assign_splits, plan_split
from dali_abs.photobench.quality import HIGH, LOW, mask_quality, skip_reason
from dali_abs.threads import torch_threads

MAX_LOST = 0.02  # share of an object's mask a square crop may cut away before the object is skipped
COLUMNS = ("img_id", "img_filename", "y", "split", "place", "mask_filename", "background_filename",
           "object_id", "object_file", "place_id", "place_file", "object_scale", "object_x", "object_y")
_ORDER_TAG = 15


@dataclass
class Photo:
    """A source photo that passed the checks, in one or both roles."""

    key: int
    sample: Sample
    stratum: int  # its class (object photos, habitat places) or its place (a places folder)
    box: tuple[int, int, int]  # the square crop, in the photo's pixels
    mask: Path | None = None
    as_object: bool = True
    as_place: bool = True
    object_grid: np.ndarray | None = None  # habitat mode: coarse object (alpha > 0.5) and hole, for pairing
    hole_grid: np.ndarray | None = None
    stick: tuple[int, int] = (0, 0)  # habitat mode: the sides its photo cuts it on (compose.cut_sides)


def make_photo_dataset(out: str | os.PathLike, objects: str | os.PathLike | Dataset, masks: str | os.PathLike,
                       places: str | os.PathLike | Dataset | None = None, cfg: PhotoConfig = PhotoConfig(),
                       columns: Columns = Columns(), progress: bool = True) -> dict:
    """Build a Waterbirds-layout benchmark into ``out`` (new or empty) from object photos and masks.

    ``objects``: a dataset folder (metadata.csv or ImageFolder; ``columns`` remaps metadata.csv)
    or a loaded :class:`~dali_abs.dataset.Dataset`; its class is the object class and its own
    split is ignored (``cfg.split_fractions`` re-splits). ``masks``: the folder of masks
    (grayscale, 255 = object, soft values allowed), found as ``dali-abs labels from-masks``
    finds them (:func:`dali_abs.labels.find_mask_file`). ``places``: an ImageFolder of place
    photos (place = folder, paired with the classes by name or else in sorted order), or None
    for the habitat mode: each photo's own background with the object filled out is a place of
    its class. Returns the summary written to ``out/dataset.json`` (plus ``out``).
    """
    cfg.check()
    # one thread: the fill and dilation are small ops on one image; torch's default pool spins against
    # other jobs on a busy machine (2 shared cores: 390 ms per 224 px push-pull fill on 2 threads, 9 ms on 1)
    with torch_threads(1):
        return _make(Path(out).expanduser().resolve(), objects, masks, places, cfg, columns, progress)


def _make(out: Path, objects, masks, places, cfg: PhotoConfig, columns: Columns, progress: bool) -> dict:
    ds = _load(objects, columns, "objects")
    masks = Path(masks).expanduser().resolve()
    if not masks.is_dir():
        raise PhotoBenchError(f"--masks {masks}: folder not found. Pass the folder of the object photos' masks "
                              "(grayscale PNG, 255 = object, named <img_id>.png or by the photo's path)")
    pds = _load(places, Columns(), "places") if places is not None else None
    for name, root in (("DATA", ds.root), ("MASKS", masks)) + ((("PLACES", pds.root),) if pds else ()):
        if out == root or root in out.parents:
            raise PhotoBenchError(f"OUT {out} is inside {name} {root}: input folders are never written to; "
                                  "choose an output folder outside them")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PhotoBenchError(f"{out}: folder is not empty; choose a new folder or delete this one")
    class_names = _class_names(ds, cfg)
    n_classes = len(class_names)
    if n_classes < 2:
        raise PhotoBenchError(f"{ds.root}: found {n_classes} class; a spurious benchmark needs at least two")

    skipped: list[dict] = []
    objs = _check_objects(ds, masks, cfg, habitat=pds is None, skipped=skipped, progress=progress)
    if pds is None:
        place_photos, place_names = objs, [f"{c} habitat" for c in class_names]
    else:
        place_photos, place_names = _check_places(pds, class_names, ds, skipped, progress)

    # Splits: a photo serves one split in every role it has.
    if pds is None:
        split_of = assign_splits(_strata(objs), cfg.split_fractions, cfg.seed)
        place_split = split_of
    else:
        split_of = assign_splits(_strata([p for p in objs if p.as_object]), cfg.split_fractions, cfg.seed)
        place_split = assign_splits(_strata(place_photos), cfg.split_fractions, cfg.seed, tag=1)
    plans: list[Composite] = []
    source_counts: dict[str, dict] = {}
    asked = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    sources = {}
    for split in SPLITS:
        by_class = {y: [p.key for p in objs if p.as_object and p.stratum == y and split_of.get(p.key) == split]
                    for y in range(n_classes)}
        by_place = {q: [p.key for p in place_photos if p.as_place and p.stratum == q
                        and place_split.get(p.key) == split] for q in range(n_classes)}
        sources[split] = by_class, by_place
        source_counts[split] = {"objects": {class_names[y]: len(v) for y, v in by_class.items()},
                                "places": {place_names[q]: len(v) for q, v in by_place.items()}}
    cost = (_hidden_cost_moved(objs) if cfg.moves_objects else _hidden_cost(objs)) if pds is None else None
    for split in SPLITS:
        if split == "val" and cfg.split_fractions[1] == 0.0:
            if cfg.val:
                raise PhotoBenchError(f"--val {cfg.val} asks for val composites but --split-fractions gives val "
                                      "no photos; give val a share (e.g. 0.5,0.2,0.3) or drop --val")
            continue
        if asked[split] == 0:
            continue
        by_class, by_place = sources[split]
        _check_split(split, by_class, by_place, class_names, place_names, cfg, asked[split], source_counts)
        plans += plan_split(split, by_class, by_place, asked[split], cfg.rho, cfg.seed, same_photos=pds is None,
                            cost=cost, object_scale=tuple(cfg.object_scale))
    order = np.random.default_rng([cfg.seed, _ORDER_TAG]).permutation(len(plans))
    plans = [plans[i] for i in order]

    info = _write(out, plans, objs, place_photos, ds, pds, class_names, place_names, cfg, skipped, source_counts,
                  masks, progress)
    return {"out": str(out), **info}


def _hidden_cost(photos: list[Photo]):
    """Pairing cost in habitat mode: the share of the frame where the place's filled hole stays
    visible beside the pasted object (coarse grids). Low cost = the object hides the fill."""
    blank = np.zeros((compose.COARSE, compose.COARSE), np.float32)
    objects = np.stack([p.object_grid if p.object_grid is not None else blank for p in photos])
    holes = np.stack([p.hole_grid if p.hole_grid is not None else blank for p in photos])

    def cost(obj: int, places: np.ndarray, scale: float, at: tuple[float, float]) -> np.ndarray:
        return (holes[places] * (1.0 - objects[obj])).mean(axis=(1, 2))

    return cost


def _hidden_cost_moved(photos: list[Photo]):
    """:func:`_hidden_cost` for scaled, moved objects: the coarse object at the composite's
    scale and at its position (the same draws and cut sides as its pixels)."""
    n = compose.COARSE
    blank = np.zeros((n, n), np.float32)
    objects = [p.object_grid if p.object_grid is not None else blank for p in photos]
    holes = np.stack([p.hole_grid if p.hole_grid is not None else blank for p in photos])

    def cost(obj: int, places: np.ndarray, scale: float, at: tuple[float, float]) -> np.ndarray:
        cover = compose.coarse_shrunk(objects[obj], scale)
        x, y = compose.random_offset(cover.shape, n, at, photos[obj].stick)
        frame = np.zeros((n, n), np.float32)
        frame[y:y + cover.shape[0], x:x + cover.shape[1]] = cover
        return (holes[places] * (1.0 - frame)).mean(axis=(1, 2))

    return cost


def _load(src, columns: Columns, role: str) -> Dataset:
    if isinstance(src, Dataset):
        return src
    root = Path(src).expanduser().resolve()
    meta = root / METADATA_FILE
    if role == "objects" and meta.is_file():
        with open(meta, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
        if columns.split not in header:
            raise PhotoBenchError(
                f"{meta}: no split column {columns.split!r} (header {','.join(header)}); make-dataset re-splits the "
                "photos itself (--split-fractions) but the manifest reader needs one: pass --col-split with any "
                "column of 0/1/2 or train/val/test values (e.g. --col-split split_flag for cub-birds-300)")
    try:
        return load_dataset(root, columns)
    except DaliAbsError as e:
        if role == "places":
            raise PhotoBenchError(f"--places: {e}") from None
        raise


def _class_names(ds: Dataset, cfg: PhotoConfig) -> list[str]:
    if cfg.class_names is None:
        return list(ds.classes)
    names = [str(n) for n in cfg.class_names]
    if len(names) != ds.n_classes or len(set(names)) != len(names):
        raise PhotoBenchError(f"--class-names {','.join(names)}: need {ds.n_classes} distinct names, one per class "
                              f"of {ds.root} (classes {','.join(ds.classes)}, in label order)")
    return names


def _strata(photos: list[Photo]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for p in photos:
        out.setdefault(p.stratum, []).append(p.key)
    return out


def _skip(skipped: list[dict], s: Sample, role: str, kind: str, reason: str, **extra) -> None:
    skipped.append({"id": s.id, "file": s.relpath, "role": role, "kind": kind, "reason": reason, **extra})


def _read_object(s: Sample, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(photo uint8 HWC, its mask float32 HW 0..1 at the photo's size); decode errors raise."""
    img = read_rgb(s.path)
    mask = compose.fit_mask(read_soft_mask(mask_path), img.shape[:2], mask_path, s.path)
    return img, mask


def _check_objects(ds: Dataset, masks: Path, cfg: PhotoConfig, habitat: bool, skipped: list[dict],
                   progress: bool) -> list[Photo]:
    from tqdm import tqdm

    from dali_abs.labels import find_mask_file

    both = "object and place" if habitat else "object"
    found: list[tuple[Sample, Path | None]] = []
    first_miss = None
    for s in ds.samples:
        try:
            found.append((s, find_mask_file(masks, s)))
        except LabelsError as e:
            found.append((s, None))
            first_miss = first_miss or str(e)
    if not any(m for _, m in found):
        raise PhotoBenchError(f"--masks {masks}: no mask for any of the {len(ds.samples)} photos of {ds.root}; "
                              f"{first_miss}. Pass the folder that holds the masks")
    photos: list[Photo] = []
    for s, mpath in tqdm(found, desc="checking photos and masks", unit="img", disable=not progress):
        if mpath is None:
            _skip(skipped, s, both, "no mask", f"no mask file under {masks} (named <img_id>.png or by the photo's path)")
            continue
        try:
            img, mask = _read_object(s, mpath)
        except PhotoBenchError:
            raise
        except DaliAbsError as e:
            _skip(skipped, s, both, "unreadable", str(e))
            continue
        q = mask_quality(mask)
        bad = skip_reason(q, cfg)
        if bad:
            _skip(skipped, s, both, bad[0], bad[1], **q.as_dict())
            continue
        box, lost = compose.square_box(mask)
        photo = Photo(len(photos), s, s.label, box, mpath)
        if lost > MAX_LOST:
            photo.as_object = False
            _skip(skipped, s, "object", "cut by crop", f"the square crop ({box[2]} px) cuts {lost:.0%} of the object "
                  f"away (more than {MAX_LOST:.0%})", **q.as_dict())
        if habitat:
            small = compose.crop_resize_mask(mask, box, cfg.size)
            hole_px = compose.hole_of(small, cfg.dilate_px)
            alpha = compose.alpha_of(small)
            photo.object_grid, photo.hole_grid = compose.coarse(alpha > 0.5), compose.coarse(hole_px)
            photo.stick = compose.cut_sides(alpha)
            hole = float(hole_px.mean())
            if hole > cfg.max_hole:
                photo.as_place = False
                _skip(skipped, s, "place", "hole too large", f"as a place: the object (dilated {cfg.dilate_px} px) "
                      f"covers {hole:.0%} of the frame (above --max-hole {cfg.max_hole:.0%})", **q.as_dict())
        if photo.as_object or photo.as_place:
            photos.append(photo)
    return photos


def _check_places(pds: Dataset, class_names: list[str], ds: Dataset, skipped: list[dict],
                  progress: bool) -> tuple[list[Photo], list[str]]:
    from tqdm import tqdm

    if pds.n_classes != len(class_names):
        raise PhotoBenchError(f"--places {pds.root}: {pds.n_classes} place folder(s) ({', '.join(pds.classes)}) for "
                              f"{len(class_names)} classes ({', '.join(class_names)}); give one place per class")
    if set(pds.classes) == set(class_names):  # paired by name ...
        index = {c: class_names.index(c) for c in pds.classes}
        names = list(class_names)
    else:  # ... or in sorted order
        index = {c: i for i, c in enumerate(pds.classes)}
        names = list(pds.classes)
    object_files = {s.path for s in ds.samples}
    photos: list[Photo] = []
    for s in tqdm(pds.samples, desc="checking place photos", unit="img", disable=not progress):
        if s.path in object_files:
            raise PhotoBenchError(f"--places {pds.root}: {s.relpath} is also an object photo of {ds.root}; a photo "
                                  "is an object or a place, not both (leave out --places to use the objects' own "
                                  "backgrounds)")
        try:
            h, w = read_rgb(s.path).shape[:2]
        except DaliAbsError as e:
            _skip(skipped, s, "place", "unreadable", str(e))
            continue
        photos.append(Photo(len(photos), s, index[pds.classes[s.label]], compose.centre_box((h, w)), as_object=False))
    for q, name in enumerate(names):
        if not any(p.stratum == q for p in photos):
            raise PhotoBenchError(f"--places {pds.root}: place folder {name!r} has no readable images; add photos "
                                  "of that place")
    return photos, names


def _check_split(split: str, by_class: dict, by_place: dict, class_names: list[str], place_names: list[str],
                 cfg: PhotoConfig, asked: int | None, source_counts: dict) -> None:
    hint = (f"add photos, lower --min-confidence (now {cfg.min_confidence}) or change --split-fractions "
            f"(now {','.join(str(f) for f in cfg.split_fractions)})")
    for role, keys_of, names in (("objects", by_class, class_names), ("places", by_place, place_names)):
        for i, keys in keys_of.items():
            if not keys:
                have = ", ".join(f"{s} {source_counts[s][role][names[i]]}" for s in SPLITS)
                what = f"class {names[i]!r} has no usable object photo" if role == "objects" else \
                    f"place {names[i]!r} has no usable place photo"
                raise PhotoBenchError(f"{what} in {split} (usable photos per split: {have}); {hint}")
    if split != "train":
        groups = len(by_class) * len(by_place)
        n = sum(len(v) for v in by_class.values()) if asked is None else asked
        if n < groups:
            what = f"--{split} {asked}" if asked is not None else f"{split} has {n} object photos, so its default"
            raise PhotoBenchError(f"{what} is fewer than the {groups} groups {split} must balance; ask for more "
                                  f"(--{split} N) or give {split} a larger share of --split-fractions")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def _write(out: Path, plans: list[Composite], objs: list[Photo], place_photos: list[Photo], ds: Dataset,
           pds: Dataset | None, class_names: list[str], place_names: list[str], cfg: PhotoConfig,
           skipped: list[dict], source_counts: dict, masks: Path, progress: bool) -> dict:
    from tqdm import tqdm

    size = cfg.size
    fill = compose.HabitatFill(cfg.inpainter) if pds is None else None

    @functools.lru_cache(maxsize=256)
    def prepared(key: int) -> tuple[np.ndarray, np.ndarray]:
        """Object photo ``key`` and its mask, cropped and resized to the output size."""
        p = objs[key]
        img, mask = _read_object(p.sample, p.mask)
        return compose.crop_resize(img, p.box, size), compose.crop_resize_mask(mask, p.box, size)

    @functools.lru_cache(maxsize=256)
    def cutout(key: int) -> tuple[np.ndarray, np.ndarray]:
        """(the object's colours, free of its source background under the soft edge, and
        everywhere at alpha 0 when it is to be resampled; its alpha)."""
        img, mask = prepared(key)
        alpha = compose.alpha_of(mask)
        return compose.object_colours(img, alpha, cfg.edge_px, everywhere=cfg.moves_objects), alpha

    def posed(c: Composite, obj: np.ndarray, alpha: np.ndarray):
        """(colours, alpha, (x, y)) of the object in the composite's frame, (x, y) the top-left of
        its box: where it was, or scaled and put anywhere its photo's cut sides allow."""
        if not cfg.moves_objects:
            return obj, alpha, compose.object_box(alpha)[:2]
        stick = compose.cut_sides(alpha)
        try:
            colours, a = compose.shrink_object(obj, alpha, c.scale, stick)
        except ValueError:
            raise PhotoBenchError(f"{objs[c.obj].sample.path}: the object vanishes at scale {c.scale:.3f} at "
                                  f"--size {size}; raise the lower --object-scale (now {cfg.object_scale[0]}) or "
                                  "--size") from None
        xy = compose.random_offset(a.shape, size, c.at, stick)
        return (*compose.place(colours, a, size, xy), xy)

    @functools.lru_cache(maxsize=256)
    def place_image(key: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(place uint8 HWC at the output size, its filled hole or None for a place photo)."""
        p = place_photos[key]
        if fill is None:
            return compose.crop_resize(read_rgb(p.sample.path), p.box, size), None
        img, mask = prepared(key)
        hole = compose.hole_of(mask, cfg.dilate_px)
        return fill.fill(img, hole), hole

    folders = [_safe(c) for c in class_names]
    for f in sorted(set(folders)):
        (out / "images" / f).mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "backgrounds").mkdir(parents=True, exist_ok=True)
    split_code = {"train": 0, "val": 1, "test": 2}
    rows, groups = [], Counter()
    show: dict[int, list] = {}
    show_bg: dict[int, list] = {}
    visible: dict[str, list[float]] = {s: [] for s in SPLITS}
    n_places = len(place_names)
    for img_id, c in enumerate(tqdm(plans, desc="make-dataset", unit="img", disable=not progress)):
        bg, hole = place_image(c.bg)
        obj, alpha, (x, y) = posed(c, *cutout(c.obj))
        img = compose.paste(obj, alpha, bg)
        if hole is not None:
            visible[c.split].append(float((hole & (alpha < 0.5)).mean()))
        name = f"{img_id:05d}"
        rel_img, rel_mask, rel_bg = f"images/{folders[c.y]}/{name}.jpg", f"masks/{name}.png", f"backgrounds/{name}.jpg"
        write_image(out / rel_img, img, quality=90)
        write_image(out / rel_mask, np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8))
        write_image(out / rel_bg, bg, quality=95)
        o, q = objs[c.obj].sample, place_photos[c.bg].sample
        rows.append((img_id, rel_img, c.y, split_code[c.split], c.place, rel_mask, rel_bg, o.id, o.relpath, q.id,
                     q.relpath, round(c.scale, 4), x, y))
        g = c.y * n_places + c.place
        groups[(c.split, g)] += 1
        preview_split = "test"
        if c.split == preview_split and len(show.setdefault(g, [])) < cfg.preview_per_group:
            show[g].append(img)
        if c.split == preview_split and len(show_bg.setdefault(c.place, [])) < cfg.preview_per_group \
                and all(q.id != sid for sid, _ in show_bg[c.place]):
            show_bg[c.place].append((q.id, bg))

    counts = {}
    for split in SPLITS:
        per = {f"y={y},place={p}": groups[(split, y * n_places + p)]
               for y in range(len(class_names)) for p in range(n_places) if groups[(split, y * n_places + p)]}
        if per:
            asked = getattr(cfg, split)
            counts[split] = {"composites": sum(per.values()), "asked": asked, "groups": per}
    used_obj = Counter((c.split, c.obj) for c in plans)
    used_bg = Counter((c.split, c.bg) for c in plans)
    uses = {split: {"objects_used": sum(1 for (s, _) in used_obj if s == split),
                    "max_uses_per_object": max([n for (s, _), n in used_obj.items() if s == split], default=0),
                    "places_used": sum(1 for (s, _) in used_bg if s == split),
                    "max_uses_per_place": max([n for (s, _), n in used_bg.items() if s == split], default=0)}
            for split in counts}
    preview = _preview(out / "preview.png", show, show_bg, skipped, ds, masks, class_names, place_names, n_places,
                       cfg)
    habitat = pds is None
    info = {
        "generator": "dali-abs make-dataset --objects",
        "mode": "habitat" if habitat else "places",
        "config": cfg.as_dict(),
        "objects": {"root": str(ds.root), "masks": str(masks), "photos": len(ds.samples)},
        "places": ({"from": "the object photos' own backgrounds, object removed by the fill",
                    "fill": fill.name, "hole": f"mask above {LOW}, dilated {cfg.dilate_px} px",
                    "fill_visible": {s: {"mean": round(float(np.mean(v)), 4), "max": round(float(np.max(v)), 4)}
                                     for s, v in visible.items() if v}}
                   if habitat else {"root": str(pds.root), "photos": len(pds.samples)}),
        "classes": class_names,
        "places_names": place_names,
        "alpha": f"soft: 0 below mask {LOW}, 1 above {HIGH}, linear between; on the soft edge (alpha < 1 within "
                 f"{cfg.edge_px} px of alpha 0) the object's colours are extrapolated (push-pull) from "
                 "its other pixels, so no rim of its source background is pasted",
        "object_placement": (f"scaled by a factor drawn uniformly from [{cfg.object_scale[0]}, {cfg.object_scale[1]}] "
                             "(antialiased, colours and alpha together; alpha in 1/255 steps, as in masks/), put "
                             "at a uniformly random position wholly inside the frame; a side its photo cuts it on "
                             "stays on the frame's edge; metadata.csv: object_scale, object_x, object_y (top-left "
                             "of its box, mask > 0)" if cfg.moves_objects else
                             "unchanged, where it was in its photo (object_scale 1); metadata.csv: object_x, "
                             "object_y (top-left of its box, mask > 0)"),
        "mask_polarity": "255 = object (soft: the pasted alpha)",
        "group": "y * n_places + place",
        "source_photos": source_counts,
        "counts": counts,
        "uses": uses,
        "skipped": {"objects": sum(r["role"] != "place" for r in skipped),
                    "places": sum(r["role"] != "object" for r in skipped),
                    "by_kind": dict(sorted(Counter(f"{r['kind']} ({r['role']})" for r in skipped).items())),
                    "list": skipped},
        "preview": preview,
    }
    atomic_write_text(out / "dataset.json", json.dumps(info, indent=2) + "\n")
    # The manifest is written last and atomically: a folder with metadata.csv is complete.
    with atomic_writer(out / METADATA_FILE) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows)
    return info


def _preview(path: Path, show: dict, show_bg: dict, skipped: list[dict], ds: Dataset, masks: Path,
             class_names: list[str], place_names: list[str], n_places: int, cfg: PhotoConfig) -> str:
    """preview.png: a row of test composites per group, a row of backgrounds per place, and
    up to one row of skipped object photos with their masks (red)."""
    from dali_abs.labels import find_mask_file
    from dali_abs.preview import caption, mask_overlay, save_grid, text_tile

    tile = max(96, min(cfg.size, 160))  # readable labels, and no more than the eye needs
    rows = []
    for g in sorted(show):
        y, p = divmod(g, n_places)
        rows.append([text_tile([class_names[y], "on", place_names[p], "(test)"], tile)] + show[g])
    for p in sorted(show_bg):
        rows.append([text_tile(["backgrounds:", place_names[p], "(test)"], tile)] + [b for _, b in show_bg[p]])
    shown = []
    by_id = ds.by_id()
    for r in skipped:
        if len(shown) >= cfg.preview_per_group or not r["kind"].startswith("mask"):
            continue
        s = by_id.get(r["id"])
        try:
            img, mask = _read_object(s, find_mask_file(masks, s))
        except DaliAbsError:
            continue
        box = compose.centre_box(img.shape[:2])
        q = f"cover {r['fg_fraction']:.1%}, decided {r['decisive_fraction']:.0%}"
        shown.append(caption(mask_overlay(compose.crop_resize(img, box, tile),
                                          compose.crop_resize_mask(mask, box, tile) > 0.5), q))
    if shown:
        rows.append([text_tile(["skipped:", "bad mask", "(red)"], tile)] + shown)
    save_grid(path, rows, tile=tile)
    return path.name
