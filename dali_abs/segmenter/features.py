"""Frozen-backbone training: the backbone's feature maps of augmented views, computed once.

With a frozen pretrained backbone (the default recipe for ``--backbone``; ``--finetune``
trains it too) every training step would otherwise run the whole backbone again for a
head that is a few percent of its cost. Instead each training image is augmented
``views`` times (view 0 as it is, the others with
:func:`~dali_abs.segmenter.augment.generate_params`: flips, shifts by whole patches, colour
jitter, grayscale; the label grid moves with the image), the backbone's maps of every view
are computed once and kept in RAM as float16 (170 kB per view for Lite0 at 224 px),
and the head trains on them for many epochs in seconds.

The maps are computed by onnxruntime from an in-memory ONNX export of the backbone (the
same graph the exported segmenter runs, several times faster than eager torch on a CPU;
the CUDA provider where onnxruntime can use one).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dali_abs.segmenter.augment import AugmentConfig, apply_params, generate_params

BATCH = 32


class _Maps(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.backbone_maps(x)


class BackboneRunner:
    """onnxruntime session of ``model.backbone_maps``: float32 [B,3,S,S] RGB 0..1 -> tuple of
    float32 maps [B,C_i,h_i,w_i] (numpy)."""

    def __init__(self, model: nn.Module, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        from dali_abs.runtime import providers

        size = model.input_size
        n = len(model.channels)
        names = [f"map{i}" for i in range(n)]
        was_training = model.training
        model.eval()
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(_Maps(model), (torch.rand(2, 3, size, size),), buf, dynamo=False, opset_version=17,
                                  input_names=["image"], output_names=names,
                                  dynamic_axes={"image": {0: "batch"}, **{k: {0: "batch"} for k in names}})
        finally:
            model.train(was_training)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(buf.getvalue(), sess_options=opts, providers=providers(device))
        self.names = names

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.names, {"image": np.ascontiguousarray(x, dtype=np.float32)})


@dataclass
class FeatureCache:
    """Maps of ``views`` augmented views of ``n`` images: ``maps[i]`` float16 [V, n, C_i, h_i, w_i],
    ``labels`` float32 [V, n, 1, R, R] (1 = foreground)."""

    maps: list[torch.Tensor]
    labels: torch.Tensor

    @property
    def views(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor, view: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Float32 maps and labels of images ``idx``, each in its view ``view`` (same length)."""
        return tuple(m[view, idx].float() for m in self.maps), self.labels[view, idx]

    @property
    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.maps) + self.labels.numel() * 4


def compute_maps(runner: BackboneRunner, x: torch.Tensor) -> list[torch.Tensor]:
    """Float16 maps of float32 images ``x`` [N,3,S,S] RGB 0..1, in batches."""
    parts: list[list[np.ndarray]] = []
    for i in range(0, len(x), BATCH):
        parts.append([m.astype(np.float16) for m in runner(x[i:i + BATCH].numpy())])
    return [torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in range(len(parts[0]))]


def build_cache(runner: BackboneRunner, x_u8: torch.Tensor, y: torch.Tensor, views: int, gen: torch.Generator,
                augment: AugmentConfig, patch: int, progress: bool = True) -> FeatureCache:
    """Maps of ``views`` views of uint8 images ``x_u8`` [N,3,S,S] with label grids ``y`` [N,1,R,R]."""
    from tqdm import tqdm

    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    n = len(x_u8)
    per_view: list[list[torch.Tensor]] = []
    labels = []
    bar = tqdm(total=views * n, desc="backbone features", unit="img", disable=not progress)
    for v in range(views):
        maps_v: list[list[torch.Tensor]] = []
        ys = []
        for i in range(0, n, BATCH):
            xb, yb = x_u8[i:i + BATCH].float() / 255.0, y[i:i + BATCH]
            if v > 0:
                xb, yb = apply_params(xb, yb, generate_params(len(xb), gen, augment), patch)
            maps_v.append(compute_maps(runner, xb))
            ys.append(yb)
            bar.update(len(xb))
        per_view.append([torch.cat([b[k] for b in maps_v]) for k in range(len(maps_v[0]))])
        labels.append(torch.cat(ys))
    bar.close()
    maps = [torch.stack([pv[k] for pv in per_view]) for k in range(len(per_view[0]))]
    return FeatureCache(maps, torch.stack(labels))
