"""Pixel operations of the build: square crops, resizing, the habitat fill, pasting.

Conventions: photos are uint8 HWC RGB 0..255; masks and alphas float32 HW in 0..1 with
1 = object; holes bool HW with True = to be filled. A box ``(x0, y0, side)`` is a square in the
photo's pixels. Every function is deterministic.
"""

from __future__ import annotations


import numpy as np

from dali_abs.photobench.config import PhotoBenchError
from dali_abs.photobench.quality import HIGH, LOW


def fit_mask(mask: np.ndarray, photo_hw: tuple[int, int], mask_path, photo_path) -> np.ndarray:
    """``mask`` at the photo's size: as is, or resized (bilinear) when only its resolution differs.

    A mask of another aspect ratio belongs to another picture (or a cropped one): an error.
    """
    from PIL import Image

    h, w = photo_hw
    mh, mw = mask.shape
    if (mh, mw) == (h, w):
        return mask
    if abs(mw * h - mh * w) > max(h, w):  # more than a pixel's rounding apart
        raise PhotoBenchError(f"{mask_path}: mask is {mw}x{mh} px but its photo {photo_path} is {w}x{h} px (another "
                              "aspect ratio); give a mask of the photo itself, at its size or scaled without cropping")
    return np.asarray(Image.fromarray(mask, mode="F").resize((w, h), Image.BILINEAR), np.float32).clip(0.0, 1.0)


def square_box(mask: np.ndarray) -> tuple[tuple[int, int, int], float]:
    """The square crop of a photo that keeps its object: ``((x0, y0, side), lost)``.

    ``side`` is the photo's shorter side; along the longer side the square is centred on the
    object's bounding box (mask above 0.5), clamped to the photo. ``lost`` is the share of the
    mask's mass outside the square (0.0 for square photos).
    """
    h, w = mask.shape
    side = min(h, w)
    if h == w:
        return (0, 0, side), 0.0
    fg = mask > 0.5
    long_axis = 1 if w > h else 0
    profile = fg.any(axis=0 if long_axis == 1 else 1)
    length = w if long_axis == 1 else h
    if profile.any():
        idx = np.flatnonzero(profile)
        centre = (idx[0] + idx[-1] + 1) / 2.0
    else:
        centre = length / 2.0
    start = int(np.clip(round(centre - side / 2.0), 0, length - side))
    x0, y0 = (start, 0) if long_axis == 1 else (0, start)
    total = float(mask.sum())
    inside = float(mask[y0:y0 + side, x0:x0 + side].sum())
    return (x0, y0, side), (0.0 if total == 0 else max(0.0, 1.0 - inside / total))


def centre_box(hw: tuple[int, int]) -> tuple[int, int, int]:
    """The centred square of a photo of size ``hw`` (for place photos, which have no object)."""
    h, w = hw
    side = min(h, w)
    return (w - side) // 2, (h - side) // 2, side


