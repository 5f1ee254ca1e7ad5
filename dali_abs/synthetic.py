"""The built-in benchmark: a Waterbirds-like dataset generated on the spot (``dali-abs make-dataset``).

K object classes are told apart only by **shape** (disk, cross, triangle, ...); their colour
and texture are drawn from one distribution for all classes. K background "places" differ in
**hue and texture** over the whole frame - the easier cue. In the train split class k stands
on place k with probability ``rho`` (default 1.0: no training image breaks the correlation);
val and test are balanced over all K*K groups. A network trained with plain ERM learns the
background; one trained on group-balanced data learns the shape
(``benchmarks/dataset_check.py`` measures both).

Written to OUT (a Waterbirds-style dataset, readable by :func:`dali_abs.dataset.load_dataset`):

- ``images/<class>/<id>.jpg``       the composite, RGB JPEG (quality 90)
- ``masks/<id>.png``                ground-truth pixel mask, grayscale, 255 = foreground
- ``backgrounds/<id>.jpg``          the clean background the object was pasted on (quality 95)
- ``metadata.csv``                  ``img_id,img_filename,y,split,place,mask_filename,background_filename``
- ``dataset.json``                  the generator's settings, class and place names

Everything is a pure function of the settings and the seed: each image draws from its own
generator seeded by ``(seed, img_id)``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dali_abs.errors import DaliAbsError
from dali_abs.files import atomic_write_text, atomic_writer

SHAPES = ("disk", "cross", "triangle", "square", "ring", "star", "hexagon", "crescent")
PLACES = ("water", "land", "sand", "snow", "forest", "sky", "rock", "lava")
# Place hues (0..1) chosen far apart for K=2 (blue water, green land), spread for larger K.
_PLACE_HUE = (0.58, 0.27, 0.11, 0.55, 0.36, 0.63, 0.05, 0.0)
_PLACE_SAT = (0.65, 0.60, 0.45, 0.08, 0.70, 0.35, 0.15, 0.85)
_PLACE_VAL = (0.70, 0.55, 0.85, 0.92, 0.35, 0.95, 0.50, 0.60)


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the built-in benchmark. Defaults keep the whole demo to minutes on 2 cores."""

    classes: int = 2  # K object classes and K places (2..8)
    size: int = 128  # image side in pixels
    train: int = 1200
    val: int = 200
    test: int = 400
    rho: float = 1.0  # P(class k on place k) in train; 1/K gives a group-balanced train split
    seed: int = 0

    def check(self) -> None:
        if not 2 <= self.classes <= len(SHAPES):
            raise DaliAbsError(f"classes must be 2..{len(SHAPES)}, got {self.classes}")
        if self.size < 32:
            raise DaliAbsError(f"size must be at least 32 px, got {self.size}")
        if not 0.0 <= self.rho <= 1.0:
            raise DaliAbsError(f"rho must be in [0, 1], got {self.rho}")
        groups = self.classes * self.classes
        for name in ("val", "test"):
            n = getattr(self, name)
            if n and n < groups:
                raise DaliAbsError(f"{name}={n} is fewer than the {groups} groups it must balance")
        if self.train < self.classes:
            raise DaliAbsError(f"train={self.train} needs at least one image per class ({self.classes})")


