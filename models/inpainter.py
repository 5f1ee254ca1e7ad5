"""Inpainters ("fills"): an image and a hole mask in, the image with the hole filled out.

The contract (the same in torch, in every ONNX file dali-abs writes, and checked by
:class:`dali_abs.inpainter.inference.Inpainter` on load):

- **Inputs**: ``image`` float32 NCHW ``[B, 3, H, W]``, RGB, values in **0..1**;
  ``mask`` float32 ``[B, 1, H, W]``, **1 = fill** (the hole), 0 = keep. Values between 0
  and 1 blend linearly.
- **Output**: ``filled`` float32 ``[B, 3, H, W]`` in 0..1. The graph composites
  ``image * (1 - mask) + fill * mask``, so pixels where mask = 0 come out **unchanged**.
- B, H and W are dynamic (any size from 1 x 1 up).
- **Mask all ones** (no context at all): every fill here returns mid-gray **0.5** in each
  channel (push-pull and mean colour by construction; the learned fill checks for it
  explicitly). Never NaN. Wrapped foreign models return whatever they return.

Three fills:

- :class:`PushPull` (the default, no parameters): a mask-weighted image pyramid. Going
  down, each level is a 2x average pool of the premultiplied colour ``image * w`` and of
  the weight ``w = 1 - mask`` (ceil(H/2) x ceil(W/2): an odd last row or column is averaged
  over the pixels it has, so any H, W works; :func:`half`); going up, each level
  keeps its own colour ``sum(image*w) / sum(w)`` where it has weight and takes the
  bilinearly upsampled coarser level where it has none, blending by ``min(1, k * w)``.
  :data:`LEVELS` levels reach 1 x 1 for sides up to 4096 px.
- :class:`MeanFill`: the mean colour of the unmasked pixels (a baseline of the paper's
  ablation, kept as an ONNX model so it is scored and timed like the others).
- :class:`ResidualUNet` (the learned fill): a small U-Net that sees the masked image, the
  mask and the push-pull fill and predicts a residual added to the push-pull fill.
  Trained by :mod:`dali_abs.inpainter.train`.

:func:`export_onnx` writes any of them with the contract's input/output names, dynamic
axes and the metadata below (``dali_abs.*`` keys).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from dali_abs.models.inpainter_contract import (CONTRACT, EMPTY_FILL, IMAGE_NAME, KIND,  # noqa: F401 (re-exported)
                                                LAYOUT, MASK_NAME, MASK_POLARITY, META_REQUIRED, OPSET, OUTPUT_NAME,
                                                RANGE, onnx_metadata)

LEVELS = 12  # push-pull levels: 2**12 = 4096 px sides still reach 1 x 1


def _composite(image: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``image`` where mask = 0, ``fill`` where mask = 1 (linear in between)."""
    return image * (1.0 - mask) + fill * mask


def half(x: torch.Tensor) -> torch.Tensor:
    """2x average pool to ceil(H/2) x ceil(W/2), each window averaged over the pixels inside the
    image: ``F.avg_pool2d(x, 2, ceil_mode=True)``, written without ``ceil_mode``. onnxruntime
    before 1.27 (the CUDA 12 builds) divides the ONNX AveragePool's ceil-mode edge windows by the
    full kernel, which would halve the weight at an odd border; zero padding, a floor-mode pool
    and the pooled in-image fraction mean the same everywhere (and divide by powers of two only,
    so the values are those of the ceil-mode pool exactly)."""
    total = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2)
    inside = F.avg_pool2d(F.pad(torch.ones_like(x[:, :1]), (0, 1, 0, 1)), 2)
    return total / inside


class PushPull(nn.Module):
    """Parameter-free push-pull pyramid fill. ``forward(image, mask)`` -> filled image (see module doc).

    ``sharpness`` k: a level keeps its own colour with weight ``min(1, k * w)``, where w is
    the fraction of known pixels under it; higher k trusts sparse coarse evidence more.
    """

    def __init__(self, levels: int = LEVELS, sharpness: float = 4.0):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        self.levels = int(levels)
        self.sharpness = float(sharpness)

    def fill(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pyramid fill everywhere (before compositing): float [B,3,H,W]."""
        w = 1.0 - mask
        pyr = [(image * w, w)]
        for _ in range(self.levels):
            p, q = pyr[-1]
            pyr.append((half(p), half(q)))
        p, q = pyr[-1]
        out = torch.where(q > 0, p / q.clamp_min(1e-8), torch.full_like(p, EMPTY_FILL))
        for p, q in reversed(pyr[:-1]):
            up = F.interpolate(out, size=p.shape[-2:], mode="bilinear", align_corners=False)
            a = (q * self.sharpness).clamp(0.0, 1.0)
            out = a * (p / q.clamp_min(1e-8)) + (1.0 - a) * up
        return out

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _composite(image, mask, self.fill(image, mask).clamp(0.0, 1.0))


class MeanFill(nn.Module):
    """Fill the hole with the image's mean colour over the unmasked pixels (0.5 when none)."""

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = 1.0 - mask
        s = (image * w).sum(dim=(2, 3), keepdim=True)
        n = w.sum(dim=(2, 3), keepdim=True)
        mean = torch.where(n > 0, s / n.clamp_min(1e-8), torch.full_like(s, EMPTY_FILL))
        return _composite(image, mask, mean.expand_as(image))


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation),
                         nn.LeakyReLU(0.1, inplace=True))


