"""The tight (cut-out) and loose (fill) thresholds, chosen from held-out labelled patches.

Both thresholds cut the segmenter's **foreground probability** p per patch (0..1, 1 =
foreground; :mod:`dali_abs.segmenter.inference`), and both compare strictly (``p > t``):

- **tight** is the alpha of the cut-out: what lies above it is pasted with the object onto
  another image's background. *Background* above it travels with the object, a ring of the
  source's own background that the classifier can learn (on the built-in benchmark it does:
  worst-group 0.22 at tight 0.5, 0.90 at 0.8; README, Robustness). Missing foreground only
  trims the object. So **precision** of the foreground matters most. The loader draws the
  cut-out from the soft grid interpolated bilinearly between patch centres
  (:mod:`dali_abs.swap.twin`), so a background patch just below tight still lends the
  cut-out a strip of itself when its neighbour is far above; the precision is therefore
  scored on the cut-out as the loader draws it (:data:`SAMPLES` points per patch side, each
  labelled by the patch it falls in). Cutting deeper also erodes the object: both benchmarks lose
  heavily once the drawn cut-out keeps only 50-60 % of the labelled foreground (built-in: 0.64 at
  tight 0.95, drawn recall 0.59; cub-birds-300: 0.80 at 0.93, recall 0.50) and not at 67-70 %
  (0.92 at 0.9; 0.86 at 0.8). So a **recall floor** bounds the cut: where the precision target
  needs a deeper cut than the floor allows (on real photos the patch labels' edges keep drawn
  precision below 0.995 at any cut that leaves the object whole), the floor wins.
- **loose** is the region the inpainter fills and the loader replaces when the image serves
  as a background. A *foreground* patch below it stays in the clean background: a ghost of the
  partner's own object in the composite. Filling a background patch only costs a little fill.
  So **recall** of the foreground matters most.

:func:`choose_thresholds` is the rule (pure; NumPy in, :class:`Thresholds` out), applied by
``dali-abs segmenter train`` to its validation split and recorded in the ONNX metadata
(:func:`to_metadata`, read back by :func:`from_metadata` / ``Segmenter.thresholds``);
``precompute`` copies them into the cache and the loader uses them unless the user sets
``SwapConfig(tight=..., loose=...)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from dali_abs.errors import DaliAbsError

# Candidates: multiples of 0.01 (readable values; finer than the cache's 1/255 steps matter little).
CANDIDATES = np.round(np.arange(1, 100) / 100.0, 2)
PRECISION = 0.995  # tight: at most 1/200 of the drawn cut-out lies in labelled-background patches
RECALL = 0.999  # loose: at most 1 in 1000 labelled foreground patches is left unfilled
TIGHT_RANGE = (0.5, 0.95)  # below 0.5 the model itself calls the patch background; above 0.95 little is left
MIN_TIGHT_RECALL = 0.7  # the drawn cut-out keeps at least 70 % of the labelled foreground (its shape)
SAMPLES = 8  # points per patch side where the cut-out is drawn as the loader draws it
# Loose never goes above the paper's 0.1: the data may only widen the fill. A ghost costs far more
# than a little extra fill, and held-out labels cannot see the object's faint edge patches
# (those labelled background for holding only a little of it). 0 would fill every patch.
LOOSE_RANGE = (0.02, 0.1)
RULE = (f"tight: smallest t in [{TIGHT_RANGE[0]}, {TIGHT_RANGE[1]}] whose cut-out, drawn bilinearly between patch "
        f"centres, has held-out precision >= {PRECISION} while its recall stays >= {MIN_TIGHT_RECALL} (when no t "
        f"has both: the most precise t with that recall); loose: largest t in "
        f"[{LOOSE_RANGE[0]}, min({LOOSE_RANGE[1]}, tight)] with held-out patch recall >= {RECALL}; thresholds on the "
        "foreground probability, p > t")
DEFAULT_TIGHT = 0.5  # the paper's tight threshold (background probability < 0.5), for models without a choice
DEFAULT_LOOSE = 0.1  # the paper's loose threshold (background probability < 0.9)
DEFAULT_SOURCE = "library default (the paper's 0.5 / 0.1; nothing recorded)"
META_TIGHT, META_LOOSE, META_RULE = "tight_threshold", "loose_threshold", "thresholds"  # ONNX keys, after "dali_abs."
# Which criterion fired, as the sources and stats["tight_criterion"] / ["loose_criterion"] say it
# (filled with the targets of the call, the recall floor and the range's start).
TIGHT_BY_PRECISION = "tight: drawn precision >= {precision}"
TIGHT_BY_RECALL_FLOOR = ("tight: precision {precision} not reached while keeping {floor} of the foreground, "
                         "the most precise cut that keeps it")
TIGHT_AT_RANGE_START = "tight: even {start} keeps less than {floor} of the foreground, so {start}"
LOOSE_BY_RECALL = "loose: patch recall >= {recall}"
LOOSE_AT_RANGE_START = "loose: recall {recall} not reached, the lowest threshold"


class ThresholdError(DaliAbsError, ValueError):
    """Probabilities, labels or recorded thresholds that do not fit the conventions."""


@dataclass(frozen=True)
class Thresholds:
    """A tight and a loose threshold on the foreground probability (0..1), and where they came from.

    ``tight``: cut-out alpha = p > tight. ``loose``: fill region = p > loose (normally
    ``loose <= tight``: the filled region holds what would be cut out).
    ``tight_source`` / ``loose_source``: one line each (e.g. "segmenter seg.onnx: chosen on 40
    validation images"). ``stats``: the validation figures behind a choice (empty otherwise).
    """

    tight: float
    loose: float
    tight_source: str = DEFAULT_SOURCE
    loose_source: str = DEFAULT_SOURCE
    stats: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        for name in ("tight", "loose"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0.0 <= float(v) < 1.0:
                raise ThresholdError(f"{name} threshold must be a number in [0, 1), got {v!r}")


def _counts(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per candidate t: (labelled-foreground count, labelled-background count) of ``values > t``,
    and the number of labelled-foreground values."""
    pos, neg = np.sort(values[labels]), np.sort(values[~labels])
    tp = len(pos) - np.searchsorted(pos, CANDIDATES, side="right")
    fp = len(neg) - np.searchsorted(neg, CANDIDATES, side="right")
    return tp, fp, len(pos)


def drawn(prob: np.ndarray, labels: np.ndarray, k: int = SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """The soft grids ``[N, R, R]`` as the loader draws them: bilinear between patch centres,
    edge-replicated, sampled at ``k`` x ``k`` points per patch (``[N, kR, kR]``), and each
    point's label (that of the patch it falls in)."""
    r = prob.shape[-1]
    u = np.clip((np.arange(r * k) + 0.5) / k - 0.5, 0.0, r - 1)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, r - 1)
    f = (u - i0).astype(np.float32)
    p = prob.astype(np.float32)
    rows = p[:, i0, :] * (1 - f)[None, :, None] + p[:, i1, :] * f[None, :, None]
    out = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i1] * f[None, None, :]
    return out, np.repeat(np.repeat(labels, k, 1), k, 2)


