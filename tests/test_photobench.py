"""A benchmark built from photos (``make-dataset --objects``): both place modes on a tiny photo set
made here (red shapes photographed on two textured habitats), read back as a user reads it."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from dali_abs.dataset import Columns, load_dataset
from dali_abs.photobench import PhotoBenchError, PhotoConfig, make_photo_dataset
from dali_abs.photobench import compose
from dali_abs.photobench.plan import plan_split, shares, slots

CLASSES = ("disk", "square")  # class k lives on habitat k: disk on grass, square on water
N_PER_CLASS = 12
CFG = PhotoConfig(size=32, split_fractions=(0.5, 0.25, 0.25), seed=1)
RED = np.array([210, 40, 40], np.float32)


def _habitat(rng, k: int, w: int, h: int) -> np.ndarray:
    """Green grass noise (k = 0) or blue water stripes (k = 1), float HWC 0..255."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if k == 0:
        shade = 0.75 + 0.25 * rng.random((h, w), dtype=np.float32)
        return shade[:, :, None] * np.array([40, 170, 50], np.float32)
    shade = 0.8 + 0.2 * np.sin(yy / 2.0 + rng.uniform(0, 6))
    return shade[:, :, None] * np.array([40, 80, 200], np.float32)


def _shape_mask(k: int, w: int, h: int, cx: float, cy: float, r: float) -> Image.Image:
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    if k == 0:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
    return im.filter(ImageFilter.GaussianBlur(1.2))  # a soft edge, like a real mask


