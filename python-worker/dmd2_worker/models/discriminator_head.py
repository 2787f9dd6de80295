"""The DMD2 discriminator head (Sec. 4.3): on the fake score's bottleneck features, conv 4x4 stride 2 pad 1 +
GroupNorm + SiLU blocks until the map is 1x1, then a 1x1 conv to one logit per sample."""
from __future__ import annotations

import torch
from torch import nn

from .tiny_unet import _groups


def _conv_out_size(size: int) -> int:
    return (size + 2 * 1 - 4) // 2 + 1


class DiscriminatorHead(nn.Module):
    def __init__(self, in_channels: int, in_size: int) -> None:
        super().__init__()
        if in_size < 1:
            raise ValueError(f"discriminator head: feature map size must be >= 1, got {in_size}")
        self.in_channels = in_channels
        self.in_size = in_size
        blocks: list[nn.Module] = []
        size = in_size
        while size > 1:
            blocks += [
                nn.Conv2d(in_channels, in_channels, kernel_size=4, stride=2, padding=1),
                nn.GroupNorm(_groups(in_channels), in_channels),
                nn.SiLU(),
            ]
            size = _conv_out_size(size)
        self.blocks = nn.Sequential(*blocks)
        self.to_logit = nn.Conv2d(in_channels, 1, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, s, s) features -> (B,) logits."""
        h = self.blocks(features)
        return self.to_logit(h).reshape(features.shape[0])