def crop_resize(img: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """uint8 HWC photo -> its square ``box`` at ``size`` x ``size`` (Lanczos: photos are mostly shrunk)."""
    from PIL import Image

    x0, y0, side = box
    im = Image.fromarray(img).crop((x0, y0, x0 + side, y0 + side))
    return np.asarray(im if side == size else im.resize((size, size), Image.LANCZOS))


def crop_resize_mask(mask: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """float32 HW mask in 0..1 -> its square ``box`` at ``size`` x ``size`` (bilinear, stays in 0..1)."""
    from PIL import Image

    x0, y0, side = box
    im = Image.fromarray(np.ascontiguousarray(mask[y0:y0 + side, x0:x0 + side], np.float32), mode="F")
    return np.asarray(im if side == size else im.resize((size, size), Image.BILINEAR), np.float32).clip(0.0, 1.0)


def alpha_of(mask: np.ndarray) -> np.ndarray:
    """The pasting alpha of a soft mask: 0 below :data:`LOW`, 1 above :data:`HIGH`, linear between.

    Machine-made masks keep faint values over the whole background (min-max scaled
    probabilities); pasted as they are, those would carry a veil of the source photo's
    background onto the place. The decisive band of the quality check is the natural cut.
    """
    return np.clip((np.asarray(mask, np.float32) - LOW) / (HIGH - LOW), 0.0, 1.0)


def hole_of(mask: np.ndarray, dilate_px: int) -> np.ndarray:
    """What the habitat fill replaces: any trace of the object (mask above :data:`LOW`), dilated by
    ``dilate_px`` (a square of side 2 px + 1) so that no rim of the object survives. bool HW."""
    import torch

    from dali_abs.inpainter.train import dilate

    hole = torch.from_numpy(np.asarray(mask) > LOW)[None, None]
    return (dilate(hole, dilate_px)[0, 0] > 0.5).numpy()


COARSE = 32  # side of the coarse grids that pairing compares (holes against objects)


def coarse(mask: np.ndarray) -> np.ndarray:
    """Area average of a bool or float HW mask on a :data:`COARSE` x :data:`COARSE` grid (float32 0..1)."""
    from PIL import Image

    im = Image.fromarray(np.asarray(mask, np.float32), mode="F")
    return np.asarray(im.resize((COARSE, COARSE), Image.BOX), np.float32).clip(0.0, 1.0)


def coarse_shrunk(grid: np.ndarray, scale: float) -> np.ndarray:
    """A coarse object grid (:func:`coarse`) cut to its box (grid > 0) and shrunk by ``scale``
    (area average; at least 1 x 1): the object's footprint at that scale, for pairing."""
    from PIL import Image

    ys, xs = np.nonzero(grid > 0)
    if not len(ys):
        return np.zeros((1, 1), np.float32)
    g = np.ascontiguousarray(grid[ys.min():ys.max() + 1, xs.min():xs.max() + 1], np.float32)
    h, w = g.shape
    out = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(g, mode="F").resize(out, Image.BOX), np.float32).clip(0.0, 1.0)


def paste(obj: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``alpha * obj + (1 - alpha) * background``, rounded to uint8 HWC."""
    a = np.asarray(alpha, np.float32)[:, :, None]
    out = a * obj.astype(np.float32) + (1.0 - a) * background.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def pushpull(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The inpainter stage's push-pull fill (:class:`dali_abs.models.inpainter.PushPull`) of one
    uint8 HWC image over a bool HW hole (True = fill) -> uint8 HWC, unchanged outside the hole."""
    import torch

    from dali_abs.models.inpainter import PushPull

    x = torch.from_numpy((img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy())
    m = torch.from_numpy(np.asarray(hole, np.float32)[None, None].copy())
    with torch.no_grad():
        y = PushPull()(x, m).numpy()
    return _merge(img, y, hole)


def _merge(img: np.ndarray, filled: np.ndarray, hole: np.ndarray) -> np.ndarray:
    out = np.clip(filled[0].transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.where(np.asarray(hole)[:, :, None], out, img)


def object_colours(obj: np.ndarray, alpha: np.ndarray, edge_px: int, everywhere: bool = False) -> np.ndarray:
    """The object's own colours along its soft edge, so that pasting carries no rim of its source
    background. The edge: pixels with 0 < alpha < 1 at most ``edge_px`` px from an alpha-0
    pixel. They mix object and source background, so there the colour is extrapolated
    (push-pull) from the object's other pixels (alpha > 0, off the edge). Soft parts deeper
    inside the object (an unsure head, a blurred wing) keep their real colours. uint8 HWC.

    ``everywhere``: the alpha-0 pixels take the extrapolated colours too (the same fill), so
    that resampling the object (:func:`shrink_object`) mixes no source background into it."""
    import torch

    from dali_abs.inpainter.train import dilate

    a = np.asarray(alpha)
    outside = a <= 0.0
    near = (dilate(torch.from_numpy(outside)[None, None], edge_px)[0, 0] > 0.5).numpy()
    edge = near & ~outside & (a < 1.0)
    hole = outside | edge
    if hole.all() or not (edge.any() or (everywhere and outside.any())):
        return obj
    filled = pushpull(obj, hole)
    return filled if everywhere else np.where(edge[:, :, None], filled, obj)


def object_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``, ends exclusive: the bounding box of ``alpha > 0`` (float HW 0..1)."""
    ys, xs = np.nonzero(np.asarray(alpha) > 0.0)
    if not len(ys):
        raise ValueError("object_box: alpha is 0 everywhere (no object)")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


CUT = 0.02  # the object (alpha >= 0.5) on at least this share of a side of its frame: the photo cut it there


def cut_sides(alpha: np.ndarray) -> tuple[int, int]:
    """Where the photo's edge cuts the object: ``(sx, sy)``, each -1 (left / top), +1 (right /
    bottom) or 0. A side is cut where the object proper (alpha >= 0.5, float HW 0..1) runs along
    at least :data:`CUT` of it; of two opposite cut sides, the longer cut counts (ties: -1). A
    shrunk object keeps its cut sides on the frame's edge, so no straight cut shows mid-frame.
    A faint veil of the mask (alpha < 0.5) or a tip touching the edge is no cut: measured on
    cub-birds-300 at 224 px, counting those would put 59 % of the objects into a corner, this
    rule 11 % (50 % stay free to go anywhere)."""
    a = np.asarray(alpha, np.float32) >= 0.5

    def side(first: np.ndarray, last: np.ndarray) -> int:
        f, g = int(first.sum()), int(last.sum())
        need = CUT * len(first)
        return 0 if max(f, g) < need else (-1 if f >= g else 1)

    return side(a[:, 0], a[:, -1]), side(a[0, :], a[-1, :])


def shrink_object(colours: np.ndarray, alpha: np.ndarray, scale: float,
                  stick: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """The object (``alpha > 0``) cut to its box and resized by ``scale`` (0 < scale <= 1), with
    antialiasing: colours (uint8 HWC, Lanczos) and alpha (float32 HW 0..1, bilinear) together,
    from a margin around the box so that the soft edge keeps its fade. On the sides in ``stick``
    (:func:`cut_sides`) the box ends at the frame's edge with no margin: the cut stays a full
    edge there. ``colours`` must be the object's colours at alpha 0 too (:func:`object_colours`
    ``everywhere``). The alpha is rounded to 1/255 steps, so that the mask file (255 = object)
    holds exactly the alpha pasted, and both are cut to the box of what is left above 0. An
    object left with no pixel of alpha 0.5 or more (it vanishes) raises ValueError."""
    from PIL import Image

    if not 0.0 < scale <= 1.0:
        raise ValueError(f"shrink_object: scale must be in (0, 1], got {scale}")
    x0, y0, x1, y1 = object_box(alpha)
    m = int(np.ceil(2.0 / scale)) + 1  # the bilinear kernel reaches 1/scale px; the margin holds its tail
    a = np.pad(np.asarray(alpha, np.float32), m)
    c = np.pad(colours, ((m, m), (m, m), (0, 0)), mode="edge")
    sx, sy = stick  # in the padded frame the box is [x0 + m, x1 + m); a free side takes m more
    left, right = x0 + (m if sx == -1 else 0), x1 + (m if sx == 1 else 2 * m)
    top, bottom = y0 + (m if sy == -1 else 0), y1 + (m if sy == 1 else 2 * m)
    a, c = a[top:bottom, left:right], c[top:bottom, left:right]
    h, w = a.shape
    out = (max(1, round(w * scale)), max(1, round(h * scale)))
    c = np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize(out, Image.LANCZOS))
    a = np.asarray(Image.fromarray(np.ascontiguousarray(a), mode="F").resize(out, Image.BILINEAR), np.float32)
    a = np.round(a.clip(0.0, 1.0) * 255.0) / np.float32(255.0)
    if not (a >= 0.5).any():  # nothing left that reads as the object, only a faint smear
        raise ValueError(f"shrink_object: a {x1 - x0}x{y1 - y0} px object vanishes at scale {scale}")
    bx0, by0, bx1, by1 = object_box(a)
    return np.ascontiguousarray(c[by0:by1, bx0:bx1]), np.ascontiguousarray(a[by0:by1, bx0:bx1])


def random_offset(patch_hw: tuple[int, int], size: int, at: tuple[float, float],
                  stick: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """``(x, y)``: the top-left pixel of an ``h x w`` patch wholly inside a ``size`` frame, taken
    uniformly from the integer positions by the draws ``at`` (two numbers in [0, 1)); along an
    axis whose ``stick`` is -1 / +1 (:func:`cut_sides`) the patch sits on the first / last edge."""
    h, w = patch_hw
    if h > size or w > size:
        raise ValueError(f"random_offset: a {w}x{h} patch does not fit a {size} px frame")

    def pick(u: float, free: int, s: int) -> int:
        return 0 if s == -1 else free if s == 1 else min(int(u * (free + 1)), free)

    return pick(at[0], size - w, stick[0]), pick(at[1], size - h, stick[1])


def place(colours: np.ndarray, alpha: np.ndarray, size: int, xy: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A patch (uint8 hwc colours, float32 hw alpha) put at ``xy`` (its top-left) into a ``size``
    frame: (uint8 HWC colours, 0 where nothing is; float32 HW alpha, 0 outside the patch)."""
    h, w = alpha.shape
    x, y = xy
    if x < 0 or y < 0 or x + w > size or y + h > size:
        raise ValueError(f"place: a {w}x{h} patch at {xy} leaves the {size} px frame")
    c = np.zeros((size, size, 3), np.uint8)
    a = np.zeros((size, size), np.float32)
    c[y:y + h, x:x + w] = colours
    a[y:y + h, x:x + w] = alpha
    return c, a


class HabitatFill:
    """Removes the object from its own photo: the push-pull fill of the inpainter stage
    (:func:`pushpull`), or an inpainter ONNX file of our contract.

    ``fill(img, hole)``: uint8 HWC photo, bool HW hole (True = fill) -> uint8 HWC, unchanged
    outside the hole.
    """

    def __init__(self, inpainter: str | None = None):
        self.inpainter = inpainter
        self.name = "pushpull"
        if inpainter is not None:
            from dali_abs.inpainter.inference import Inpainter

            self._onnx = Inpainter(inpainter, batch_size=1)
            self.name = self._onnx.fill_name

    def fill(self, img: np.ndarray, hole: np.ndarray) -> np.ndarray:
        if self.inpainter is None:
            return pushpull(img, hole)
        x = (img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        return _merge(img, self._onnx.fill(x, np.asarray(hole, np.float32)[None, None]), hole)
