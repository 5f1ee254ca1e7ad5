"""Pixel operations of the build: square crops, resizing, the habitat fill, pasting.

Conventions: photos are uint8 HWC RGB 0..255; masks and alphas float32 HW in 0..1 with
1 = object; holes bool HW with True = to be filled. A box ``(x0, y0, side)`` is a square in the
photo's pixels. Every function is deterministic.
"""

from __future__ import annotations

import contextlib

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


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run torch on ``n`` threads inside the block. The fill and dilation are small ops on one
    image; on a busy machine torch's default pool spins against other jobs (measured on 2 shared
    cores: 390 ms per 224 px push-pull fill with 2 threads, 9 ms with 1)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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


def object_colours(obj: np.ndarray, alpha: np.ndarray, edge_px: int) -> np.ndarray:
    """The object's own colours along its soft edge, so that pasting carries no rim of its source
    background. The edge: pixels with 0 < alpha < 1 at most ``edge_px`` px from an alpha-0
    pixel. They mix object and source background, so there the colour is extrapolated
    (push-pull) from the object's other pixels (alpha > 0, off the edge). Soft parts deeper
    inside the object (an unsure head, a blurred wing) keep their real colours. uint8 HWC."""
    import torch

    from dali_abs.inpainter.train import dilate

    a = np.asarray(alpha)
    outside = a <= 0.0
    near = (dilate(torch.from_numpy(outside)[None, None], edge_px)[0, 0] > 0.5).numpy()
    edge = near & ~outside & (a < 1.0)
    if not edge.any() or (outside | edge).all():
        return obj
    return np.where(edge[:, :, None], pushpull(obj, outside | edge), obj)


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
