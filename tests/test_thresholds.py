"""The rule that chooses the tight (cut-out) and loose (fill) thresholds from held-out patches."""

from __future__ import annotations

import numpy as np
import pytest

from dali_abs.models.segmenter import onnx_metadata
from dali_abs.segmenter import thresholds as th
from dali_abs.segmenter.thresholds import ThresholdError, Thresholds, choose_thresholds, from_metadata, to_metadata


def brute_force(p, y, precision=th.PRECISION, recall=th.RECALL):
    """The rule read straight from its definition, one candidate at a time; the cut-out drawn by
    torch's bilinear resize (align_corners=False: patch centres, clamped at the borders)."""
    import torch

    p64, y = np.asarray(p, np.float64), np.asarray(y, bool)
    p = p64.astype(np.float32)
    k = th.SAMPLES
    dp = torch.nn.functional.interpolate(torch.from_numpy(p)[:, None], scale_factor=k, mode="bilinear",
                                         align_corners=False)[:, 0].numpy()
    dy = y.repeat(k, 1).repeat(k, 2)

    def prec(t):
        sel = dp > t
        return (sel & dy).sum() / sel.sum() if sel.any() else np.nan

    def drec(t):
        return (dp[dy] > t).mean()

    def rec(t):
        return (p64[y] > t).mean()

    tight_ok = [t for t in th.CANDIDATES if th.TIGHT_RANGE[0] <= t <= th.TIGHT_RANGE[1]
                and drec(t) >= th.MIN_TIGHT_RECALL]
    hits = [t for t in tight_ok if prec(t) >= precision]
    if not tight_ok:  # even the range's start keeps less than the recall floor
        tight = th.TIGHT_RANGE[0]
    else:
        tight = hits[0] if hits else max(tight_ok, key=lambda t: (np.nan_to_num(prec(t), nan=-1.0), -t))
    loose_ok = [t for t in th.CANDIDATES if th.LOOSE_RANGE[0] <= t <= min(th.LOOSE_RANGE[1], tight)]
    hits = [t for t in loose_ok if rec(t) >= recall]
    return tight, (hits[-1] if hits else loose_ok[0])


def blobs(rng, n, ring, r=8):
    """Labels and soft probabilities of ``n`` images: a confident blob of object patches, a ring
    of background patches next to it up to ``ring``, confident background elsewhere."""
    yy, xx = np.mgrid[0:r, 0:r] + 0.5
    cy, cx = rng.uniform(0.3 * r, 0.7 * r, (2, n, 1, 1))
    d = np.hypot(yy - cy, xx - cx) / rng.uniform(0.15 * r, 0.35 * r, (n, 1, 1))
    y = d < 1
    p = np.where(y, rng.beta(8, 1.5, y.shape), rng.beta(1, 12, y.shape))
    near = ~y & (d < 1.6) & (rng.random(y.shape) < 0.5)
    p[near] = rng.uniform(0.2, ring, near.sum())
    return p, y


@pytest.mark.parametrize("seed", range(6))
def test_the_rule_is_what_its_definition_says(seed):
    rng = np.random.default_rng(seed)
    p, y = blobs(rng, 40, rng.uniform(0.5, 0.99))
    got = choose_thresholds(p, y)
    assert (got.tight, got.loose) == brute_force(p, y)
    assert got.stats["precision_at_tight"] >= th.PRECISION or "note" in got.stats
    assert got.stats["recall_at_loose"] >= th.RECALL or "note" in got.stats


