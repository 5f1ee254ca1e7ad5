"""The rule that chooses the tight (cut-out) and loose (fill) thresholds from held-out patches."""

from __future__ import annotations

import numpy as np
import pytest

from dali_abs.models.segmenter import onnx_metadata
from dali_abs.segmenter import thresholds as th
from dali_abs.segmenter.thresholds import ThresholdError, Thresholds, choose_thresholds, from_metadata, to_metadata


def brute_force(p, y, precision=th.PRECISION, recall=th.RECALL):
    """The rule read straight from its definition, one candidate at a time."""
    p, y = np.asarray(p, float).ravel(), np.asarray(y, bool).ravel()

    def prec(t):
        sel = p > t
        return (sel & y).sum() / sel.sum() if sel.any() else np.nan

    def rec(t):
        return (p[y] > t).mean()

    tight_ok = [t for t in th.CANDIDATES if th.TIGHT_RANGE[0] <= t <= th.TIGHT_RANGE[1]
                and rec(t) >= th.MIN_TIGHT_RECALL]
    hits = [t for t in tight_ok if prec(t) >= precision]
    tight = hits[0] if hits else max(tight_ok, key=lambda t: (np.nan_to_num(prec(t), nan=-1.0), -t))
    loose_ok = [t for t in th.CANDIDATES if th.LOOSE_RANGE[0] <= t <= min(th.LOOSE_RANGE[1], tight)]
    hits = [t for t in loose_ok if rec(t) >= recall]
    return tight, (hits[-1] if hits else loose_ok[0])


def patches(rng, n, fg_frac, ring):
    """Labels and soft probabilities of ``n`` images (8 x 8): confident inside, ``ring`` = how
    high the background next to the object goes."""
    y = rng.random((n, 8, 8)) < fg_frac
    p = np.where(y, rng.beta(8, 1.5, y.shape), rng.beta(1, 12, y.shape))
    edge = ~y & (rng.random(y.shape) < 0.1)
    p[edge] = rng.uniform(0.2, ring, edge.sum())
    return p, y


@pytest.mark.parametrize("seed", range(6))
def test_the_rule_is_what_its_definition_says(seed):
    rng = np.random.default_rng(seed)
    p, y = patches(rng, 40, rng.uniform(0.1, 0.4), rng.uniform(0.5, 0.99))
    got = choose_thresholds(p, y)
    assert (got.tight, got.loose) == brute_force(p, y)
    assert got.stats["precision_at_tight"] >= th.PRECISION or "note" in got.stats
    assert got.stats["recall_at_loose"] >= th.RECALL or "note" in got.stats


def test_tight_is_the_least_aggressive_clean_cut_and_loose_keeps_every_object_patch():
    # 1000 object patches at 0.9 and 5 faint ones at 0.05; 10 background patches at 0.6 (a ring), 990 at 0
    p = np.r_[np.full(1000, 0.9), np.full(5, 0.05), np.full(10, 0.6), np.zeros(990)]
    y = np.r_[np.ones(1005, bool), np.zeros(1000, bool)]
    got = choose_thresholds(p, y, source="test patches")
    # p > 0.59 still cuts out the ring (precision 1000/1010 < 0.995); p > 0.6 does not
    assert got.tight == 0.6 and got.stats["precision_at_tight"] == 1.0
    # recall 0.999 needs the 5 faint patches: loose below 0.05, as high as that allows
    assert got.loose == 0.04 and got.stats["recall_at_loose"] == 1.0
    assert got.tight_source == got.loose_source == "chosen on test patches"
    # polarity: 1 = foreground; 0/1 labels, any shape, e.g. [N, 1, R, R]
    again = choose_thresholds(p.reshape(5, 1, 1, 401), y.astype(np.uint8).reshape(5, 1, 1, 401))
    assert (again.tight, again.loose) == (0.6, 0.04)


def test_a_clean_model_keeps_the_paper_cut_and_the_paper_fill():
    p = np.r_[np.full(500, 0.97), np.full(1500, 0.01)]
    y = p > 0.5
    got = choose_thresholds(p, y)
    assert got.tight == th.TIGHT_RANGE[0] == 0.5  # nothing to gain above 0.5: keep all the object
    assert got.loose == th.LOOSE_RANGE[1]  # never above the cap: a margin the labels cannot see
    assert "note" not in got.stats


def test_targets_that_cannot_be_reached_give_the_nearest_choice_and_say_so():
    # background everywhere up to 0.99: no cut reaches 0.995 precision; object down to 0
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.3
    p = np.where(y, rng.uniform(0.0, 1.0, 4000), rng.uniform(0.0, 0.99, 4000))
    got = choose_thresholds(p, y)
    assert (got.tight, got.loose) == brute_force(p, y)
    assert got.loose == th.LOOSE_RANGE[0]
    assert "precision 0.995 not reached" in got.stats["note"] and "recall 0.999 not reached" in got.stats["note"]
    assert "not reached" in got.tight_source


def test_without_both_classes_the_library_defaults_and_the_reason():
    got = choose_thresholds(np.zeros((3, 4, 4)), np.zeros((3, 4, 4), bool), source="3 validation images")
    assert (got.tight, got.loose) == (th.DEFAULT_TIGHT, th.DEFAULT_LOOSE) == (0.5, 0.1)
    assert "3 validation images hold no foreground patch" in got.tight_source


def test_bad_input_is_a_clear_error():
    with pytest.raises(ThresholdError, match=r"differ in shape: \(2, 4\) vs \(2, 5\)"):
        choose_thresholds(np.zeros((2, 4)), np.zeros((2, 5), bool))
    with pytest.raises(ThresholdError, match="foreground probabilities in 0..1, got min -3, max 2.5.*not logits"):
        choose_thresholds(np.array([-3.0, 2.5]), np.array([True, False]))
    with pytest.raises(ThresholdError, match="labels must be bool or 0/1"):
        choose_thresholds(np.zeros(2), np.array([0, 2]))
    with pytest.raises(ThresholdError, match="tight threshold must be a number in \\[0, 1\\), got 1.5"):
        Thresholds(1.5, 0.1)


def test_metadata_round_trip_and_bad_records():
    p = np.r_[np.full(1000, 0.9), np.full(10, 0.6), np.zeros(990)]
    chosen = choose_thresholds(p, np.r_[np.ones(1000, bool), np.zeros(1000, bool)], source="40 validation images")
    meta = onnx_metadata(8, 64, to_metadata(chosen))  # the exporter's own prefixing
    assert meta["dali_abs.tight_threshold"] == "0.6" and meta["dali_abs.loose_threshold"] == "0.1"
    back = from_metadata(meta, "seg.onnx")
    assert (back.tight, back.loose) == (chosen.tight, chosen.loose) and back.stats == chosen.stats
    assert back.tight_source == "segmenter seg.onnx (chosen on 40 validation images)"
    assert from_metadata(onnx_metadata(8, 64), "old.onnx") is None  # exported before thresholds were recorded
    half = {k: v for k, v in meta.items() if k != "dali_abs.loose_threshold"}
    with pytest.raises(ThresholdError, match="seg.onnx: metadata has dali_abs.tight_threshold but not "
                                             "dali_abs.loose_threshold"):
        from_metadata(half, "seg.onnx")
    with pytest.raises(ThresholdError, match="seg.onnx: recorded thresholds: tight threshold must be"):
        from_metadata({**meta, "dali_abs.tight_threshold": "7"}, "seg.onnx")
    with pytest.raises(ThresholdError, match="are not numbers"):
        from_metadata({**meta, "dali_abs.loose_threshold": "low"}, "seg.onnx")
