"""The background swap: parameter sampling, the NumPy twin, and the CUDA kernel text itself
(compiled as C++ with g++ through the shipped kernels/cpu_shim.cuh) against the twin."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dali_abs.loader.composite import check_batch, composite_cpu, composite_gpu, launch_args, mean_colour
from dali_abs.loader.params import FILLS, AugmentConfig, SwapConfig, SwapError, sample_crops, sample_params

ROOT = Path(__file__).resolve().parents[1]


def paper_swap(**kw) -> SwapConfig:
    """A SwapConfig with numeric thresholds (the paper's 0.5 / 0.1): the compositing functions
    see no cache, so SwapConfig's default None (= the cache's thresholds) does not apply."""
    return SwapConfig(**{"tight": 0.5, "loose": 0.1, **kw})


def paper_waterbirds(**kw) -> SwapConfig:
    """The Waterbirds preset with the paper's thresholds (tight 0.67, loose 0.1)."""
    return SwapConfig.waterbirds(**{"tight": 0.67, "loose": 0.1, **kw})


def make_batch(rng, n=8, h=48, w=40, r=8, f=16, degenerate_box=True):
    """Images, blob-shaped soft masks (foreground probability), fills and boxes around the blobs."""
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:r, 0:r] + 0.5
    cy, cx = rng.uniform(0.3 * r, 0.7 * r, (2, n, 1, 1))
    rad = rng.uniform(0.15 * r, 0.35 * r, (n, 1, 1))
    soft = np.clip(1.3 - np.hypot(yy - cy, xx - cx) / rad, 0, 1).astype(np.float32)
    fills = rng.integers(0, 256, (n, f, f, 3), dtype=np.uint8)
    loose = soft > 0.1
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        rows, cols = np.flatnonzero(loose[i].any(1)), np.flatnonzero(loose[i].any(0))
        boxes[i] = (rows[0] / r, cols[0] / r, (rows[-1] + 1) / r, (cols[-1] + 1) / r)
    if degenerate_box:
        boxes[-1] = (0.5, 0.5, 0.5, 0.7)  # y1 <= y0: no fill region
    return images, soft, fills, boxes


def ragged_batch(rng, n=6, r=8):
    """Images and tiles of different sizes (as DALI hands them over), soft masks and boxes."""
    images, soft, _, boxes = make_batch(rng, n, 8, 8, r, 4)
    images = [rng.integers(0, 256, (int(rng.integers(20, 70)), int(rng.integers(20, 70)), 3), dtype=np.uint8)
              for _ in range(n)]
    fills = [rng.integers(0, 256, (int(rng.integers(3, 24)), int(rng.integers(3, 24)), 3), dtype=np.uint8)
             for _ in range(n)]
    return images, soft, fills, boxes


def params_for(rng, soft, cfg, h, w, labels=None, augment=None):
    n = soft.shape[0]
    labels = np.arange(n) % 3 if labels is None else labels
    return sample_params(labels, rng, cfg, image_size=(h, w), soft=soft, augment=augment)


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


def test_random_resized_crops_follow_the_augment_config():
    rng = np.random.default_rng(10)
    aug = AugmentConfig(area=(0.3, 0.6), ratio=(0.5, 2.0), flip=0.25)
    crop, flip = sample_crops(rng, 4000, aug, (60, 80))
    w, h = crop[:, 2] - crop[:, 0], crop[:, 3] - crop[:, 1]
    assert (crop[:, :2] >= 0).all() and (crop[:, 2] <= 80 + 1e-3).all() and (crop[:, 3] <= 60 + 1e-3).all()
    area = w * h / (60 * 80)
    assert area.min() >= 0.3 - 1e-4 and area.max() <= 0.6 + 1e-4
    assert (w / h).min() >= 0.5 - 1e-3 and (w / h).max() <= 2.0 + 1e-3
    assert abs(flip.mean() - 0.25) < 0.03
    # an impossible window (area 1, ratio 4) falls back to the whole canvas, as DALI does
    crop, _ = sample_crops(rng, 10, AugmentConfig(area=(1.0, 1.0), ratio=(4.0, 4.0)), (60, 80))
    assert (crop == (0, 0, 80, 60)).all()
    with pytest.raises(SwapError, match=r"AugmentConfig.area must be \(lo, hi\) with 0 < lo <= hi <= 1, got \(0.0, 1.0\)"):
        AugmentConfig(area=(0.0, 1.0))