def write_photo_set(root: Path, seed: int = 0) -> dict:
    """objects/<class>/<i>.png, masks/<class>/<i>.png (255 = object, soft edges) and
    places/<grass|water>/<j>.png. Photo 0 of disk has a tiny mask (cover < 2 %), photo 0 of
    square an undecided one (0.6 on the object, 0.3 elsewhere); odd photos are 64 x 48 (not
    square, object off-centre), photo 2 of each class has its mask at twice the resolution."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(CLASSES):
        (root / "objects" / cls).mkdir(parents=True)
        (root / "masks" / cls).mkdir(parents=True)
        for i in range(N_PER_CLASS):
            w, h = (64, 48) if i % 2 else (56, 56)
            r = rng.uniform(9, 12)
            cx = rng.uniform(r + 2, w - r - 2) if i % 2 else rng.uniform(r + 2, w - r - 2)
            cy = rng.uniform(r + 2, h - r - 2)
            soft = np.asarray(_shape_mask(k, w, h, cx, cy, r), np.float32) / 255.0
            photo = _habitat(rng, k, w, h) * (1 - soft[:, :, None]) + RED * soft[:, :, None]
            Image.fromarray(np.clip(photo + 0.5, 0, 255).astype(np.uint8)).save(root / "objects" / cls / f"{i:02d}.png")
            m = np.clip(soft * 255 + 0.5, 0, 255).astype(np.uint8)
            if i == 0 and k == 0:
                m = np.zeros_like(m)
                m[10:12, 10:12] = 255
            if i == 0 and k == 1:
                m = np.where(soft > 0.5, 153, 77).astype(np.uint8)
            mask = Image.fromarray(m)
            if i == 2:
                mask = mask.resize((2 * w, 2 * h), Image.BILINEAR)
            mask.save(root / "masks" / cls / f"{i:02d}.png")
    for k, place in enumerate(("grass", "water")):
        (root / "places" / place).mkdir(parents=True)
        for j in range(8):
            img = _habitat(rng, k, 60, 60)
            Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8)).save(root / "places" / place / f"{j}.png")
    return {"objects": root / "objects", "masks": root / "masks", "places": root / "places"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    return write_photo_set(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module", params=["habitat", "places"])
def built(request, photos, tmp_path_factory) -> tuple[str, Path, dict]:
    out = tmp_path_factory.mktemp(request.param) / "bench"
    places = photos["places"] if request.param == "places" else None
    info = make_photo_dataset(out, photos["objects"], photos["masks"], places, CFG, progress=False)
    return request.param, out, info


def _rows(out: Path) -> list[dict]:
    with open(out / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- layout ------------------------------------------------------------------------------------

def test_builds_our_waterbirds_layout_readable_by_load_dataset(built):
    mode, out, info = built
    ds = load_dataset(out)
    assert ds.layout == "metadata" and ds.n_classes == 2 and ds.n_places == 2 and ds.n_groups == 4
    assert set(ds.split_counts()) == {"train", "val", "test"}
    header = list(_rows(out)[0])
    assert header == ["img_id", "img_filename", "y", "split", "place", "mask_filename", "background_filename",
                      "object_id", "object_file", "place_id", "place_file", "object_scale", "object_x", "object_y"]
    s = ds.samples[0]
    img = np.asarray(Image.open(s.path))
    mask = np.asarray(Image.open(out / s.extra["mask_filename"]))
    bg = np.asarray(Image.open(out / s.extra["background_filename"]))
    assert img.shape == bg.shape == (32, 32, 3) and mask.shape == (32, 32) and mask.dtype == np.uint8
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["mode"] == mode and meta["config"]["min_confidence"] == 0.6
    for split, c in meta["counts"].items():
        assert c["composites"] == ds.split_counts()[split]
    png = Image.open(out / "preview.png")
    assert png.format == "PNG" and png.width >= 2 * 96 and png.height >= 6 * 96  # 4 groups, 2 places


def test_train_at_rho_1_has_no_conflicting_sample_and_val_test_are_balanced(built):
    _, out, _ = built
    ds = load_dataset(out)
    assert all(s.label == s.place for s in ds.split("train"))
    for split in ("val", "test"):
        counts = Counter(ds.group(s) for s in ds.split(split))
        assert len(counts) == 4 and len(set(counts.values())) == 1, (split, counts)


def test_no_source_photo_serves_train_and_eval_in_any_role(built):
    mode, out, _ = built
    rows = _rows(out)
    root = "objects" if mode == "habitat" else None

    def used(splits):
        files = set()
        for r in rows:
            if r["split"] in splits:
                files.add(("objects", r["object_file"]))
                files.add((root or "places", r["place_file"]))
        return files

    assert used({"0"}).isdisjoint(used({"1", "2"}))
    assert used({"1"}).isdisjoint(used({"2"}))
    if mode == "habitat":
        assert all(r["object_file"] != r["place_file"] for r in rows)  # never pasted onto its own photo


def test_every_train_object_is_pasted_once_and_places_are_used_evenly(built):
    _, out, info = built
    rows = _rows(out)
    n_train = sum(info["source_photos"]["train"]["objects"].values())
    train_objects = Counter(r["object_file"] for r in rows if r["split"] == "0")
    assert len(train_objects) == n_train and set(train_objects.values()) == {1}  # the default: one per object
    for split, name in (("1", "val"), ("2", "test")):
        n = sum(info["source_photos"][name]["objects"].values())
        assert sum(r["split"] == split for r in rows) == n // 4 * 4  # rounded down to balance the 4 groups
    for split in ("0", "1", "2"):
        uses = Counter(r["place_file"] for r in rows if r["split"] == split)
        by_place: dict[str, list[int]] = {}
        for r in rows:
            if r["split"] == split:
                by_place.setdefault(r["place"], []).append(uses[r["place_file"]])
        assert all(max(v) - min(v) <= 1 for v in by_place.values())


def test_bad_masks_are_skipped_with_their_reason_and_threshold(built):
    mode, out, info = built
    by_file = {r["file"]: r for r in info["skipped"]["list"] if r["role"] != "place"}
    assert "below --min-cover 2%" in by_file["disk/00.png"]["reason"]
    assert "below --min-confidence 0.6" in by_file["square/00.png"]["reason"]
    assert by_file["square/00.png"]["decisive_fraction"] == 0.0
    used = {r["object_file"] for r in _rows(out)} | {r["place_file"] for r in _rows(out)}
    assert not {"disk/00.png", "square/00.png"} & used
    assert info["skipped"]["by_kind"]["mask too small (" + ("object and place" if mode == "habitat" else "object")
                                      + ")"] == 1


def test_a_lower_threshold_takes_the_undecided_mask(photos, tmp_path):
    info = make_photo_dataset(tmp_path / "o", photos["objects"], photos["masks"], photos["places"],
                              replace(CFG, min_confidence=0.0), progress=False)
    assert "square/00.png" not in {r["file"] for r in info["skipped"]["list"]}
    assert info["config"]["min_confidence"] == 0.0


# --- pixels ------------------------------------------------------------------------------------

def test_the_composite_mask_marks_exactly_the_pasted_object(built, photos):
    mode, out, _ = built
    for r in _rows(out)[:12]:
        src = np.asarray(Image.open(photos["masks"] / r["object_file"]).convert("L"), np.float32) / 255.0
        if src.shape[0] != src.shape[1] or src.shape[0] != 56:
            continue  # square photos at the mask's own resolution: the expected mask is a plain resize
        expected = np.asarray(Image.fromarray(src, "F").resize((32, 32), Image.BILINEAR)) > 0.5
        mask = np.asarray(Image.open(out / r["mask_filename"]))
        fg = mask > 127
        iou = (fg & expected).sum() / (fg | expected).sum()
        assert iou > 0.9, (r["img_id"], iou)
        img = np.asarray(Image.open(out / r["img_filename"])).astype(int)
        bg = np.asarray(Image.open(out / r["background_filename"])).astype(int)
        inside = mask == 255
        red = img[inside]
        assert (red[:, 0] > 120).all() and (red[:, 0] > red[:, 1] + 50).all()  # the red object (JPEG at 32 px)
        far = ~np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(5))).astype(bool)
        assert np.abs(img[far] - bg[far]).mean() < 6  # elsewhere the clean place, up to JPEG error


def test_pasting_carries_no_rim_of_the_source_background(built):
    """Disks photographed on green grass pasted onto water (squares from blue water onto grass):
    their soft edge must blend the object's red with the new place, with none of the old place's
    colour (which the photo's own edge pixels hold)."""
    _, out, _ = built
    errors = _rim_errors(out)
    assert errors and np.mean(errors) < 6, errors  # with the old colour left in: 11.5


def _rim_errors(out: Path) -> list[float]:
    """Per conflicting composite: the mean excess of the old place's channel on the soft edge."""
    errors = []
    for r in _rows(out):
        if r["y"] == r["place"]:
            continue
        alpha = np.asarray(Image.open(out / r["mask_filename"])).astype(float)[:, :, None] / 255.0
        img = np.asarray(Image.open(out / r["img_filename"])).astype(float)
        bg = np.asarray(Image.open(out / r["background_filename"])).astype(float)
        edge = (alpha[:, :, 0] > 0.2) & (alpha[:, :, 0] < 0.8)
        old = 1 if r["y"] == "0" else 2  # the green or the blue channel
        clean = alpha * RED + (1 - alpha) * bg
        errors.append((img - clean)[edge][:, old].mean())
    return errors


def test_edge_cleaning_keeps_soft_parts_inside_the_object():
    obj = np.zeros((40, 40, 3), np.uint8)
    obj[:] = (0, 0, 255)  # the source background: blue
    obj[8:32, 8:32] = (255, 0, 0)  # the object: red, with a yellow patch the mask is unsure about
    obj[16:24, 16:24] = (255, 255, 0)
    alpha = np.zeros((40, 40), np.float32)
    alpha[8:32, 8:32] = 1.0
    alpha[16:24, 16:24] = 0.5
    alpha[7, 8:32] = alpha[32, 8:32] = 0.5  # a soft rim that holds source-background blue
    obj[7, 8:32] = obj[32, 8:32] = (128, 0, 128)
    out = compose.object_colours(obj, alpha, 2)
    assert (out[16:24, 16:24] == (255, 255, 0)).all()  # the unsure inside keeps its colours
    assert (out[7, 8:32, 2] < 40).all() and (out[7, 8:32, 0] > 200).all()  # the rim takes the object's red
    assert (out[alpha == 0] == obj[alpha == 0]).all()


def test_habitat_backgrounds_hold_no_trace_of_the_object(photos, tmp_path):
    make_photo_dataset(tmp_path / "h", photos["objects"], photos["masks"], None, CFG, progress=False)
    for r in _rows(tmp_path / "h"):
        bg = np.asarray(Image.open(tmp_path / "h" / r["background_filename"])).astype(int)
        red = (bg[:, :, 0] > 120) & (bg[:, :, 0] > bg[:, :, 1] + 50) & (bg[:, :, 0] > bg[:, :, 2] + 50)
        assert not red.any(), r["background_filename"]


def test_a_brought_inpainter_fills_the_habitats(photos, tmp_path):
    """--inpainter takes any fill of our ONNX contract; the exported push-pull gives the built-in's fill."""
    from dali_abs.models import inpainter as inet

    onnx = inet.export_onnx(inet.build("pushpull"), tmp_path / "fill.onnx", "pushpull")
    a = make_photo_dataset(tmp_path / "a", photos["objects"], photos["masks"], None, CFG, progress=False)
    b = make_photo_dataset(tmp_path / "b", photos["objects"], photos["masks"], None,
                           replace(CFG, inpainter=str(onnx)), progress=False)
    assert a["places"]["fill"] == b["places"]["fill"] == "pushpull" and _rows(tmp_path / "a") == _rows(tmp_path / "b")
    for r in _rows(tmp_path / "a")[:10]:
        x = np.asarray(Image.open(tmp_path / "a" / r["background_filename"])).astype(int)
        y = np.asarray(Image.open(tmp_path / "b" / r["background_filename"])).astype(int)
        assert np.abs(x - y).max() <= 2


# --- object scale ------------------------------------------------------------------------------

def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask > 0)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_a_shrunk_object_has_the_right_size_its_own_colours_and_an_exact_alpha():
    obj = np.zeros((64, 64, 3), np.uint8)
    obj[:] = (0, 0, 255)  # the source background, blue, must not reach the shrunk object
    alpha = np.asarray(_shape_mask(0, 64, 64, 30, 34, 16), np.float32) / 255.0
    obj[alpha > 0] = (210, 40, 40)
    colours = compose.object_colours(obj, alpha, 2, everywhere=True)
    c, a = compose.shrink_object(colours, alpha, 0.5)
    x0, y0, x1, y1 = compose.object_box(alpha)
    assert abs(a.shape[1] - 0.5 * (x1 - x0)) <= 1.5 and abs(a.shape[0] - 0.5 * (y1 - y0)) <= 1.5
    assert abs((a >= 0.5).sum() / (alpha >= 0.5).sum() - 0.25) < 0.03
    assert _box(a) == (0, 0, a.shape[1], a.shape[0])  # cut to the object's box
    assert np.array_equal(np.round(a * 255.0), a * 255.0)  # 1/255 steps: the mask file holds it exactly
    assert (c[a > 0][:, 2] < 60).all() and (c[a > 0][:, 0] > 180).all()  # red only, no blue rim
    frame, fa = compose.place(c, a, 48, compose.random_offset(a.shape, 48, (0.999, 0.0)))
    assert _box(fa) == (48 - a.shape[1], 0, 48, a.shape[0]) and fa.sum() == pytest.approx(a.sum())


