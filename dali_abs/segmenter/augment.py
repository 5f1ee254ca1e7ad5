"""Segmenter training augmentation, kornia style: :func:`generate_params` draws each sample's
transform as data, :func:`apply_params` applies it deterministically (the same dict replays the
same transform), so the from-scratch loop and the cached feature views of a pretrained backbone
(:mod:`dali_abs.segmenter.features`) share one definition.

Images are float [N,3,S,S] RGB 0..1; label grids float [N,1,R,R], 1 = foreground; shifts are in
whole patches, so the grid moves with the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths. Shifts are in whole patches; jitter factors are drawn in [1-a, 1+a]."""

    hflip: float = 0.5
    vflip: float = 0.0
    max_shift: int = 2
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05  # fraction of a full turn
    grayscale: float = 0.2


def generate_params(n: int, gen: torch.Generator, cfg: AugmentConfig) -> dict[str, torch.Tensor]:
    """Per-sample transform parameters for a batch of ``n`` (replayable with :func:`apply_params`)."""

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    return {
        "hflip": torch.rand(n, generator=gen) < cfg.hflip,
        "vflip": torch.rand(n, generator=gen) < cfg.vflip,
        "shift": torch.randint(-cfg.max_shift, cfg.max_shift + 1, (n, 2), generator=gen),
        "brightness": u(1 - cfg.brightness, 1 + cfg.brightness),
        "contrast": u(1 - cfg.contrast, 1 + cfg.contrast),
        "saturation": u(1 - cfg.saturation, 1 + cfg.saturation),
        "hue": u(-cfg.hue, cfg.hue),
        "grayscale": torch.rand(n, generator=gen) < cfg.grayscale,
    }


_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) plane.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB = torch.linalg.inv(_YIQ)


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move a CHW tensor by (dy, dx) pixels; the uncovered border is 0."""
    if dy == 0 and dx == 0:
        return t
    out = torch.zeros_like(t)
    h, w = t.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = t[..., ys, xs]
    return out


def apply_params(x: torch.Tensor, y: torch.Tensor, params: Mapping[str, torch.Tensor],
                 patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``params`` to images ``x`` (float [N,3,S,S], RGB 0..1) and label grids ``y``
    (float [N,1,R,R], 1 = foreground). Geometric ops move both; colour ops touch only ``x``."""
    x, y = x.clone(), y.clone()
    hf, vf = params["hflip"], params["vflip"]
    x[hf], y[hf] = x[hf].flip(-1), y[hf].flip(-1)
    x[vf], y[vf] = x[vf].flip(-2), y[vf].flip(-2)
    for i, (dy, dx) in enumerate(params["shift"].tolist()):
        if dy or dx:
            x[i] = _shift(x[i], dy * patch, dx * patch)
            y[i] = _shift(y[i], dy, dx)
    n = x.shape[0]
    x = x * params["brightness"].view(n, 1, 1, 1)
    gray = (x * _LUMA).sum(1, keepdim=True)
    m = gray.mean(dim=(2, 3), keepdim=True)
    x = (x - m) * params["contrast"].view(n, 1, 1, 1) + m
    gray = (x * _LUMA).sum(1, keepdim=True)
    x = gray + (x - gray) * params["saturation"].view(n, 1, 1, 1)
    theta = params["hue"] * 2 * math.pi
    c, s = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    mat = _RGB.unsqueeze(0) @ rot @ _YIQ.unsqueeze(0)  # [n,3,3]
    x = torch.einsum("nij,njhw->nihw", mat, x)
    g = params["grayscale"]
    if g.any():
        x[g] = (x[g] * _LUMA).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    return x.clamp_(0.0, 1.0), y