def test_sample_params_shapes_and_empty_foreground():
    soft = np.zeros((5, 4, 4), np.float32)
    p = sample_params(np.arange(5), np.random.default_rng(0), paper_waterbirds(), image_size=(32, 32), soft=soft)
    assert {k: (v.dtype, v.shape) for k, v in p.items()} == {
        "partner": (np.int32, (5,)), "swap": (np.uint8, (5,)), "affine": (np.float32, (5, 6)),
        "noise_seed": (np.uint32, (5,)), "perm": (np.int32, (5, 16)), "fg_box": (np.float32, (5, 4)),
        "crop": (np.float32, (5, 4)), "flip": (np.uint8, (5,))}
    assert (p["crop"] == (0, 0, 32, 32)).all() and not p["flip"].any()  # no augment: the whole canvas
    assert np.isfinite(p["affine"]).all()
    assert (np.sort(p["perm"], 1) == np.arange(16)).all()


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


# --- parameter sampling --------------------------------------------------------------------

def _partner_class_freq(policy, labels, groups=None, draws=400):
    rng = np.random.default_rng(5)
    soft = np.zeros((len(labels), 4, 4), np.float32)
    cfg = paper_swap(background=policy)
    parts = np.stack([sample_params(labels, rng, cfg, groups, image_size=(16, 16), soft=soft)["partner"]
                      for _ in range(draws)])
    return parts


def test_class_balanced_picks_each_present_class_equally_often():
    labels = np.array([0] * 10 + [1] * 3 + [5] * 1)  # imbalanced batch, class 2..4 absent
    parts = _partner_class_freq("class_balanced", labels)
    freq = np.bincount(labels[parts].ravel(), minlength=6) / parts.size
    np.testing.assert_allclose(freq[[0, 1, 5]], 1 / 3, atol=0.02)
    # within a class, every member equally likely
    members = np.bincount(parts.ravel(), minlength=14)[:10]  # samples 0..9 are class 0
    np.testing.assert_allclose(members / members.sum(), 0.1, atol=0.02)


def test_other_same_uniform_and_group_policies():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    parts = _partner_class_freq("other_class", labels)
    pc = labels[parts]
    assert (pc != labels[None, :]).all()
    # a class-0 sample picks class 1 and 2 equally often
    f = np.bincount(pc[:, labels == 0].ravel(), minlength=3) / pc[:, labels == 0].size
    np.testing.assert_allclose(f[1:], 0.5, atol=0.03)
    parts = _partner_class_freq("same_class", labels)
    assert (labels[parts] == labels[None, :]).all()
    parts = _partner_class_freq("uniform", labels)
    np.testing.assert_allclose(np.bincount(labels[parts].ravel()) / parts.size, [0.5, 1 / 6, 1 / 3], atol=0.02)
    groups = np.array([0, 1, 2, 3] * 3)
    parts = _partner_class_freq("other_group", labels, groups)
    assert (groups[parts] != groups[None, :]).all()
    f = np.bincount(groups[parts][:, groups == 0].ravel(), minlength=4)[1:]
    np.testing.assert_allclose(f / f.sum(), 1 / 3, atol=0.03)