def test_an_object_cut_by_its_photo_stays_on_the_frame_edge():
    alpha = np.zeros((40, 40), np.float32)
    alpha[20:, 10:30] = 1.0  # a perched bird running off the bottom of its photo
    assert compose.cut_sides(alpha) == (0, 1)
    assert compose.cut_sides(np.rot90(alpha)) == (1, 0) and compose.cut_sides(np.zeros((4, 4))) == (0, 0)
    veiled = alpha.copy()
    veiled[:, 0] = 0.05  # a machine mask's faint veil reaching the left edge: no cut
    veiled[0, 20] = 1.0  # nor a one-pixel tip on the top edge
    assert compose.cut_sides(veiled) == (0, 1)
    colours = np.full((40, 40, 3), 200, np.uint8)
    c, a = compose.shrink_object(colours, alpha, 0.5, (0, 1))
    assert (a[-1] == 1.0).sum() >= 9  # the cut stays a full edge, no fade
    x, y = compose.random_offset(a.shape, 40, (0.3, 0.0), (0, 1))
    assert y == 40 - a.shape[0] and 0 <= x <= 40 - a.shape[1]
    assert compose.random_offset((5, 5), 40, (0.0, 0.999), (-1, 0)) == (0, 35)


@pytest.fixture(scope="module")
def scaled(photos, tmp_path_factory) -> tuple[Path, Path]:
    """Places mode at scale 1 and at 0.5 with the same seed (the same pairs: no cost there)."""
    root = tmp_path_factory.mktemp("scaled")
    cfg = replace(CFG, size=48)
    for name, sc in (("one", (1.0, 1.0)), ("half", (0.5, 0.5))):
        make_photo_dataset(root / name, photos["objects"], photos["masks"], photos["places"],
                           replace(cfg, object_scale=sc), progress=False)
    return root / "one", root / "half"


