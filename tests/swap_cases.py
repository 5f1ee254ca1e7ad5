"""Batches and swap settings shared by the swap's tests (plain helpers; fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib

import numpy as np

from dali_abs.swap import FILLS, SwapConfig, sample_params
from dali_abs.swap.testing import ragged, random_batch


def paper_swap(**kw) -> SwapConfig:
    """A SwapConfig with numeric thresholds (the paper's 0.5 / 0.1): the compositing functions
    see no cache, so SwapConfig's default None (= the cache's thresholds) does not apply."""
    return SwapConfig(**{"tight": 0.5, "loose": 0.1, **kw})


def paper_waterbirds(**kw) -> SwapConfig:
    """The Waterbirds preset with the paper's thresholds (tight 0.67, loose 0.1)."""
    return SwapConfig.waterbirds(**{"tight": 0.67, "loose": 0.1, **kw})


def make_batch(rng, n=8, h=48, w=40, r=8, f=16, degenerate_box=True):
    """Images, blob-shaped soft masks (foreground probability), fills and boxes around the blobs."""
    return random_batch(rng, n, h, w, r, f, degenerate_box)


def ragged_batch(rng, n=6, r=8):
    """Images and tiles of different sizes (as DALI hands them over), soft masks and boxes."""
    _, soft, _, boxes = make_batch(rng, n, 8, 8, r, 4)
    images, fills = ragged(rng, n)
    return images, soft, fills, boxes


def params_for(rng, soft, cfg, h, w, labels=None, augment=None):
    n = soft.shape[0]
    labels = np.arange(n) % 3 if labels is None else labels
    return sample_params(labels, rng, cfg, image_size=(h, w), soft=soft, augment=augment)


def mismatch(a, b):
    """Fraction of pixels where any channel differs by more than 1 LSB."""
    return float((np.abs(a.astype(np.int16) - b.astype(np.int16)) > 1).any(-1).mean())


CASES = [paper_swap(fill=m) for m in FILLS] + [
    paper_waterbirds(fill="cached", p=0.8),
    paper_waterbirds(fill="patches", feather=1.5),
    paper_swap(fill="cached", feather=3.0),
]