def test_policy_errors_name_the_problem():
    soft = np.zeros((4, 4, 4), np.float32)
    rng = np.random.default_rng(0)
    with pytest.raises(SwapError, match="other_class.*two classes.*only class 7"):
        sample_params(np.full(4, 7), rng, paper_swap(background="other_class"), image_size=(8, 8), soft=soft)
    with pytest.raises(SwapError, match="needs groups"):
        sample_params(np.arange(4), rng, paper_swap(background="other_group"), image_size=(8, 8), soft=soft)
    with pytest.raises(SwapError, match=r"labels must be an integer array of shape \(N,\), got float64 \(4,\)"):
        sample_params(np.zeros(4), rng, paper_swap(), image_size=(8, 8), soft=soft)
    with pytest.raises(SwapError, match=r"soft must be \[N,R,R\] with N = len\(labels\) = 3, got shape \(4, 4, 4\)"):
        sample_params(np.arange(3), rng, paper_swap(), image_size=(8, 8), soft=soft)
    with pytest.raises(SwapError, match="background must be one of .*got 'random'"):
        SwapConfig(background="random")
    with pytest.raises(SwapError, match=r"SwapConfig.p must be in \[0, 1\], got 1.5"):
        SwapConfig(p=1.5)
    with pytest.raises(SwapError, match="schedule_epochs must be >= 1"):
        SwapConfig(p_schedule="linear")