def test_scaled_objects_are_half_size_wholly_inside_and_their_mask_is_the_pasted_alpha(scaled, photos):
    one, half = scaled
    rows1, rows = _rows(one), _rows(half)
    exact = 0
    assert [(r["object_file"], r["place_file"]) for r in rows1] == [(r["object_file"], r["place_file"]) for r in rows]
    moved = 0
    for r1, r in zip(rows1, rows):
        m1 = np.asarray(Image.open(one / r1["mask_filename"])).astype(float) / 255.0
        m = np.asarray(Image.open(half / r["mask_filename"])).astype(float) / 255.0
        assert float(r["object_scale"]) == 0.5 and float(r1["object_scale"]) == 1.0
        (x0, y0, x1, y1), (u0, v0, u1, v1) = _box(m1), _box(m)
        assert (int(r["object_x"]), int(r["object_y"])) == (u0, v0)
        assert (int(r1["object_x"]), int(r1["object_y"])) == (x0, y0)
        assert abs((u1 - u0) - 0.5 * (x1 - x0)) <= 1.5 and abs((v1 - v0) - 0.5 * (y1 - y0)) <= 1.5
        assert 0.2 < (m >= 0.5).sum() / (m1 >= 0.5).sum() < 0.3
        assert 0 <= u0 and u1 <= 48 and 0 <= v0 and v1 <= 48  # inside: the mask is the whole object
        moved += (u0, v0) != (x0, y0)
        img = np.asarray(Image.open(half / r["img_filename"])).astype(int)
        bg = np.asarray(Image.open(half / r["background_filename"])).astype(int)
        red = img[m == 1.0]
        assert len(red) and (red[:, 0] > 120).all() and (red[:, 0] > red[:, 1] + 50).all()  # the red object
        far = ~np.asarray(Image.fromarray(m > 0).filter(ImageFilter.MaxFilter(5))).astype(bool)
        assert np.abs(img[far] - bg[far]).mean() < 6  # elsewhere the clean place, up to JPEG error
        src = np.asarray(Image.open(photos["masks"] / r["object_file"]).convert("L"), np.float32) / 255.0
        if src.shape == (56, 56):  # the mask file is the alpha pasted, at the recorded place, exactly
            alpha = compose.alpha_of(compose.crop_resize_mask(src, (0, 0, 56), 48))
            _, a = compose.shrink_object(np.zeros((48, 48, 3), np.uint8), alpha, 0.5, compose.cut_sides(alpha))
            _, placed = compose.place(np.zeros(a.shape + (3,), np.uint8), a, 48, (u0, v0))
            assert np.array_equal(np.asarray(Image.open(half / r["mask_filename"])),
                                  np.round(placed * 255.0).astype(np.uint8))
            exact += 1
    assert moved >= 0.8 * len(rows) and exact >= 5


