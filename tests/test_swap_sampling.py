"""Parameter sampling (dali_abs.swap.sampling): crops, partners by policy, schedules, jitter."""

from __future__ import annotations

import numpy as np
import pytest

from dali_abs.swap import AugmentConfig, SwapError, sample_crops, sample_params
from swap_cases import paper_swap, paper_waterbirds


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
        paper_swap(background="random")
    with pytest.raises(SwapError, match=r"SwapConfig.p must be in \[0, 1\], got 1.5"):
        paper_swap(p=1.5)
    with pytest.raises(SwapError, match="schedule_epochs must be >= 1"):
        paper_swap(p_schedule="linear")


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