def test_swap_probability_schedules():
    lin = paper_swap(p=1.0, p_start=0.2, p_schedule="linear", schedule_epochs=4)
    assert [lin.swap_probability(e) for e in (0, 2, 4, 9)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    cos = paper_swap(p=0.8, p_start=0.0, p_schedule="cosine", schedule_epochs=10)
    assert [cos.swap_probability(e) for e in (0, 5, 10)] == pytest.approx([0.0, 0.4, 0.8])
    labels = np.zeros(4000, int)
    soft = np.zeros((4000, 2, 2), np.float32)
    swap = sample_params(labels, np.random.default_rng(0), lin, epoch=2, image_size=(8, 8), soft=soft)["swap"]
    assert abs(swap.mean() - 0.6) < 0.03


def test_jitter_keeps_the_object_inside_and_rotates_about_its_centre():
    rng = np.random.default_rng(6)
    n, h, w, r = 200, 64, 64, 8
    soft = np.zeros((n, r, r), np.float32)
    soft[:, 2:5, 3:6] = 0.9  # tight box: x 24..48, y 16..40 px
    cfg = paper_waterbirds(translate=0.5)
    a = sample_params(np.zeros(n, int), rng, cfg, image_size=(h, w), soft=soft)["affine"].astype(np.float64)
    # the forward map of the box corners (invert the 2x2 part) lands inside the image
    A = a[:, [0, 1, 3, 4]].reshape(n, 2, 2)
    b = a[:, [2, 5]]
    corners = np.array([[24, 16], [48, 16], [24, 40], [48, 40]], float)
    fwd = np.einsum("nij,nkj->nki", np.linalg.inv(A), corners[None] - b[:, None, :])
    assert (fwd >= -1e-3).all() and (fwd[..., 0] <= w + 1e-3).all() and (fwd[..., 1] <= h + 1e-3).all()
    s = 1 / np.sqrt(np.abs(np.linalg.det(A)))
    assert s.min() >= 0.5 - 1e-4 and s.max() <= 1.5 + 1e-4 and s.std() > 0.2
    rot = np.degrees(np.arctan2(a[:, 1], a[:, 0]))  # inverse rotates by -theta
    assert rot.min() >= -30.001 and rot.max() <= 30.001 and rot.std() > 10
    # without translation the centre (36, 28) is a fixed point
    a0 = sample_params(np.zeros(n, int), rng, paper_waterbirds(translate=0.0), image_size=(h, w),
                       soft=soft)["affine"].astype(np.float64)
    c = np.array([36.0, 28.0])
    xs = a0[:, 0] * c[0] + a0[:, 1] * c[1] + a0[:, 2]
    ys = a0[:, 3] * c[0] + a0[:, 4] * c[1] + a0[:, 5]
    np.testing.assert_allclose(np.stack([xs, ys], 1), np.tile(c, (n, 1)), atol=1e-3)


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
    pytest.importorskip("cupy")
    with pytest.raises(SwapError, match="composite_gpu needs CuPy arrays, got images of type ndarray"):
        composite_gpu(**base)


# --- the kernel text, compiled with g++ ----------------------------------------------------

WRAPPER = r"""
#include "cpu_shim.cuh"
#include "composite.cu"
// The CUDA entry point itself (1-D grid-stride loop over all pixels), run by the shim.
extern "C" void run_abs_composite(ABS_COMPOSITE_PARAMS, int grid, int block) {
  ABS_SHIM_LAUNCH(grid, block, abs_composite(ABS_COMPOSITE_ARGS));
}
"""


@pytest.fixture(scope="module")
def kernel_lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.fail("g++ is needed to compile the kernel text for the CPU (Debian: apt-get install g++)")
    d = tmp_path_factory.mktemp("kernel")
    (d / "wrap.cpp").write_text(WRAPPER)
    so = d / "libcomposite.so"
    r = subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
                        "-I", str(ROOT / "kernels"), str(d / "wrap.cpp"), "-o", str(so)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lib = ctypes.CDLL(str(so))
    lib.run_abs_composite.restype = None
    return lib


def run_kernel_text(lib, images, soft, fills, boxes, p, cfg, size=None, grid=13, block=64):
    b = check_batch(images, soft, fills, boxes, p, cfg, size)
    out = np.full((b.n, b.h, b.w, 3), 77, np.uint8)
    ptr = lambda a: a.ctypes.data  # noqa: E731
    args = (np.array([ptr(a) for a in b.images], np.uint64), b.image_hw,
            *launch_args(b, cfg, np, ptr, mean_colour(np, b.fills), out))
    lib.run_abs_composite(*(ctypes.c_void_p(a.ctypes.data) for a in args),
                          *map(ctypes.c_int, (b.n, b.h, b.w, b.r)),
                          ctypes.c_float(cfg.tight), ctypes.c_float(cfg.loose), ctypes.c_float(cfg.feather),
                          ctypes.c_int(FILLS.index(cfg.fill)), ctypes.c_int(grid), ctypes.c_int(block))
    return out


def mismatch(a, b):
    """Fraction of pixels where any channel differs by more than 1 LSB."""
    return float((np.abs(a.astype(np.int16) - b.astype(np.int16)) > 1).any(-1).mean())


CASES = [paper_swap(fill=m) for m in FILLS] + [
    paper_waterbirds(fill="cached", p=0.8),
    paper_waterbirds(fill="patches", feather=1.5),
    paper_swap(fill="cached", feather=3.0),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.fill}-rot{c.rotation[1]:g}-f{c.feather:g}")
def test_kernel_text_matches_the_twin(kernel_lib, cfg):
    rng = np.random.default_rng(100 + CASES.index(cfg))
    total, bad, differ = 0, 0.0, 0.0
    # one size, sides not divisible by R, and a ragged batch resized to 45 x 50 with crops and flips
    for h, w, r, f, ragged in ((48, 40, 8, 16, False), (37, 53, 6, 11, False), (45, 50, 8, 0, True)):
        images, soft, fills, boxes = ragged_batch(rng, 6, r) if ragged else make_batch(rng, 6, h, w, r, f)
        aug = AugmentConfig() if ragged else None
        p = params_for(rng, soft, cfg, h, w, augment=aug)
        twin = composite_cpu(images, soft, fills, boxes, p, cfg, size=(h, w))
        kern = run_kernel_text(kernel_lib, images, soft, fills, boxes, p, cfg, size=(h, w))
        images = twin  # sizes for the counts below
        bad += mismatch(twin, kern) * images[..., 0].size
        differ += float((twin != kern).any(-1).mean()) * images[..., 0].size
        total += images[..., 0].size
        assert np.abs(twin.astype(int) - kern.astype(int)).max() <= 1 or mismatch(twin, kern) < 1e-3
    print(f"{cfg.fill} feather={cfg.feather} rotation={cfg.rotation}: pixels differing {differ / total:.2e}, "
          f"by > 1 LSB {bad / total:.2e}")
    assert bad / total < 1e-3


class _FakeCupy:
    """Just enough of CuPy for composite_gpu's host code, with the g++-compiled kernel text
    behind RawModule: checks the argument list (order, pointer vs exact scalar types) that a
    real launch would pass, without a GPU."""

    class ndarray(np.ndarray):
        @property
        def data(self):  # CuPy's MemoryPointer: .ptr is the device address
            return type("MemoryPointer", (), {"ptr": self.ctypes.data})()

    int64, float32, uint8 = np.int64, np.float32, np.uint8
    SIGNATURE = ["p"] * 15 + [np.int32] * 4 + [np.float32] * 3 + [np.int32]

    def __init__(self, lib):
        self.lib, self.launches = lib, 0
        fake = self

        class RawModule:
            def __init__(self, code, options=()):
                assert "abs_composite" in code and "--fmad=false" in options

            def get_function(self, name):
                assert name == "abs_composite"
                return fake._launch

        self.RawModule = RawModule

    def asarray(self, a):
        return np.ascontiguousarray(a).view(self.ndarray)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype).view(self.ndarray)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype).view(self.ndarray)

    def stack(self, arrays):
        return np.stack([np.asarray(a) for a in arrays]).view(self.ndarray)

    def _launch(self, grid, block, args):
        assert len(args) == len(self.SIGNATURE)
        conv = []
        for a, want in zip(args, self.SIGNATURE):
            if want == "p":
                assert isinstance(a, self.ndarray) and a.flags.c_contiguous, type(a)
                conv.append(ctypes.c_void_p(a.ctypes.data))
            else:
                assert type(a) is want, f"scalar {a!r} is {type(a).__name__}, kernel takes {want.__name__}"
                conv.append((ctypes.c_int if want is np.int32 else ctypes.c_float)(a))
        self.launches += 1
        self.lib.run_abs_composite(*conv, ctypes.c_int(grid[0]), ctypes.c_int(block[0]))