def test_shrinking_carries_no_rim_of_the_source_background(scaled):
    errors = _rim_errors(scaled[1])
    assert errors and np.mean(errors) < 6, errors


def test_object_scale_is_deterministic_and_1_keeps_objects_where_they_were(photos, scaled, tmp_path):
    one, _ = scaled
    for r in _rows(one)[:12]:  # scale 1: the mask is the source mask's alpha where it was, exactly
        src = np.asarray(Image.open(photos["masks"] / r["object_file"]).convert("L"), np.float32) / 255.0
        if src.shape != (56, 56):
            continue
        alpha = compose.alpha_of(compose.crop_resize_mask(src, (0, 0, 56), 48))
        assert np.array_equal(np.asarray(Image.open(one / r["mask_filename"])),
                              np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8))

    def build(name, seed):
        make_photo_dataset(tmp_path / name, photos["objects"], photos["masks"], None,
                           replace(CFG, seed=seed, object_scale=(0.4, 0.8)), progress=False)
        return {p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                for p in sorted((tmp_path / name).rglob("*")) if p.is_file()}

    a, b, c = build("a", 3), build("b", 3), build("c", 4)
    assert a == b and a != c
    scales = [float(r["object_scale"]) for r in _rows(tmp_path / "a")]
    assert all(0.4 <= v <= 0.8 for v in scales) and len(set(scales)) == len(scales)
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert meta["config"]["object_scale"] == [0.4, 0.8] and "random position" in meta["object_placement"]