class ResidualUNet(nn.Module):
    """Learned fill: U-Net over [masked image, mask, push-pull fill] -> residual on the push-pull fill.

    Four scales (strides 1, 2, 4, 8) with a dilated bottleneck (receptive field ~150 px at
    full resolution), skip connections, bilinear upsampling to the skip's exact size (so
    any H, W works, also in ONNX). ``width`` sets the channels of the first scale
    (then 2x, 4x, 6x: most of the cost is at full resolution, so it stays narrow). The residual starts small: an untrained network is close to the
    push-pull fill.
    """

    def __init__(self, width: int = 8, levels: int = LEVELS):
        super().__init__()
        c1, c2, c3, c4 = width, width * 2, width * 4, width * 6
        self.width = width
        self.pushpull = PushPull(levels)
        self.e1 = _block(7, c1)
        self.e2 = nn.Sequential(_block(c1, c2, 2), _block(c2, c2))
        self.e3 = nn.Sequential(_block(c2, c3, 2), _block(c3, c3))
        self.e4 = nn.Sequential(_block(c3, c4, 2), _block(c4, c4, dilation=2), _block(c4, c4, dilation=4),
                                _block(c4, c4, dilation=8))
        self.d3 = _block(c4 + c3, c3)
        self.d2 = _block(c3 + c2, c2)
        self.d1 = _block(c2 + c1, c1)
        self.head = nn.Conv2d(c1, 3, 3, padding=1)
        with torch.no_grad():  # start close to the push-pull fill
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def raw(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The fill everywhere (push-pull + residual, clamped to 0..1), before compositing."""
        base = self.pushpull.fill(image, mask).clamp(0.0, 1.0)
        x = torch.cat([image * (1.0 - mask) - 0.5 * mask, mask, base - 0.5], dim=1)
        f1 = self.e1(x)
        f2 = self.e2(f1)
        f3 = self.e3(f2)
        f4 = self.e4(f3)
        y = self.d3(torch.cat([self._up(f4, f3), f3], 1))
        y = self.d2(torch.cat([self._up(y, f2), f2], 1))
        y = self.d1(torch.cat([self._up(y, f1), f1], 1))
        return (base + self.head(y)).clamp(0.0, 1.0)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        fill = self.raw(image, mask)
        # no context at all (mask all ones): the documented 0.5 gray, like the other fills
        context = (1.0 - mask).sum(dim=(1, 2, 3), keepdim=True) > 0
        fill = torch.where(context, fill, torch.full_like(fill, EMPTY_FILL))
        return _composite(image, mask, fill)


def export_bytes(model: nn.Module, fill: str, extra_metadata: dict | None = None, sample_size: int = 40) -> bytes:
    """The ONNX file (bytes) of ``model`` under the contract; dynamic B, H, W; metadata set."""
    import onnx

    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    x = torch.rand(2, 3, sample_size, sample_size + 8)
    m = (torch.rand(2, 1, sample_size, sample_size + 8) > 0.5).float()
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices
            torch.onnx.export(model, (x, m), buf, dynamo=False, opset_version=OPSET,
                              input_names=[IMAGE_NAME, MASK_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={IMAGE_NAME: axes, MASK_NAME: axes, OUTPUT_NAME: axes})
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, onnx_metadata(fill, extra_metadata))
    proto.doc_string = ("dali-abs inpainter (" + fill + "): image float32 [B,3,H,W] RGB 0..1, mask float32 "
                        "[B,1,H,W] 1=fill -> filled float32 [B,3,H,W] 0..1, unchanged where mask = 0")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: nn.Module, path: str | os.PathLike, fill: str, extra_metadata: dict | None = None) -> Path:
    """Write :func:`export_bytes` to ``path`` atomically; returns the path."""
    from dali_abs.files import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, export_bytes(model, fill, extra_metadata))
    return path


def build(kind: str) -> nn.Module:
    """The parameter-free fills by name: ``pushpull`` or ``mean``."""
    if kind == "pushpull":
        return PushPull()
    if kind == "mean":
        return MeanFill()
    raise ValueError(f"unknown fill {kind!r}; expected pushpull or mean")