def recorded_inputs(kind, n=8, h=48, w=40, r=8, f=16):
    """(rng, images, soft, fills, boxes) from seed 7, made with exact arithmetic only (integers,
    uniform draws, sqrt), so the digests hold on any CPU. ``block``: each sample's loose cells
    are one rectangle and its box (the fill region by cells and the bilinear one of before agree);
    ``blob``: round soft masks, whose bilinear loose mask reached into the box's other cells."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    fills = rng.integers(0, 256, (n, f, f, 3), dtype=np.uint8)
    soft = np.zeros((n, r, r), np.float32)
    yy, xx = np.mgrid[0:r, 0:r] + 0.5
    for i in range(n):
        if kind == "block":
            y0, x0 = rng.integers(0, r - 2, 2)
            y1, x1 = rng.integers(y0 + 2, r + 1), rng.integers(x0 + 2, r + 1)
            soft[i, y0:y1, x0:x1] = rng.uniform(0.45, 1.0, (y1 - y0, x1 - x0))
        else:
            cy, cx = rng.uniform(0.3 * r, 0.7 * r, 2)
            rad = rng.uniform(0.15 * r, 0.35 * r)
            soft[i] = np.clip(1.3 - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / rad, 0, 1)
    cells = [np.argwhere(s > np.float32(0.1)) for s in soft]
    boxes = np.array([[*c.min(0), *(c.max(0) + 1)] for c in cells], np.float32) / np.float32(r)
    return rng, images, soft, fills, boxes


RECORDED_CONFIGS = {
    "cached": dict(fill="cached"), "gray": dict(fill="gray"), "mean": dict(fill="mean"),
    "noise": dict(fill="noise"), "pixels": dict(fill="pixels"), "patches": dict(fill="patches"),
    "cached-feather": dict(fill="cached", feather=1.5),
    "cached-scale-p0.7": dict(fill="cached", p=0.7, scale=(0.6, 1.4)),
    "patches-other-class": dict(fill="patches", background="other_class", translate=0.4),
}


def recorded_digests(kind, name, composite=None):
    """sha256 (first 16 hex digits) of the parameters (every array, keys sorted) and of the
    output, 48 x 40 px, tight 0.5, loose 0.1, of ``composite`` (the kornia-style call; default the twin)."""
    from dali_abs.swap.twin import composite_cpu

    composite = composite_cpu if composite is None else composite
    rng, images, soft, fills, boxes = recorded_inputs(kind)
    cfg = SwapConfig(tight=0.5, loose=0.1, **RECORDED_CONFIGS[name])
    p = sample_params(np.arange(8) % 3, rng, cfg, image_size=(48, 40), soft=soft)
    out = composite(images, soft, fills, boxes, p, cfg, (48, 40))
    ph = hashlib.sha256(b"".join(np.ascontiguousarray(p[k]).tobytes() for k in sorted(p))).hexdigest()[:16]
    return ph, hashlib.sha256(out.tobytes()).hexdigest()[:16]


# (inputs, config) -> (params digest, output digest). Every "block" row and every params digest is
# what main produced at 6b49fa7 (loader/params.py and loader/composite.py, before the swap moved
# to dali_abs/swap/). The "blob" output digests are new on purpose: the fill region goes by the
# partner's loose cells instead of its bilinear loose mask (which showed the cache's placeholder);
# main gave, in this order,
# cca9e6e4f8f53ae5, 08c1b6baf9438ae1, 1a7c35dd82df3d4b, 738459c008d338ee, 3f69fe434bfbe712,
# 67330e9ab1bef89f, 9870bd209982c2a9, 957eaa64e00620a3, 034a33cd0fc301e9
# (1.3 to 2.2 % of the pixels differ, all of them where the two regions differ).
RECORDED = {
    ("block", "cached"): ("14706b2d8331c6b9", "bd76d6c6de611003"),
    ("block", "gray"): ("14706b2d8331c6b9", "c110a213d8d7378f"),
    ("block", "mean"): ("14706b2d8331c6b9", "8e2d2f5bfd8c83c1"),
    ("block", "noise"): ("14706b2d8331c6b9", "78661ad82b45e4a2"),
    ("block", "pixels"): ("14706b2d8331c6b9", "862e0ce6b4217469"),
    ("block", "patches"): ("14706b2d8331c6b9", "8b53a5f37e96af7c"),
    ("block", "cached-feather"): ("8adf8e06810e356b", "c4f7a17cbf2d57a8"),
    ("block", "cached-scale-p0.7"): ("8c51ada4e39f3f65", "9b872e15ec4cfbe0"),
    ("block", "patches-other-class"): ("9d2ffed1b334844b", "4377843dfac02927"),
    ("blob", "cached"): ("b18bfe3e83acb0ed", "764a010121dc5c14"),
    ("blob", "gray"): ("b18bfe3e83acb0ed", "836c32f1ce26da1c"),
    ("blob", "mean"): ("b18bfe3e83acb0ed", "0e8e740391d00faa"),
    ("blob", "noise"): ("b18bfe3e83acb0ed", "e3809027ffff5605"),
    ("blob", "pixels"): ("b18bfe3e83acb0ed", "7992601cdcebbb10"),
    ("blob", "patches"): ("b18bfe3e83acb0ed", "7ff16c5d7b331f5b"),
    ("blob", "cached-feather"): ("6ace43c7095c780a", "a28a0c5e38a22bda"),
    ("blob", "cached-scale-p0.7"): ("cd56e909d8f816c1", "733dfbd7fa3284af"),
    ("blob", "patches-other-class"): ("8752d0c4dc38d708", "fa5425f43b443df5"),
}
