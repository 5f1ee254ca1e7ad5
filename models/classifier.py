"""The small classifier used by the dataset check, the demo and the robustness benchmark.

Input: float32 [B,3,H,W], RGB normalised with ImageNet mean/std (see
:data:`dali_abs.training.MEAN`). Output: [B, num_classes] logits. Any H, W >= 32.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Four stride-2 conv-BN-ReLU stages, global average pooling, a linear head."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))
