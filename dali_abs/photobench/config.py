"""Settings of a benchmark built from photos (``dali-abs make-dataset --objects``), checked once."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dali_abs.errors import DaliAbsError


class PhotoBenchError(DaliAbsError, ValueError):
    """Input photos, masks, places or settings a benchmark cannot be built from."""


@dataclass(frozen=True)
class PhotoConfig:
    """How to build the benchmark. Sizes are output pixels; fractions are 0..1.

    ``train`` / ``val`` / ``test``: composites per split; None = one per usable object photo of
    the split (each object pasted once, as in Waterbirds); 0 = no val (test) split. Val and test
    are rounded down to a multiple of the number of groups so that every group has the same count.
    ``split_fractions``: shares of the source photos (per class; places per place) given to
    train, val and test. A source photo serves one split only, as object and as place.
    ``min_confidence``, ``min_cover``, ``max_cover``: an object photo is skipped (and reported)
    when its mask's decisive fraction (share of pixels below 0.1 or above 0.9) is below
    ``min_confidence``, or its foreground (pixels above 0.5) covers less than ``min_cover`` or
    more than ``max_cover`` of the photo. ``max_hole`` (habitat mode): a photo whose hole (mask
    above 0.1, dilated by ``dilate`` px) covers more of the frame is not used as a place: the
    fill would be mostly invented. ``dilate``: None = 2 % of ``size``.
    ``inpainter``: an inpainter ONNX file (our contract) for the habitat fill; None = push-pull.
    ``object_scale``: (lo, hi), 0 < lo <= hi <= 1: each composite's object is shrunk by a factor
    drawn uniformly from [lo, hi] (of its size in the ``size`` crop of its photo) and put where it
    stays wholly inside the frame (see :mod:`dali_abs.photobench`); (1.0, 1.0) pastes it
    unchanged where it was in its photo.
    """

    size: int = 224
    train: int | None = None
    val: int | None = None
    test: int | None = None
    split_fractions: tuple[float, float, float] = (0.5, 0.2, 0.3)
    rho: float = 1.0
    seed: int = 0
    min_confidence: float = 0.6
    min_cover: float = 0.02
    max_cover: float = 0.9
    max_hole: float = 0.6
    dilate: int | None = None
    inpainter: str | None = None
    object_scale: tuple[float, float] = (1.0, 1.0)
    class_names: tuple[str, ...] | None = None
    preview_per_group: int = 6

    @property
    def dilate_px(self) -> int:
        return max(1, round(0.02 * self.size)) if self.dilate is None else int(self.dilate)

    @property
    def moves_objects(self) -> bool:
        """Objects are scaled and moved (any ``object_scale`` but 1); else pasted where they were."""
        return tuple(self.object_scale) != (1.0, 1.0)

    @property
    def edge_px(self) -> int:
        """Width of the object's soft edge whose colours are cleaned before pasting (2 % of the side)."""
        return max(2, round(0.02 * self.size))

    def check(self) -> None:
        if self.size < 32:
            raise PhotoBenchError(f"--size must be at least 32 px, got {self.size}")
        if not 0.0 <= self.rho <= 1.0:
            raise PhotoBenchError(f"--rho must be in [0, 1], got {self.rho}")
        fr = tuple(self.split_fractions)
        if len(fr) != 3 or any(not 0.0 <= f <= 1.0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise PhotoBenchError(f"--split-fractions must be three shares train,val,test in [0, 1] summing to 1, "
                                  f"got {','.join(str(f) for f in fr)}")
        if fr[0] == 0.0 or fr[2] == 0.0:
            raise PhotoBenchError(f"--split-fractions {','.join(str(f) for f in fr)}: train and test need a share "
                                  "of the photos (val may be 0)")
        for name in ("train", "val", "test"):
            n = getattr(self, name)
            if n is not None and n < (1 if name == "train" else 0):
                raise PhotoBenchError(f"--{name} must be {'positive' if name == 'train' else '0 or more'}, got {n}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise PhotoBenchError(f"--min-confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 <= self.min_cover < self.max_cover <= 1.0:
            raise PhotoBenchError(f"need 0 <= --min-cover < --max-cover <= 1, got {self.min_cover} and {self.max_cover}")
        if not 0.0 < self.max_hole <= 1.0:
            raise PhotoBenchError(f"--max-hole must be in (0, 1], got {self.max_hole}")
        if self.dilate is not None and not 0 <= self.dilate <= self.size // 4:
            raise PhotoBenchError(f"--dilate must be 0..{self.size // 4} px at --size {self.size}, got {self.dilate}")
        sc = tuple(self.object_scale)
        if len(sc) != 2 or not 0.0 < sc[0] <= sc[1] <= 1.0:
            raise PhotoBenchError(f"--object-scale must be LO or LO,HI with 0 < LO <= HI <= 1 (objects are shrunk, "
                                  f"never enlarged), got {','.join(str(v) for v in sc)}")
        if self.preview_per_group < 1:
            raise PhotoBenchError(f"preview_per_group must be positive, got {self.preview_per_group}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        d["object_scale"] = list(self.object_scale)
        d["class_names"] = list(self.class_names) if self.class_names else None
        d["dilate_px"] = self.dilate_px
        d["edge_px"] = self.edge_px
        return d
