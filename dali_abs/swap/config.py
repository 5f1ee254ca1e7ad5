"""Options of the background swap: :class:`SwapConfig` (what is swapped, how), :class:`AugmentConfig`
(the crop and flip done in the same pass), :class:`Normalize` (the float CHW normalisation that
may follow in the same op), and :class:`SwapError`, the error of every swap input.

Thresholds are on the cached soft patch mask, the **foreground** probability (1 = foreground).
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass

from dali_abs.errors import DaliAbsError

BACKGROUNDS = ("class_balanced", "uniform", "other_class", "same_class", "other_group", "next_class", "own")
FILLS = ("cached", "gray", "mean", "noise", "pixels", "patches")
SCHEDULES = ("constant", "linear", "cosine")


class SwapError(DaliAbsError, ValueError):
    """A swap option, a batch of labels or a compositing input that cannot be used as given."""


@dataclass(frozen=True)
class SwapConfig:
    """Options of the background swap. Defaults follow the paper's non-Waterbirds setting.

    Swap probability
        ``p`` (1.0: every sample is swapped, as in the paper). ``p_schedule``: ``"constant"``
        (``p`` at every epoch), ``"linear"`` or ``"cosine"``: from ``p_start`` at epoch 0 to
        ``p`` at epoch ``schedule_epochs`` and after.
    Background choice (``background``; the partner is another sample of the same batch)
        ``"class_balanced"`` (paper): a class uniformly among the classes present in the
        batch, then a sample of that class uniformly (may be the same class, may be the
        sample itself). ``"uniform"``: any sample. ``"other_class"``: a class uniformly
        among the *other* classes present, then one of its samples (error if the batch
        holds one class). ``"same_class"``: a sample of the same class (may be itself).
        ``"other_group"``: as ``"other_class"`` but over ``groups`` (needs them).
        ``"next_class"``: a sample of the next class present in the batch (class y + 1 where the
        batch holds it; cyclically by class index, so after the largest comes the smallest); the
        sample's own background where the batch holds only its class. ``"own"``: the sample's own
        clean background (partner = itself).
        ``exclude_self`` (with ``class_balanced``, ``uniform``, ``same_class``): never the sample
        itself but another sample of the chosen class; where the batch holds no other, the
        sample's own background. (``other_class``, ``other_group``, ``next_class`` exclude it anyway.)
    Foreground jitter (about the centroid of the object's tight patches)
        ``scale`` = (lo, hi): factor ~ U(lo, hi) (1 = unchanged; 2 = twice as large).
        ``rotation`` = (lo, hi) degrees, ~ U[lo, hi). ``translate``: fraction of the image
        side; offset ~ U(-translate, translate) * (W, H) px. Default 64/224 (= the paper's
        +-64 px at 224 px). With ``keep_inside`` the offset is clipped so the transformed
        bounding box of the tight patches stays inside the image (centred if it cannot fit).
    Masks (thresholds on the foreground probability, 0..1)
        ``tight``: alpha = fg prob > tight, bilinear between patch centres. ``loose``: the fill
        region is the cells with fg prob > loose, cell by cell: the cells the cached fill was
        computed for (so a loose below the cache's fill threshold is refused).
        Both default to None = **the cache's recorded thresholds** (chosen on the segmenter's
        validation images, :mod:`dali_abs.segmenter.thresholds`; ``dali-abs cache info`` shows
        them), filled in by :func:`~dali_abs.loader.ops.background_swap` (and so by
        ``create_loader``); set a number to override. The paper used tight 0.5 (background
        prob < 0.5; 0.67 on Waterbirds) and loose 0.1 (background prob < 0.9). Functions that
        see no cache (:func:`~dali_abs.swap.sampling.sample_params`, the compositing functions)
        need numbers. ``feather`` (px, 0): 0 = hard binary alpha (paper);
        > 0 ramps alpha over about ``2*feather`` source px across the tight threshold.
    What is composited (the audit's variants, :mod:`dali_abs.audit`)
        ``backdrop`` = (R, G, B) 0..255: the background is this constant colour instead of any
        image's (the object on a plain backdrop); None (default): the partner's clean background.
        ``foreground`` = False: no object is pasted, the background alone (with
        ``background="own"``: the sample's clean background, its own object filled out).
    Fill of the partner's foreground region (``fill``)
        ``"cached"`` (the inpainted tile), ``"gray"`` (128), ``"mean"`` (mean colour of the
        tile), ``"noise"`` (uniform per channel), ``"pixels"`` (random pixels of the partner
        image), ``"patches"`` (the partner's patches in a random order).
    """

    p: float = 1.0
    p_schedule: str = "constant"
    p_start: float = 0.0
    schedule_epochs: int = 0
    background: str = "class_balanced"
    scale: tuple[float, float] = (1.0, 1.0)
    rotation: tuple[float, float] = (0.0, 0.0)
    translate: float = 64.0 / 224.0
    keep_inside: bool = True
    tight: float | None = None  # None: the cache's recorded threshold
    loose: float | None = None  # None: the cache's recorded (fill) threshold
    feather: float = 0.0
    fill: str = "cached"
    exclude_self: bool = False
    backdrop: tuple[float, float, float] | None = None  # RGB 0..255 instead of the partner's background
    foreground: bool = True  # False: paste no object (the background alone)

    def __post_init__(self):
        np = sys.modules.get("numpy")  # a NumPy bool implies NumPy is loaded; no import for the check
        for name in ("keep_inside", "exclude_self", "foreground"):
            v = getattr(self, name)
            if np is not None and isinstance(v, np.bool_):
                object.__setattr__(self, name, bool(v))
            elif not isinstance(v, bool):  # a truthy "no" or 0.5 would silently count as True
                raise SwapError(f"SwapConfig.{name} must be True or False, got {v!r}")
        for name in ("p", "p_start", "tight", "loose"):
            v = getattr(self, name)
            if v is None and name in ("tight", "loose"):
                continue
            if not 0.0 <= float(v) <= 1.0:
                raise SwapError(f"SwapConfig.{name} must be in [0, 1], got {v!r}")
        _choice("p_schedule", self.p_schedule, SCHEDULES)
        _choice("background", self.background, BACKGROUNDS)
        _choice("fill", self.fill, FILLS)
        if self.p_schedule != "constant" and int(self.schedule_epochs) < 1:
            raise SwapError(f"SwapConfig.schedule_epochs must be >= 1 with p_schedule={self.p_schedule!r}, "
                            f"got {self.schedule_epochs!r}")
        for name in ("scale", "rotation"):
            v = getattr(self, name)
            if len(tuple(v)) != 2 or float(v[0]) > float(v[1]):
                raise SwapError(f"SwapConfig.{name} must be a (lo, hi) pair with lo <= hi, got {v!r}")
        if float(self.scale[0]) <= 0.0:
            raise SwapError(f"SwapConfig.scale must be > 0, got {self.scale!r}")
        if not 0.0 <= float(self.translate) <= 1.0:
            raise SwapError(f"SwapConfig.translate is a fraction of the side in [0, 1], got {self.translate!r}")
        if not float(self.feather) >= 0.0:
            raise SwapError(f"SwapConfig.feather must be >= 0 px, got {self.feather!r}")
        if self.exclude_self and self.background == "own":
            raise SwapError("SwapConfig(background='own') is the sample's own background; exclude_self=True "
                            "contradicts it")
        if self.backdrop is not None:
            try:
                rgb = tuple(float(v) for v in self.backdrop)
            except (TypeError, ValueError):
                rgb = ()
            if len(rgb) != 3 or not all(0.0 <= v <= 255.0 for v in rgb):
                raise SwapError(f"SwapConfig.backdrop must be an (R, G, B) colour of three numbers in 0..255, "
                                f"got {self.backdrop!r}")
            if not self.foreground:
                raise SwapError("SwapConfig(backdrop=..., foreground=False) would show the plain colour alone; "
                                "set one of them")
            object.__setattr__(self, "backdrop", rgb)  # frozen: a tuple of floats, whatever sequence was given

    @classmethod
    def waterbirds(cls, **overrides) -> "SwapConfig":
        """The paper's Waterbirds foreground jitter: scale U(0.5, 1.5), rotation [-30, 30)
        degrees, translation +-32 px at 224 px (32/224 of the side). The paper also cut at tight
        0.67 (background probability < 0.33), hand-picked for its segmenter; here tight stays
        the cache's recorded threshold (chosen on your segmenter's validation images) unless
        you pass ``tight=0.67``."""
        kw = dict(scale=(0.5, 1.5), rotation=(-30.0, 30.0), translate=32.0 / 224.0)
        kw.update(overrides)
        return cls(**kw)

    def swap_probability(self, epoch: int) -> float:
        """The swap probability at ``epoch`` (0-based) under ``p_schedule``."""
        if self.p_schedule == "constant":
            return float(self.p)
        t = min(max(epoch, 0) / self.schedule_epochs, 1.0)
        if self.p_schedule == "cosine":
            t = 0.5 - 0.5 * math.cos(math.pi * t)
        return float(self.p_start + (self.p - self.p_start) * t)


@dataclass(frozen=True)
class AugmentConfig:
    """The usual training augmentations after the swap (DALI's / torchvision's defaults).

    ``random_resized_crop``: a window of ``area`` = (lo, hi) of the canvas area (paper: 0.7-1)
    and aspect ratio (w/h) in ``ratio``, log-uniform, placed uniformly; 10 tries, else the
    whole canvas (as DALI's ``random_resized_crop``). Off: the whole canvas. ``flip``:
    horizontal flip probability.
    """

    random_resized_crop: bool = True
    area: tuple[float, float] = (0.7, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: float = 0.5

    def __post_init__(self):
        lo, hi = (float(v) for v in self.area)
        if not 0.0 < lo <= hi <= 1.0:
            raise SwapError(f"AugmentConfig.area must be (lo, hi) with 0 < lo <= hi <= 1, got {self.area!r}")
        lo, hi = (float(v) for v in self.ratio)
        if not 0.0 < lo <= hi:
            raise SwapError(f"AugmentConfig.ratio must be (lo, hi) with 0 < lo <= hi, got {self.ratio!r}")
        if not 0.0 <= float(self.flip) <= 1.0:
            raise SwapError(f"AugmentConfig.flip is a probability in [0, 1], got {self.flip!r}")


DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Normalize:
    """The composite normalised to float CHW as DALI's ``crop_mirror_normalize(mean=mean, std=std,
    dtype=..., output_layout="CHW")`` computes it, so the tensors are the same bytes whichever
    does it: ``(x - mean) * (1 / std)`` in float32 for x in 0..255, ``mean`` and ``std`` per RGB
    channel in **0..255 units** (DALI's), ``1 / std`` in float32; ``dtype`` "float16" rounds that
    to nearest even. :meth:`imagenet`: the constants every stage uses. ``mean`` and ``std`` may be
    any three real numbers each (kept as tuples of floats); constants that all lie in 0..1 are
    refused as 0..1 units."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: str = "float32"

    def __post_init__(self):
        given = {}
        for name in ("mean", "std"):
            v = getattr(self, name)
            try:
                xs = tuple(v)
            except TypeError:
                xs = ()
            if isinstance(v, (str, bytes)) or len(xs) != 3 or \
                    not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in xs):
                raise SwapError(f"Normalize.{name} must be 3 numbers (R, G, B in 0..255 units), got {v!r}")
            given[name] = tuple(float(x) for x in xs)
            if not all(math.isfinite(x) for x in given[name]):
                raise SwapError(f"Normalize.{name} must be finite, got {v!r}")
        mean, std = given["mean"], given["std"]
        if not all(x > 0 for x in std):
            raise SwapError(f"Normalize.std must be positive, got {self.std!r}")
        if all(x < 1 for x in std) and all(x <= 1 for x in mean):
            raise SwapError(f"Normalize(mean={self.mean!r}, std={self.std!r}) looks like 0..1 units; Normalize takes "
                            "0..255 units (as crop_mirror_normalize): multiply by 255, or use Normalize.imagenet()")
        # frozen: plain float tuples whatever sequence was given (so the options hash and compare)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.dtype not in DTYPES:
            raise SwapError(f"Normalize.dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")

    @classmethod
    def imagenet(cls, dtype: str = "float32") -> "Normalize":
        """ImageNet's mean and std (:mod:`dali_abs.constants`), times 255."""
        from dali_abs.constants import MEAN, STD

        return cls(tuple(m * 255 for m in MEAN), tuple(s * 255 for s in STD), dtype)

    def constants(self):
        """float32 (3,) mean and float32 (3,) ``1 / std``, as DALI's kernel holds them."""
        import numpy as np

        return np.array(self.mean, np.float32), np.float32(1) / np.array(self.std, np.float32)


def check_normalize(value, name: str = "normalize", optional: bool = True):
    """``value`` if it is a :class:`Normalize` (or, ``optional``, None), else a SwapError: the
    backends would otherwise fail deep inside on a missing attribute."""
    if isinstance(value, Normalize) or (optional and value is None):
        return value
    raise SwapError(f"{name} must be {'None or ' if optional else ''}a dali_abs.swap.Normalize (e.g. "
                    f"Normalize.imagenet()), got {type(value).__name__} {value!r}")


def require_thresholds(cfg: SwapConfig) -> None:
    """Raise :class:`SwapError` unless ``cfg.tight`` and ``cfg.loose`` are numbers (not None = "the cache's")."""
    missing = [n for n in ("tight", "loose") if getattr(cfg, n) is None]
    if missing:
        raise SwapError(f"SwapConfig.{' and '.join(missing)} left None (= the cache's recorded threshold), but no "
                        "cache is known here; pass numbers (e.g. SwapConfig(tight=cache.thresholds.tight, "
                        "loose=cache.thresholds.loose)) or go through background_swap / create_loader")


def _choice(name, value, allowed):
    if value not in allowed:
        raise SwapError(f"SwapConfig.{name} must be one of {', '.join(allowed)}; got {value!r}")
