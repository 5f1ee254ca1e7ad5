"""The compositing rule's NumPy twin (dali_abs.swap.twin): what each part of the rule does, and
the checks of its inputs."""

from __future__ import annotations

import numpy as np
import pytest

from dali_abs.swap import AugmentConfig, SwapConfig, SwapError
from dali_abs.swap.twin import composite_cpu
from swap_cases import RECORDED, make_batch, paper_swap, paper_waterbirds, params_for, recorded_digests


# --- CPU twin semantics ---------------------------------------------------------------------

def test_a_one_patch_grid_is_a_valid_batch():
    """R = 1 (one soft value per image): perm is (N, 1), as sample_params draws it."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 12, 10, 3), dtype=np.uint8)
    soft = np.array([0.9, 0.2, 0.9, 0.0], np.float32).reshape(4, 1, 1)
    fills = rng.integers(0, 256, (4, 2, 2, 3), dtype=np.uint8)
    boxes = np.tile(np.array([0, 0, 1, 1], np.float32), (4, 1))
    cfg = paper_swap(translate=0.0)
    p = params_for(rng, soft, cfg, 12, 10)
    assert p["perm"].shape == (4, 1)
    out = composite_cpu(images, soft, fills, boxes, p, cfg)
    assert out.shape == images.shape


def test_swap_probability_zero_returns_the_input_exactly():
    rng = np.random.default_rng(0)
    images, soft, fills, boxes = make_batch(rng)
    cfg = paper_swap(p=0.0)
    p = params_for(rng, soft, cfg, 48, 40)
    assert not p["swap"].any()
    out = composite_cpu(images, soft, fills, boxes, p, cfg)
    assert out is not images and np.array_equal(out, images)


def test_empty_foreground_gives_the_partner_background():
    rng = np.random.default_rng(1)
    images, soft, fills, boxes = make_batch(rng)
    soft[:] = 0.0  # no foreground anywhere: no fill region either
    cfg = paper_swap(background="uniform")
    p = params_for(rng, soft, cfg, 48, 40)
    out = composite_cpu(images, soft, fills, boxes, p, cfg)
    assert np.array_equal(out, images[p["partner"]])


def test_full_foreground_with_identity_affine_gives_the_input():
    rng = np.random.default_rng(2)
    images, soft, fills, boxes = make_batch(rng)
    soft[:] = 1.0
    cfg = paper_swap(translate=0.0)
    p = params_for(rng, soft, cfg, 48, 40)
    assert np.array_equal(p["affine"], np.tile(np.float32([1, 0, 0, 0, 1, 0]), (8, 1)))
    for c in (cfg, paper_swap(translate=0.0, feather=2.0)):
        assert np.array_equal(composite_cpu(images, soft, fills, boxes, p, c), images)


def test_fill_region_takes_the_cached_tile_and_the_cheap_fills():
    rng = np.random.default_rng(3)
    images, soft, fills, boxes = make_batch(rng, degenerate_box=False)
    fills[:] = (10, 200, 30)  # a flat tile: bilinear sampling gives the same colour
    cfg = paper_swap(translate=0.0)
    p = params_for(rng, soft, cfg, 48, 40)
    p["affine"][:] = (1, 0, 1000, 0, 1, 0)  # foreground moved out of the image: background only
    out = composite_cpu(images, soft, fills, boxes, p, cfg)
    bg = images[p["partner"]]
    changed = (out != bg).any(-1)
    assert changed.any() and (out[changed] == (10, 200, 30)).all()
    gray = composite_cpu(images, soft, fills, boxes, p, paper_swap(fill="gray"))
    assert (gray[changed] == 128).all() and np.array_equal(gray[~changed], bg[~changed])


def test_cheap_fills_follow_their_definitions():
    rng = np.random.default_rng(8)
    images, soft, fills, boxes = make_batch(rng, n=6, degenerate_box=False)
    boxes[:] = (0, 0, 1, 1)
    p = params_for(rng, soft, paper_swap(), 48, 40)
    p["affine"][:] = (1, 0, 1000, 0, 1, 0)  # background only
    region = composite_cpu(images, soft, fills, boxes, p, paper_swap(fill="gray")) == 128
    region = region.all(-1)
    bg = images[p["partner"]]
    # patches with the identity permutation: every patch is itself, i.e. the image
    ident = {**p, "perm": np.tile(np.arange(64, dtype=np.int32), (6, 1))}
    assert np.array_equal(composite_cpu(images, soft, fills, boxes, ident, paper_swap(fill="patches")), bg)
    # mean: the tile's mean colour, rounded
    out = composite_cpu(images, soft, fills, boxes, p, paper_swap(fill="mean"))
    want = np.floor(fills.reshape(6, -1, 3).mean(1) + 0.5)[p["partner"]]
    assert np.array_equal(out[region], np.broadcast_to(want[:, None, None], bg.shape)[region])
    # noise: roughly uniform 0..255, different per channel and per seed
    out = composite_cpu(images, soft, fills, boxes, p, paper_swap(fill="noise"))[region].astype(float)
    assert abs(out.mean() - 127.5) < 6 and abs(out.std() - 73.9) < 5 and (out[:, 0] != out[:, 1]).mean() > 0.9
    # pixels: colours of the partner image, shuffled
    out = composite_cpu(images, soft, fills, boxes, p, paper_swap(fill="pixels"))
    k = np.flatnonzero(region.any((1, 2)))[0]
    colours = {tuple(c) for c in bg[k].reshape(-1, 3)}
    assert all(tuple(c) in colours for c in out[k][region[k]]) and (out[k][region[k]] != bg[k][region[k]]).any()


def test_crop_flip_and_resize_are_part_of_the_same_pass():
    rng = np.random.default_rng(9)
    images, soft, fills, boxes = make_batch(rng)
    cfg = paper_swap(p=0.0)
    p = params_for(rng, soft, cfg, 48, 40, augment=AugmentConfig(random_resized_crop=False, flip=1.0))
    assert p["flip"].all()
    assert np.array_equal(composite_cpu(images, soft, fills, boxes, p, cfg), images[:, :, ::-1])
    # the top-left quarter of the canvas at half the size: exactly the top-left quarter of the pixels
    p = params_for(rng, soft, cfg, 24, 20)
    p["crop"][:] = (0, 0, 10, 12)
    half = composite_cpu(images, soft, fills, boxes, p, cfg, size=(24, 20))
    assert np.array_equal(half, images[:, :24, :20])
    # a swapped sample is mirrored as a whole: flip=1 is the flip=0 composite, mirrored
    cfg = paper_swap(fill="gray")
    p = params_for(np.random.default_rng(3), soft, cfg, 48, 40)
    a = composite_cpu(images, soft, fills, boxes, p, cfg)
    b = composite_cpu(images, soft, fills, boxes, {**p, "flip": np.ones(8, np.uint8)}, cfg)
    assert p["swap"].all() and np.array_equal(b, a[:, :, ::-1])


def test_same_seed_same_batch():
    images, soft, fills, boxes = make_batch(np.random.default_rng(4))
    cfg = paper_waterbirds(fill="noise", p=0.7)
    runs = []
    for _ in range(2):
        p = params_for(np.random.default_rng(123), soft, cfg, 48, 40)
        runs.append((p, composite_cpu(images, soft, fills, boxes, p, cfg)))
    (p1, o1), (p2, o2) = runs
    assert all(np.array_equal(p1[k], p2[k]) for k in p1) and np.array_equal(o1, o2)
    p3 = params_for(np.random.default_rng(124), soft, cfg, 48, 40)
    assert not np.array_equal(p1["affine"], p3["affine"])



@pytest.mark.parametrize("kind, name", list(RECORDED), ids=[f"{k}-{n}" for k, n in RECORDED])
def test_same_parameters_same_bytes_as_recorded(kind, name):
    """Same seed, same parameters and the same output bytes as recorded (swap_cases.RECORDED):
    main's before the swap moved, except the fill-region change on the "blob" masks."""
    assert recorded_digests(kind, name) == RECORDED[kind, name]