def test_tight_cuts_where_the_drawn_cut_out_leaves_the_ring_and_loose_keeps_every_object_patch():
    # a 4 x 4 object at 1.0 whose left neighbours (a column of background patches) sit at 0.6;
    # one faint object corner at 0.05; background 0 elsewhere
    p = np.zeros((10, 8, 8))
    y = np.zeros((10, 8, 8), bool)
    y[:, 2:6, 2:6] = True
    p[:, 2:6, 2:6] = 1.0
    p[:, 2:6, 1] = 0.6
    p[:, 2, 2] = 0.05
    got = choose_thresholds(p, y, source="test patches")
    assert (got.tight, got.loose) == brute_force(p, y)
    # patch by patch the ring is gone above 0.6, but drawn bilinearly between the centres (1.0 and
    # 0.6) the cut-out reaches into the ring's patches up to t = (1 + 0.6) / 2 = 0.8
    assert 0.75 < got.tight <= 0.8 and got.stats["patch_precision_at_tight"] == 1.0
    # recall 0.999 needs the faint corner: loose below 0.05, as high as that allows
    assert got.loose == 0.04 and got.stats["recall_at_loose"] == 1.0
    assert got.tight_source == got.loose_source == \
        "chosen on test patches (tight: drawn precision >= 0.995; loose: patch recall >= 0.999)"
    assert got.stats["tight_criterion"] == th.TIGHT_BY_PRECISION.format(precision=th.PRECISION)
    # polarity: 1 = foreground; 0/1 labels; [N, 1, R, R] as the model outputs it
    again = choose_thresholds(p[:, None], y.astype(np.uint8)[:, None])
    assert (again.tight, again.loose) == (got.tight, got.loose)


def test_a_clean_model_keeps_the_paper_cut_and_the_paper_fill():
    y = np.zeros((20, 8, 8), bool)
    y[:, 2:5, 3:7] = True
    p = np.where(y, 0.97, 0.01)
    got = choose_thresholds(p, y)
    assert got.tight == th.TIGHT_RANGE[0] == 0.5  # nothing to gain above 0.5: keep all the object
    assert got.loose == th.LOOSE_RANGE[1]  # never above the cap: a margin the labels cannot see
    assert "note" not in got.stats


def test_where_precision_needs_a_deeper_cut_than_the_recall_floor_allows_the_floor_wins(monkeypatch):
    # object patches spread over 0.55..1.0 (a soft object: each step up trims it), one column of
    # background patches at 0.9 beside it: a clean cut needs t >= 0.94, where about 1 % of the
    # object is left. The rule keeps at least 70 % of it, and says which criterion fired.
    rng = np.random.default_rng(3)
    p = np.zeros((30, 8, 8))
    y = np.zeros((30, 8, 8), bool)
    y[:, 2:6, 2:6] = True
    p[:, 2:6, 2:6] = rng.uniform(0.55, 1.0, (30, 4, 4))
    p[:, 2:6, 1] = 0.9
    got = choose_thresholds(p, y, source="30 images")
    assert (got.tight, got.loose) == brute_force(p, y)
    assert got.stats["recall_at_tight"] >= th.MIN_TIGHT_RECALL == 0.7
    assert got.stats["precision_at_tight"] < th.PRECISION and got.tight < 0.7
    floor = th.TIGHT_BY_RECALL_FLOOR.format(precision=0.995, floor=0.7)
    assert got.stats["tight_criterion"] == floor and got.stats["note"] == floor
    assert got.tight_source == f"chosen on 30 images ({floor}; loose: patch recall >= 0.999)"
    assert got.stats["best_precision_at_floor"] == got.stats["precision_at_tight"]
    # the target is reachable without the floor: that cut keeps almost nothing of the object
    monkeypatch.setattr(th, "MIN_TIGHT_RECALL", 0.0)
    unbounded = choose_thresholds(p, y)
    assert unbounded.tight >= 0.94 and unbounded.stats["recall_at_tight"] < 0.05


