"""Is a mask usable? The statistics of the cub-birds-300 ``masks.csv``, and the skip rule.

Masks are float32 HW in 0..1, 1 = object (soft values allowed). A pixel is *foreground*
above 0.5 and *decided* below :data:`LOW` or above :data:`HIGH`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dali_abs.photobench.config import PhotoConfig

LOW, HIGH = 0.1, 0.9  # the decisive band: below LOW surely background, above HIGH surely object


@dataclass(frozen=True)
class MaskQuality:
    fg_fraction: float  # share of pixels above 0.5
    decisive_fraction: float  # share of pixels below LOW or above HIGH

    def as_dict(self) -> dict:
        return {"fg_fraction": round(self.fg_fraction, 4), "decisive_fraction": round(self.decisive_fraction, 4)}


def mask_quality(mask: np.ndarray) -> MaskQuality:
    """Statistics of a float HW mask in 0..1 (computed at the mask's own resolution)."""
    m = np.asarray(mask, np.float32)
    return MaskQuality(float((m > 0.5).mean()), float(((m < LOW) | (m > HIGH)).mean()))


def skip_reason(q: MaskQuality, cfg: PhotoConfig) -> tuple[str, str] | None:
    """(kind, reason) when an object photo's mask is unusable under ``cfg``'s thresholds, else None."""
    if q.fg_fraction < cfg.min_cover:
        return "mask too small", f"mask covers {q.fg_fraction:.1%} of the photo (below --min-cover {cfg.min_cover:.0%})"
    if q.fg_fraction > cfg.max_cover:
        return "mask too large", f"mask covers {q.fg_fraction:.1%} of the photo (above --max-cover {cfg.max_cover:.0%})"
    if q.decisive_fraction < cfg.min_confidence:
        return "mask undecided", (f"mask mostly undecided: {q.decisive_fraction:.1%} of its pixels below {LOW} or "
                                  f"above {HIGH} (below --min-confidence {cfg.min_confidence})")
    return None