def test_an_object_too_small_for_its_scale_is_a_clear_error(photos, tmp_path):
    with pytest.raises(PhotoBenchError, match=r"the object vanishes at scale 0.010 at --size 32; raise the lower "
                                              r"--object-scale"):
        make_photo_dataset(tmp_path / "v", photos["objects"], photos["masks"], None,
                           replace(CFG, object_scale=(0.01, 0.01)), progress=False)


def test_square_crop_keeps_an_off_centre_object():
    m = np.zeros((40, 100), np.float32)
    m[10:30, 75:95] = 1.0  # near the right edge: a centred 40 px square would cut it away
    (x0, y0, side), lost = compose.square_box(m)
    assert (y0, side) == (0, 40) and x0 <= 75 and x0 + side >= 95 and lost == 0.0
    assert compose.centre_box((40, 100)) == (30, 0, 40)


# --- determinism, inputs, options --------------------------------------------------------------

def test_same_command_gives_byte_identical_files(photos, tmp_path):
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
        return h.hexdigest()

    runs = [make_photo_dataset(tmp_path / name, photos["objects"], photos["masks"], None, replace(CFG, seed=seed),
                               progress=False) and digest(tmp_path / name) for name, seed in
            (("a", 5), ("b", 5), ("c", 6))]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_input_folders_are_never_written(photos, tmp_path):
    before = {k: _tree(v) for k, v in photos.items()}
    make_photo_dataset(tmp_path / "x", photos["objects"], photos["masks"], photos["places"], CFG, progress=False)
    assert {k: _tree(v) for k, v in photos.items()} == before
    with pytest.raises(PhotoBenchError, match="is inside DATA"):
        make_photo_dataset(photos["objects"] / "out", photos["objects"], photos["masks"], None, CFG, progress=False)


def test_rho_below_one_and_counts_per_split(photos, tmp_path):
    info = make_photo_dataset(tmp_path / "r", photos["objects"], photos["masks"], photos["places"],
                              replace(CFG, rho=0.5, train=20, val=8, test=10), progress=False)
    ds = load_dataset(tmp_path / "r")
    train = ds.split("train")
    assert len(train) == 20 and sum(s.label != s.place for s in train) == 10
    assert info["counts"]["test"] == {"composites": 8, "asked": 10,
                                      "groups": {f"y={y},place={p}": 2 for y in (0, 1) for p in (0, 1)}}


