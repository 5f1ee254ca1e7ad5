"""The foreground leak (dali_abs.swap.leak): the compositing never shows the placeholder a cache
stores in a fill box outside the loose cells, and shows the partner's own object only where the
mask missed it."""

from __future__ import annotations

import numpy as np
import pytest

from dali_abs.cache.format import open_cache, placeholder_mask
from dali_abs.swap import AugmentConfig, SwapConfig, sample_params
from dali_abs.swap.leak import FOREGROUND, GHOST, PLACEHOLDER, fractions, sources
from swap_cases import make_batch, paper_swap


def _objects_from_soft(soft, h, w, cut=0.5):
    """Pixel objects consistent with the soft grid: the cells above ``cut``, plus thin slivers in
    the cells in (0, cut] (what a coverage mask calls a little foreground)."""
    r = soft.shape[1]
    ys, xs = (np.arange(h) * r) // h, (np.arange(w) * r) // w
    cell = soft[:, ys][:, :, xs]
    sliver = (np.arange(w)[None, :] % 7 == 0) & (cell > 0)
    return [(c > cut) | sl for c, sl in zip(cell, sliver)]


@pytest.mark.parametrize("size, augment", [((48, 40), None), ((96, 80), AugmentConfig()), ((37, 29), AugmentConfig())],
                         ids=["own-size", "upsampled-cropped", "downsampled-cropped"])
def test_the_placeholder_is_never_shown(size, augment):
    rng = np.random.default_rng(31)
    images, soft, fills, boxes = make_batch(rng, 12, 48, 40, 8, 16, degenerate_box=False)
    cfg = paper_swap(translate=0.5)
    cells = soft > np.float32(cfg.loose)
    box_cells = np.rint(boxes * 8).astype(int)
    tiles = [placeholder_mask((int(rng.integers(5, 30)), int(rng.integers(5, 30))),
                              c[b[0]:b[2], b[1]:b[3]]) for c, b in zip(cells, box_cells)]
    objects = _objects_from_soft(soft, 48, 40)
    p = sample_params(np.arange(12) % 3, rng, cfg, image_size=size, soft=soft, augment=augment)
    code = sources(objects, soft, tiles, box_cells, p, cfg, size)
    assert (code == FOREGROUND).any() and (code == GHOST).any()  # the slivers outside the loose cells show
    assert not (code == PLACEHOLDER).any()


def test_a_bilinear_fill_region_would_show_it():
    """The guard has teeth: a placeholder covering whole non-loose cells (no ring), sampled over a
    fill region that reaches past the loose cells, is seen."""
    rng = np.random.default_rng(32)
    images, soft, fills, boxes = make_batch(rng, 12, 48, 40, 8, 16, degenerate_box=False)
    cfg = paper_swap(translate=0.5, loose=0.1)
    box_cells = np.rint(boxes * 8).astype(int)
    cells = soft > np.float32(0.1)
    # a cache made with a higher fill threshold than the loader's loose: the region takes cells the fill never had
    stored = soft > np.float32(0.6)
    tiles = [placeholder_mask((16, 16), s[b[0]:b[2], b[1]:b[3]], ring=0) for s, b in zip(stored, box_cells)]
    p = sample_params(np.arange(12) % 3, rng, cfg, image_size=(48, 40), soft=soft)
    code = sources(_objects_from_soft(soft, 48, 40), soft, tiles, box_cells, p, cfg, (48, 40))
    assert cells.any() and (code == PLACEHOLDER).any()


def test_a_real_cache_leaks_little_and_never_its_placeholder(tiny_cache, tiny_dataset):
    from dali_abs.dataset import load_dataset
    from dali_abs.files import read_mask

    cache = open_cache(tiny_cache)
    by_id = load_dataset(tiny_dataset).by_id()
    rows = np.arange(32)
    objects = [read_mask(tiny_dataset / by_id[cache.ids[i]].extra["mask_filename"]) for i in rows]
    soft = np.stack([cache.mask(int(i)) for i in rows])
    tiles = [cache.placeholder(int(i)) if cache.boxes[i][2] > cache.boxes[i][0] else np.zeros((1, 1), bool)
             for i in rows]
    cfg = paper_swap(loose=cache.fill_threshold)
    p = sample_params(cache.labels[rows], np.random.default_rng(0), cfg, image_size=(56, 56), soft=soft,
                      augment=AugmentConfig())
    code = sources(objects, soft, tiles, cache.boxes[rows], p, cfg, (56, 56))
    assert not (code == PLACEHOLDER).any()
    f = fractions(code)
    assert f["fill"].mean() > 0.05 and f["leak"].mean() < 0.05