# --- argument checks -----------------------------------------------------------------------

def test_composite_rejects_bad_inputs_with_the_values_found():
    rng = np.random.default_rng(7)
    images, soft, fills, boxes = make_batch(rng)
    cfg = paper_swap()
    p = params_for(rng, soft, cfg, 48, 40)
    cases = [
        (dict(images=images.astype(np.float32)), r"images must be uint8 \[N,H,W,3\].*got float32 \(8, 48, 40, 3\)"),
        (dict(images=images[..., :2].copy()), r"got uint8 \(8, 48, 40, 2\)"),
        (dict(soft=soft[:4]), r"soft must be float32 \[N,R,R\] with N = 8.*got float32 \(4, 8, 8\)"),
        (dict(soft=soft.astype(np.float64)), r"got float64 \(8, 8, 8\)"),
        (dict(fills=fills[..., :2].copy()), r"fills must be uint8 \[N,H,W,3\].*got uint8 \(8, 16, 16, 2\)"),
        (dict(fills=list(fills[:5])), r"fills must hold N = 8 samples, got 5"),
        (dict(images=[images[0], images[1, :20]] + list(images[2:])), r"images differ in size.*pass size=\(H, W\)"),
        (dict(images=list(images[:7]) + [images[7].astype(np.int16)]), r"images\[7\] must be uint8 \[H,W,3\].*int16"),
        (dict(params={**p, "crop": p["crop"][:, :2].copy()}), r"params\['crop'\] must be float32 \(8, 4\)"),
        (dict(boxes=boxes[:, :3].copy()), r"boxes must be float32 \[N,4\].*got float32 \(8, 3\)"),
        (dict(images=images[:, :, ::-1]), r"images must be C-contiguous"),
        (dict(params={**p, "partner": p["partner"].astype(np.int64)}), r"params\['partner'\] must be int32 \(8,\), got int64 \(8,\)"),
        (dict(params={**p, "partner": np.full(8, 8, np.int32)}), r"must index the batch \(0..7\), got values 8..8"),
        (dict(params={**p, "perm": p["perm"][:, :10].copy()}), r"params\['perm'\] must be int32 \(8, 64\), got int32 \(8, 10\)"),
        (dict(params={k: v for k, v in p.items() if k != "affine"}), r"params lacks affine"),
        (dict(cfg="cached"), r"cfg must be a SwapConfig, got str"),
    ]
    base = dict(images=images, soft=soft, fills=fills, boxes=boxes, params=p, cfg=cfg)
    for change, msg in cases:
        with pytest.raises(SwapError, match=msg):
            composite_cpu(**{**base, **change})


def test_without_a_cache_the_thresholds_must_be_numbers():
    """SwapConfig's None thresholds mean the cache's: the functions that see no cache say so."""
    from dali_abs.swap import sample_params

    rng = np.random.default_rng(0)
    images, soft, fills, boxes = make_batch(rng, n=4)
    with pytest.raises(SwapError, match=r"SwapConfig.tight and loose left None \(= the cache's recorded threshold"):
        sample_params(np.arange(4), rng, SwapConfig(), image_size=(48, 40), soft=soft)
    p = params_for(rng, soft, paper_swap(), 48, 40)
    with pytest.raises(SwapError, match=r"SwapConfig.loose left None"):
        composite_cpu(images, soft, fills, boxes, p, SwapConfig(tight=0.5))