def test_targets_that_cannot_be_reached_give_the_nearest_choice_and_say_so():
    # background everywhere up to 0.99: no cut reaches 0.995 precision; object over 0.5..1, some missed
    rng = np.random.default_rng(0)
    y = rng.random((60, 8, 8)) < 0.3
    p = np.where(y, rng.uniform(0.0, 1.0, y.shape), rng.uniform(0.0, 0.99, y.shape))
    p[y] = rng.uniform(0.5, 1.0, y.sum())
    p[y & (rng.random(y.shape) < 0.03)] = 0.01  # a few object patches the model misses
    got = choose_thresholds(p, y)
    assert (got.tight, got.loose) == brute_force(p, y)
    assert got.loose == th.LOOSE_RANGE[0]
    assert "precision 0.995 not reached" in got.stats["note"] and "recall 0.999 not reached" in got.stats["note"]
    assert "not reached" in got.tight_source
    # an object so soft that even 0.5 trims more than 30 % of it: the range's start, said so
    p[y] = rng.uniform(0.0, 1.0, y.sum())
    low = choose_thresholds(p, y)
    assert low.tight == th.TIGHT_RANGE[0] == brute_force(p, y)[0]
    assert low.stats["tight_criterion"] == "tight: even 0.5 keeps less than 0.7 of the foreground, so 0.5"
    assert low.stats["best_precision_at_floor"] is None and "even 0.5" in low.tight_source


def test_without_both_classes_the_library_defaults_and_the_reason():
    got = choose_thresholds(np.zeros((3, 4, 4)), np.zeros((3, 4, 4), bool), source="3 validation images")
    assert (got.tight, got.loose) == (th.DEFAULT_TIGHT, th.DEFAULT_LOOSE) == (0.5, 0.1)
    assert "3 validation images hold no foreground patch" in got.tight_source


def test_bad_input_is_a_clear_error():
    with pytest.raises(ThresholdError, match=r"differ in shape: \(2, 4, 4\) vs \(2, 5, 5\)"):
        choose_thresholds(np.zeros((2, 4, 4)), np.zeros((2, 5, 5), bool))
    with pytest.raises(ThresholdError, match=r"soft grids \[N, R, R\] or \[N, 1, R, R\], got shape \(2, 4\)"):
        choose_thresholds(np.zeros((2, 4)), np.zeros((2, 4), bool))
    with pytest.raises(ThresholdError, match="foreground probabilities in 0..1, got min -3, max 2.5.*not logits"):
        choose_thresholds(np.array([-3.0, 2.5]).reshape(1, 1, 1, 2).repeat(2, 2), np.ones((1, 1, 2, 2), bool))
    with pytest.raises(ThresholdError, match="labels must be bool or 0/1"):
        choose_thresholds(np.zeros((1, 1, 1)), np.full((1, 1, 1), 2))
    with pytest.raises(ThresholdError, match="tight threshold must be a number in \\[0, 1\\), got 1.5"):
        Thresholds(1.5, 0.1)


def test_metadata_round_trip_and_bad_records():
    p, y = blobs(np.random.default_rng(7), 40, 0.7)
    chosen = choose_thresholds(p, y, source="40 validation images")
    meta = onnx_metadata(8, 64, to_metadata(chosen))  # the exporter's own prefixing
    assert meta["dali_abs.tight_threshold"] == repr(chosen.tight) and meta["dali_abs.loose_threshold"] == "0.1"
    back = from_metadata(meta, "seg.onnx")
    assert (back.tight, back.loose) == (chosen.tight, chosen.loose) and back.stats == chosen.stats
    assert back.tight_source == f"segmenter seg.onnx ({chosen.tight_source})"
    assert chosen.tight_source.startswith("chosen on 40 validation images (tight: ")
    assert from_metadata(onnx_metadata(8, 64), "old.onnx") is None  # exported before thresholds were recorded
    half = {k: v for k, v in meta.items() if k != "dali_abs.loose_threshold"}
    with pytest.raises(ThresholdError, match="seg.onnx: metadata has dali_abs.tight_threshold but not "
                                             "dali_abs.loose_threshold"):
        from_metadata(half, "seg.onnx")
    with pytest.raises(ThresholdError, match="seg.onnx: recorded thresholds: tight threshold must be"):
        from_metadata({**meta, "dali_abs.tight_threshold": "7"}, "seg.onnx")
    with pytest.raises(ThresholdError, match="are not numbers"):
        from_metadata({**meta, "dali_abs.loose_threshold": "low"}, "seg.onnx")