def plan(cfg: SyntheticConfig) -> list[tuple[str, int, int]]:
    """(split, class, place) for every image, in id order. Conflict counts are exact, not sampled."""
    K = cfg.classes
    rows: list[tuple[str, int, int]] = []
    for y in range(K):
        n_y = cfg.train // K + (1 if y < cfg.train % K else 0)
        n_conflict = int(round((1.0 - cfg.rho) * n_y))
        others = [p for p in range(K) if p != y]
        places = [y] * (n_y - n_conflict) + [others[i % len(others)] for i in range(n_conflict)]
        rows += [("train", y, p) for p in places]
    for split in ("val", "test"):
        n = getattr(cfg, split)
        for i in range(n):
            g = i % (K * K)
            rows.append((split, g // K, g % K))
    # Interleave classes so that any prefix of the manifest is mixed (ids stay deterministic).
    order = np.random.default_rng([cfg.seed, 7]).permutation(len(rows))
    return [rows[i] for i in order]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise in [0,1] varying over about ``size/cells`` pixels (bicubic upsampling of a coarse grid)."""
    from PIL import Image

    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    im = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(im), 0.0, 1.0)


def background(rng: np.random.Generator, place: int, size: int) -> np.ndarray:
    """Float32 HWC RGB in [0,1]: the place's hue with a place-specific texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hue = (_PLACE_HUE[place] + rng.uniform(-0.03, 0.03)) % 1.0
    base = _hsv_to_rgb(hue, _PLACE_SAT[place] * rng.uniform(0.85, 1.1), _PLACE_VAL[place] * rng.uniform(0.85, 1.05))
    kind = place % 4
    if kind == 0:  # waves: oriented sinusoids plus slow swell
        ang = rng.uniform(-0.4, 0.4)
        freq = rng.uniform(10, 18)
        phase = rng.uniform(0, 2 * np.pi)
        u = np.cos(ang) * yy + np.sin(ang) * xx
        tex = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u + phase + 3 * _smooth_noise(rng, size, 3))
        shade = 0.75 + 0.35 * tex
    elif kind == 1:  # grass/earth: blotches at two scales
        shade = 0.6 + 0.45 * _smooth_noise(rng, size, 6) + 0.25 * (_smooth_noise(rng, size, 24) - 0.5)
    elif kind == 2:  # dunes: soft diagonal bands plus grain
        ang = rng.uniform(0.5, 1.1)
        u = np.cos(ang) * yy + np.sin(ang) * xx
        shade = 0.8 + 0.15 * np.sin(2 * np.pi * rng.uniform(3, 6) * u + rng.uniform(0, 6)) \
            + 0.12 * (rng.random((size, size), dtype=np.float32) - 0.5)
    else:  # speckle: fine noise over a smooth field
        shade = 0.7 + 0.3 * _smooth_noise(rng, size, 4) + 0.3 * (rng.random((size, size), dtype=np.float32) - 0.5)
    img = base[None, None, :] * shade[:, :, None]
    if place >= 4:  # extra places get a tint gradient so they never look like places 0..3
        img = img * (0.8 + 0.4 * yy[:, :, None])
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _shape_polygons(shape: str, rng: np.random.Generator) -> list[tuple[np.ndarray, bool]]:
    """Polygons in unit coordinates (object fits in radius 1), each with fill=True or hole=False."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "disk":
        a = rng.uniform(0.7, 1.0)
        return [(circle * [1.0, a], True)]
    if shape == "cross":
        w = rng.uniform(0.28, 0.4)
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        return [(np.array(pts, float), True)]
    if shape == "triangle":
        a = np.array([np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3])
        return [(np.stack([np.cos(a), np.sin(a)], 1), True)]
    if shape == "square":
        return [(np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]), True)]
    if shape == "ring":
        return [(circle, True), (circle * rng.uniform(0.45, 0.6), False)]
    if shape == "star":
        a = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [(np.stack([r * np.cos(a), r * np.sin(a)], 1), True)]
    if shape == "hexagon":
        a = np.arange(6) * np.pi / 3
        return [(np.stack([np.cos(a), np.sin(a)], 1), True)]
    if shape == "crescent":
        return [(circle, True), (circle * 0.85 + [0.45, 0.0], False)]
    raise ValueError(shape)


def shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """Bool HW mask (True = foreground) of class ``cls``'s shape, randomly scaled, rotated, placed."""
    from PIL import Image, ImageDraw

    radius = size * rng.uniform(0.22, 0.32)
    angle = rng.uniform(0, 2 * np.pi)
    margin = radius + 2
    cx, cy = rng.uniform(margin, size - margin, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    for poly, fill in _shape_polygons(SHAPES[cls], rng):
        pts = (poly @ rot.T) * radius + [cx, cy]
        draw.polygon([tuple(p) for p in pts], fill=255 if fill else 0)
    return np.asarray(im) > 127


def foreground(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 HWC object appearance in [0,1]: a random colour (same law for every class) with texture."""
    col = _hsv_to_rgb(rng.random(), rng.uniform(0.5, 0.95), rng.uniform(0.55, 1.0))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ang = rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(6, 12) * (np.cos(ang) * xx + np.sin(ang) * yy)))
    shade = 0.8 + 0.25 * _smooth_noise(rng, size, 5) - 0.12 * stripes * rng.uniform(0.0, 1.0)
    return np.clip(col[None, None, :] * shade[:, :, None], 0.0, 1.0).astype(np.float32)


def render(cfg: SyntheticConfig, img_id: int, cls: int, place: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 HWC, mask bool HW, clean background uint8 HWC) for one sample."""
    rng = np.random.default_rng([cfg.seed, img_id])
    bg = background(rng, place, cfg.size)
    mask = shape_mask(rng, cls, cfg.size)
    fg = foreground(rng, cfg.size)
    img = np.where(mask[:, :, None], fg, bg)
    to8 = lambda a: (a * 255.0 + 0.5).astype(np.uint8)  # noqa: E731
    return to8(img), mask, to8(bg)


def _encode(array: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {"optimize": False}))
    return buf.getvalue()


def make_dataset(out: str | Path, cfg: SyntheticConfig = SyntheticConfig(), progress: bool = True) -> Path:
    """Generate the benchmark into ``out`` (created; must be empty or absent). Returns ``out``."""
    from tqdm import tqdm

    cfg.check()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DaliAbsError(f"{out}: folder is not empty; choose a new folder or delete this one")
    classes = list(SHAPES[: cfg.classes])
    places = list(PLACES[: cfg.classes])
    for c in classes:
        (out / "images" / c).mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "backgrounds").mkdir(parents=True, exist_ok=True)
    rows = []
    split_code = {"train": 0, "val": 1, "test": 2}
    for img_id, (split, y, place) in enumerate(tqdm(plan(cfg), desc="make-dataset", unit="img", disable=not progress)):
        img, mask, bg = render(cfg, img_id, y, place)
        name = f"{img_id:05d}"
        rel_img = f"images/{classes[y]}/{name}.jpg"
        rel_mask = f"masks/{name}.png"
        rel_bg = f"backgrounds/{name}.jpg"
        (out / rel_img).write_bytes(_encode(img, "JPEG", 90))
        (out / rel_mask).write_bytes(_encode(mask.astype(np.uint8) * 255, "PNG"))
        (out / rel_bg).write_bytes(_encode(bg, "JPEG", 95))
        rows.append((img_id, rel_img, y, split_code[split], place, rel_mask, rel_bg))
    # The manifest is written last and atomically: a folder with metadata.csv is complete.
    with atomic_writer(out / "metadata.csv") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["img_id", "img_filename", "y", "split", "place", "mask_filename", "background_filename"])
        w.writerows(rows)
    info = {"generator": "dali-abs make-dataset", "config": asdict(cfg), "classes": classes, "places": places,
            "mask_polarity": "255 = foreground", "group": "y * n_places + place"}
    atomic_write_text(out / "dataset.json", json.dumps(info, indent=2) + "\n")
    return out