@pytest.mark.parametrize("cfg", [paper_swap(), paper_swap(fill="mean", p=0.7), paper_waterbirds(feather=1.0)],
                         ids=["cached", "mean", "waterbirds-feather"])
def test_composite_gpu_host_code_drives_the_kernel_text(kernel_lib, monkeypatch, cfg):
    import sys

    from dali_abs.loader import composite

    fake = _FakeCupy(kernel_lib)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(composite, "_MODULE", None)
    rng = np.random.default_rng(12)
    images, soft, fills, boxes = ragged_batch(rng, 5, 4)
    p = params_for(rng, soft, cfg, 24, 20, augment=AugmentConfig())
    got = composite_gpu([fake.asarray(a) for a in images], fake.asarray(soft), [fake.asarray(a) for a in fills],
                        fake.asarray(boxes), p, cfg, size=(24, 20))
    assert fake.launches == 1 and isinstance(got, fake.ndarray)
    assert np.array_equal(np.asarray(got), composite_cpu(images, soft, fills, boxes, p, cfg, size=(24, 20)))


# --- the real kernel on a GPU --------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.fill}-rot{c.rotation[1]:g}-f{c.feather:g}")
def test_composite_gpu_matches_the_twin(cfg):
    import cupy

    rng = np.random.default_rng(11)
    images, soft, fills, boxes = ragged_batch(rng, 16, 16)
    p = params_for(rng, soft, cfg, 96, 80, augment=AugmentConfig())
    twin = composite_cpu(images, soft, fills, boxes, p, cfg, size=(96, 80))
    dev = composite_gpu([cupy.asarray(a) for a in images], cupy.asarray(soft), [cupy.asarray(a) for a in fills],
                        cupy.asarray(boxes), p, cfg, size=(96, 80))
    assert mismatch(twin, cupy.asnumpy(dev)) < 1e-3


def test_without_a_cache_the_thresholds_must_be_numbers():
    """SwapConfig's None thresholds mean the cache's: the functions that see no cache say so."""
    rng = np.random.default_rng(0)
    images, soft, fills, boxes = make_batch(rng, n=4)
    with pytest.raises(SwapError, match=r"SwapConfig.tight and loose left None \(= the cache's recorded threshold"):
        sample_params(np.arange(4), rng, SwapConfig(), image_size=(48, 40), soft=soft)
    p = params_for(rng, soft, paper_swap(), 48, 40)
    with pytest.raises(SwapError, match=r"SwapConfig.loose left None"):
        composite_cpu(images, soft, fills, boxes, p, SwapConfig(tight=0.5))