def test_val_0_builds_no_val_split(photos, tmp_path):
    info = make_photo_dataset(tmp_path / "v", photos["objects"], photos["masks"], None, replace(CFG, val=0),
                              progress=False)
    assert set(info["counts"]) == {"train", "test"} and set(load_dataset(tmp_path / "v").split_counts()) == \
        {"train", "test"}
    with pytest.raises(PhotoBenchError, match="--train must be positive"):
        make_photo_dataset(tmp_path / "w", photos["objects"], photos["masks"], None, replace(CFG, train=0))


def test_metadata_layout_with_remapped_columns_and_masks_beside_images(tmp_path, photos):
    """cub-birds-300's layout: images/<species>/<n>.jpg, masks/<species>/<n>.png, label y_waterbird."""
    root = tmp_path / "cub"
    rows = [("img_id", "img_filename", "y_waterbird", "split_flag")]
    for k, cls in enumerate(CLASSES):
        (root / "images" / cls).mkdir(parents=True)
        (root / "masks" / cls).mkdir(parents=True)
        for i in range(1, N_PER_CLASS):
            Image.open(photos["objects"] / cls / f"{i:02d}.png").convert("RGB").save(root / "images" / cls / f"{i:02d}.jpg")
            (root / "masks" / cls / f"{i:02d}.png").write_bytes((photos["masks"] / cls / f"{i:02d}.png").read_bytes())
            rows.append((f"{k}{i:02d}", f"images/{cls}/{i:02d}.jpg", k, i % 2))
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    cols = Columns(label="y_waterbird", split="split_flag")
    info = make_photo_dataset(tmp_path / "o", root, root / "masks", None, replace(CFG, class_names=("land", "water")),
                              cols, progress=False)
    assert info["skipped"]["objects"] == 0 and sorted(os.listdir(tmp_path / "o" / "images")) == ["land", "water"]
    with pytest.raises(PhotoBenchError, match=r"no split column 'split'.*--col-split"):
        make_photo_dataset(tmp_path / "p", root, root / "masks", None, CFG, Columns(label="y_waterbird"),
                           progress=False)


# --- planning ----------------------------------------------------------------------------------

def test_shares_and_slots():
    assert shares(10, (0.5, 0.2, 0.3)) == [5, 2, 3] and sum(shares(7, (0.5, 0.2, 0.3))) == 7
    s = slots("train", {0: 30, 1: 10}, None, 2, 0.8)
    assert len(s[0]) == 30 and len(s[1]) == 10 and s[0].count(1) == 6 and s[1].count(0) == 2
    v = slots("test", {0: 5, 1: 6}, None, 2, 1.0)
    assert {y: Counter(p) for y, p in v.items()} == {0: {0: 2, 1: 2}, 1: {0: 2, 1: 2}}


def test_pairing_prefers_the_place_whose_hole_the_object_hides():
    objects, places = {0: [0], 1: [1]}, {0: [0, 2, 4], 1: [1, 3, 5]}
    cost = lambda o, keys, *_: np.where(np.asarray(keys) == 4, 0.0, 1.0)  # noqa: E731: place 4 is hidden best
    plan = plan_split("train", objects, places, 1, 1.0, 0, same_photos=True, cost=cost)
    assert [(c.obj, c.bg) for c in plan if c.y == 0] == [(0, 4)]


def test_an_object_pasted_again_stands_on_a_new_place():
    """--train above the object count: a cost that always prefers one place must not give the
    same object on the same place twice (an exact duplicate at scale 1) while a new place is left."""
    objects, places = {0: [0, 2], 1: [1, 3]}, {0: [0, 2, 4, 6, 8], 1: [1, 3, 5, 7, 9]}
    cost = lambda o, keys, *_: np.where(np.asarray(keys) == 8, 0.0, 1.0)  # noqa: E731
    plan = plan_split("train", objects, places, 16, 1.0, 0, same_photos=True, cost=cost)
    pairs = Counter((c.obj, c.bg) for c in plan)
    assert len(plan) == 16 and set(pairs.values()) == {1}
    uses = Counter(c.bg for c in plan)
    assert max(uses.values()) - min(uses.values()) <= 1


# --- the command -------------------------------------------------------------------------------

