"""The last stage: training and scoring a classifier (used by the demo and the benchmarks).

Images enter as float32 NCHW normalised with :data:`MEAN`/:data:`STD` (0..1 RGB minus mean,
over std), the same normalisation the loader applies. Scores are reported per group
(``y * n_places + place``): worst-group accuracy is the minimum over groups present.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from dali_abs.constants import MEAN, STD
from dali_abs.dataset import Dataset, Sample
from dali_abs.files import read_rgb

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def load_images(samples: Sequence[Sample], size: int) -> torch.Tensor:
    """uint8 tensor [N,3,size,size] (bilinear resize of the whole image), RGB 0..255."""
    from PIL import Image

    out = np.empty((len(samples), size, size, 3), np.uint8)
    for i, s in enumerate(samples):
        img = read_rgb(s.path)
        if img.shape[:2] != (size, size):
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        out[i] = img
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW 0..255 -> float32 NCHW normalised with MEAN/STD."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255.0
    return (images_u8.float() - mean) / std


def tensor_batches(images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                   flip: bool = True, shift: float = 0.125) -> Callable[[int], Batches]:
    """Epoch -> shuffled, normalised batches from in-memory tensors, randomly flipped and
    shifted by up to ``shift`` x the image side (reflect padding), the usual pad-and-crop."""
    n, _, h, w = images_u8.shape
    pad = int(round(shift * max(h, w)))

    def epoch_batches(epoch: int) -> Batches:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(labels), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = normalize(images_u8[idx])
            if flip:
                f = torch.rand(len(idx), generator=g) < 0.5
                x[f] = x[f].flip(-1)
            if pad:
                padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
                offs = torch.randint(0, 2 * pad + 1, (len(idx), 2), generator=g).tolist()
                x = torch.stack([padded[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offs)])
            yield x, labels[idx]

    return epoch_batches


def fit(model: nn.Module, batches: Callable[[int], Batches], epochs: int, lr: float = 2e-3,
        weight_decay: float = 5e-4, progress: bool = False) -> list[float]:
    """Train with AdamW and a cosine schedule; returns the mean loss of each epoch."""
    from tqdm import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    losses = []
    for epoch in tqdm(range(epochs), desc="training", unit="epoch", disable=not progress):
        model.train()
        total, n = 0.0, 0
        for x, y in batches(epoch):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
        sched.step()
        losses.append(total / max(n, 1))
    return losses


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class predictions for float32 normalised NCHW images, or uint8 ones (normalised here)."""
    model.eval()
    preds = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        if x.dtype == torch.uint8:
            x = normalize(x)
        preds.append(model(x).argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def group_accuracy(pred: torch.Tensor, labels: torch.Tensor, groups: Sequence[int | None],
                   dataset: Dataset | None = None) -> dict:
    """``{"avg_acc", "worst_group_acc", "per_group": {name: acc}}``; accuracies in 0..1."""
    correct = (pred == labels).numpy()
    out = {"avg_acc": float(correct.mean()), "n": int(len(correct))}
    if groups and groups[0] is not None:
        g = np.asarray(groups)
        per = {}
        for gi in sorted(set(g.tolist())):
            name = dataset.group_name(gi) if dataset is not None else str(gi)
            per[name] = float(correct[g == gi].mean())
        out["per_group"] = per
        out["worst_group_acc"] = min(per.values())
    return out


def evaluate(model: nn.Module, dataset: Dataset, split: str, size: int) -> dict:
    samples = dataset.split(split)
    x = load_images(samples, size)
    y = torch.tensor([s.label for s in samples])
    return group_accuracy(predict(model, x), y, [dataset.group(s) for s in samples], dataset)
