"""Batches and swap settings shared by the swap's tests (plain helpers; fixtures live in conftest.py)."""

from __future__ import annotations

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


# The audit's variants (dali_abs.audit.variants): own background with no object (only-bg), the object
# on a constant backdrop (only-fg; also feathered, rotated and among unswapped samples), another
# sample of the same class (mixed-same), of the next class (mixed-next).
AUDIT_CASES = [
    paper_swap(background="own", foreground=False, translate=0.0),
    paper_swap(background="own", backdrop=(124, 116, 104), translate=0.0),
    paper_waterbirds(background="own", backdrop=(0, 0, 0), feather=1.5, p=0.6),
    paper_swap(background="same_class", exclude_self=True, translate=0.0),
    paper_swap(background="next_class", fill="gray", translate=0.0),
]

CASES = [paper_swap(fill=m) for m in FILLS] + [
    paper_waterbirds(fill="cached", p=0.8),
    paper_waterbirds(fill="patches", feather=1.5),
    paper_swap(fill="cached", feather=3.0),
] + AUDIT_CASES


def case_id(c: SwapConfig) -> str:
    """A test id naming what a case composites."""
    what = "no-fg" if not c.foreground else "backdrop" if c.backdrop is not None else c.background
    return f"{c.fill}-rot{c.rotation[1]:g}-f{c.feather:g}-{what}" + ("-not-self" if c.exclude_self else "")