EXE = Path(sys.executable).with_name("dali-abs")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), "make-dataset", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_cli_builds_and_reports_counts_and_threshold(photos, tmp_path):
    r = run(str(tmp_path / "o"), "--objects", str(photos["objects"]), "--masks", str(photos["masks"]),
            "--size", "32", "--split-fractions", "0.5,0.25,0.25")
    assert r.returncode == 0, r.stderr
    assert "train: " in r.stdout and "y=1,place=1" in r.stdout and "--min-confidence 0.6" in r.stdout
    assert "mask too small" in r.stdout


def test_cli_json(photos, tmp_path, capsys):
    from dali_abs.cli import main

    assert main(["make-dataset", str(tmp_path / "j"), "--objects", str(photos["objects"]), "--masks",
                 str(photos["masks"]), "--places", str(photos["places"]), "--size", "32", "--split-fractions",
                 "0.5,0.25,0.25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "places" and out["skipped"]["objects"] == 2 and out["seconds"] >= 0


def _aspect_masks(photos, tmp_path) -> Path:
    d = tmp_path / "m2"
    for cls in CLASSES:
        (d / cls).mkdir(parents=True)
        for p in sorted((photos["masks"] / cls).iterdir()):
            Image.open(p).resize((40, 20)).save(d / cls / p.name)
    return d


def _place_without_images(photos, tmp_path) -> Path:
    d = tmp_path / "pl"
    (d / "grass").mkdir(parents=True)
    (d / "water").mkdir()
    for p in (photos["places"] / "grass").iterdir():
        (d / "grass" / p.name).write_bytes(p.read_bytes())
    (d / "water" / "notes.txt").write_text("no photos here")
    return d


@pytest.mark.parametrize("case, pattern", [
    ("no masks", r"no mask for any of the 24 photos"),
    ("aspect", r"00.png: mask is 40x20 px but its photo .* is 56x56 px .*another aspect ratio"),
    ("few", r"class 'disk' has no usable object photo in val"),
    ("empty place", r"place folder 'water' has no readable images"),
    ("synthetic + masks", r"--masks belongs to building from photos"),
    ("classes", r"--classes is for the built-in benchmark"),
    ("places + dilate", r"--dilate shapes the habitat fill, which --places replaces"),
    ("object scale", r"--object-scale must be LO or LO,HI with 0 < LO <= HI <= 1 .*got 0.5,1.5"),
    ("object scale text", r"--object-scale must be LO or LO,HI \(e.g. 0.5 or 0.4,0.6\), got 'half'"),
    ("scale + built-in", r"--object-scale belongs to building from photos"),
])
def test_errors_are_one_line_naming_the_file_and_the_fix(photos, tmp_path, capsys, case, pattern):
    """Through the command's entry point, in-process (test_cli runs the console script itself)."""
    from dali_abs.cli import main

    base = [str(tmp_path / "o"), "--objects", str(photos["objects"]), "--masks", str(photos["masks"]),
            "--size", "32"]
    args = {"no masks": [str(tmp_path / "o"), "--objects", str(photos["objects"]), "--masks", str(photos["places"])],
            "aspect": base[:4] + [str(_aspect_masks(photos, tmp_path))],
            "few": base + ["--split-fractions", "0.9,0.02,0.08"],
            "empty place": base + ["--places", str(_place_without_images(photos, tmp_path))],
            "synthetic + masks": [str(tmp_path / "o"), "--masks", str(photos["masks"])],
            "classes": base + ["--classes", "3"],
            "places + dilate": base + ["--places", str(photos["places"]), "--dilate", "2"],
            "object scale": base + ["--object-scale", "0.5,1.5"],
            "object scale text": base + ["--object-scale", "half"],
            "scale + built-in": [str(tmp_path / "o"), "--object-scale", "0.5"]}[case]
    assert main(["make-dataset", *args]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error" in ln.lower() or "Traceback" in ln]
    assert len(errors) == 1 and errors[0].startswith("dali-abs: error:"), err  # (above it: progress bars)
    assert re.search(pattern, errors[0]), errors[0]
    assert not (tmp_path / "o" / "metadata.csv").exists()