def choose_thresholds(prob, labels, *, precision: float = PRECISION, recall: float = RECALL,
                      source: str = "held-out labelled patches") -> Thresholds:
    """Choose (tight, loose) from held-out predictions and their labels.

    ``prob``: float foreground probability per patch, 0..1 (1 = foreground), ``[N, R, R]`` or
    ``[N, 1, R, R]`` (label smoothing already undone, as the exported model outputs).
    ``labels``: bool (or 0/1) of the same shape, 1 = foreground. ``source``: names the data in
    the result's sources.

    Rule (:data:`RULE`), on counts of ``> t`` for t in 0.01 steps:

    - **tight**: the smallest t in :data:`TIGHT_RANGE` whose cut-out, drawn as the loader draws
      it (:func:`drawn`), has precision (share of its points in labelled-foreground patches) at
      least ``precision`` while its recall (share of the labelled-foreground points it covers)
      stays at least :data:`MIN_TIGHT_RECALL` (0.7); when no such t reaches ``precision``, the
      most precise t whose recall stays at the floor (in practice the deepest cut that keeps 70 %
      of the object); when even 0.5 keeps less than that, 0.5. The smallest: cutting deeper than
      needed erodes the object's shape.
    - **loose**: the largest t in ``[LOOSE_RANGE[0], min(LOOSE_RANGE[1], tight)]`` (0.02..0.1)
      whose recall (labelled-foreground patches above t: the inpainter fills whole patches) is
      at least ``recall``; when none reaches it, the lowest. A model that is sure of its object
      keeps the paper's 0.1; a softer one gets a wider fill.

    Without both labelled foreground and background patches there is nothing to choose from:
    the library defaults (0.5, 0.1), with the reason in the sources. Otherwise both sources read
    ``chosen on SOURCE (TIGHT_CRITERION; LOOSE_CRITERION)``, naming the criterion that fired
    (:data:`TIGHT_BY_PRECISION`, :data:`TIGHT_BY_RECALL_FLOOR`, :data:`TIGHT_AT_RANGE_START`;
    :data:`LOOSE_BY_RECALL`, :data:`LOOSE_AT_RANGE_START`). ``stats`` holds those two criteria,
    the drawn precision and recall at tight, the patch precision and recall at both, the best
    drawn precision reachable at the recall floor, the targets and the patch counts; ``note``
    lists the criteria that fell back.
    """
    p = np.asarray(prob, np.float64)
    y = np.asarray(labels)
    if p.shape != y.shape:
        raise ThresholdError(f"probabilities and labels differ in shape: {p.shape} vs {y.shape}")
    if p.ndim == 4 and p.shape[1] == 1:
        p, y = p[:, 0], y[:, 0]
    if p.ndim != 3 or p.shape[1] != p.shape[2]:
        raise ThresholdError(f"probabilities must be soft grids [N, R, R] or [N, 1, R, R], got shape {p.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ThresholdError("labels must be bool or 0/1 (1 = foreground)")
        y = y.astype(bool)
    if p.size and (not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0):
        raise ThresholdError(f"probabilities must be foreground probabilities in 0..1, got min {np.nanmin(p):.4g}, "
                             f"max {np.nanmax(p):.4g} (pass the model's output, not logits)")
    for name, v in (("precision", precision), ("recall", recall)):
        if not 0.0 < v <= 1.0:
            raise ThresholdError(f"{name} target must be in (0, 1], got {v}")
    tp, fp, n_fg = _counts(p.reshape(-1), y.reshape(-1))
    n_bg = y.size - n_fg
    if n_fg == 0 or n_bg == 0:
        why = f"library default: the {source} hold no {'foreground' if n_fg == 0 else 'background'} patch"
        return Thresholds(DEFAULT_TIGHT, DEFAULT_LOOSE, why, why, {"foreground_patches": n_fg,
                                                                    "background_patches": n_bg})
    dp, dy = drawn(p, y)
    dtp, dfp, d_fg = _counts(dp.reshape(-1), dy.reshape(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        dprec = np.where(dtp + dfp > 0, dtp / np.maximum(dtp + dfp, 1), np.nan)
    rec, drec = tp / n_fg, dtp / d_fg

    in_tight = (CANDIDATES >= TIGHT_RANGE[0]) & (CANDIDATES <= TIGHT_RANGE[1]) & (drec >= MIN_TIGHT_RECALL)
    fallbacks = []
    fmt = {"precision": precision, "recall": recall, "floor": MIN_TIGHT_RECALL, "start": TIGHT_RANGE[0]}
    best = float(np.nanmax(np.where(in_tight, dprec, np.nan))) if in_tight.any() else None
    if not in_tight.any():
        i_t = int(np.searchsorted(CANDIDATES, TIGHT_RANGE[0]))
        t_crit = TIGHT_AT_RANGE_START.format(**fmt)
        fallbacks.append(t_crit)
    else:
        ok = in_tight & (dprec >= precision)
        if ok.any():
            i_t = int(np.argmax(ok))
            t_crit = TIGHT_BY_PRECISION.format(**fmt)
        else:
            i_t = int(np.nanargmax(np.where(in_tight, dprec, -1.0)))
            t_crit = TIGHT_BY_RECALL_FLOOR.format(**fmt)
            fallbacks.append(t_crit)
    tight = float(CANDIDATES[i_t])

    in_loose = (CANDIDATES >= LOOSE_RANGE[0]) & (CANDIDATES <= min(LOOSE_RANGE[1], tight))
    ok = in_loose & (rec >= recall)
    if ok.any():
        i_l = int(np.flatnonzero(ok)[-1])
        l_crit = LOOSE_BY_RECALL.format(**fmt)
    else:
        i_l = int(np.argmax(in_loose))
        l_crit = LOOSE_AT_RANGE_START.format(**fmt)
        fallbacks.append(l_crit)
    loose = float(CANDIDATES[i_l])

    stats = {"rule": RULE, "precision_target": precision, "recall_target": recall,
             "tight_recall_floor": MIN_TIGHT_RECALL, "tight_criterion": t_crit, "loose_criterion": l_crit,
             "best_precision_at_floor": None if best is None else round(best, 4),
             "foreground_patches": n_fg, "background_patches": n_bg,
             "precision_at_tight": round(float(dprec[i_t]), 4), "recall_at_tight": round(float(drec[i_t]), 4),
             "patch_precision_at_tight": round(float(prec[i_t]), 4),
             "patch_recall_at_tight": round(float(rec[i_t]), 4),
             "precision_at_loose": round(float(prec[i_l]), 4), "recall_at_loose": round(float(rec[i_l]), 4)}
    if fallbacks:
        stats["note"] = "; ".join(fallbacks)
    src = f"chosen on {source} ({t_crit}; {l_crit})"
    return Thresholds(tight, loose, src, src, stats)


def to_metadata(th: Thresholds) -> dict[str, str]:
    """ONNX metadata entries (keys without the ``dali_abs.`` prefix the exporter adds)."""
    return {META_TIGHT: repr(float(th.tight)), META_LOOSE: repr(float(th.loose)),
            META_RULE: json.dumps({"source": th.tight_source, **th.stats}, sort_keys=True)}


def from_metadata(meta: dict[str, str], where: str) -> Thresholds | None:
    """The thresholds recorded in a segmenter's metadata (keys ``dali_abs.tight_threshold``,
    ``dali_abs.loose_threshold``, ``dali_abs.thresholds``), None when the model records none
    (exported before thresholds were chosen). ``where`` names the file in errors and sources."""
    keys = [f"dali_abs.{k}" for k in (META_TIGHT, META_LOOSE)]
    have = [k in meta for k in keys]
    if not any(have):
        return None
    if not all(have):
        raise ThresholdError(f"{where}: metadata has {keys[have.index(True)]} but not {keys[have.index(False)]}; "
                             "re-export the model with `dali-abs segmenter train`")
    try:
        tight, loose = float(meta[keys[0]]), float(meta[keys[1]])
    except ValueError:
        raise ThresholdError(f"{where}: metadata thresholds {meta[keys[0]]!r}, {meta[keys[1]]!r} are not "
                             "numbers") from None
    try:
        stats = json.loads(meta.get(f"dali_abs.{META_RULE}", "{}"))
    except ValueError:
        stats = {}
    stats = stats if isinstance(stats, dict) else {}
    how = stats.pop("source", None)
    src = f"segmenter {where}" + (f" ({how})" if how else "")
    try:
        return Thresholds(tight, loose, src, src, stats)
    except ThresholdError as e:
        raise ThresholdError(f"{where}: recorded thresholds: {e}") from None
