"""A diffusers `UNet2DModel` behind the interface the roles use (the one TinyUNet has; docs/pipeline.md §2).

`net(x, t, cond)` is the UNet's raw prediction (`.sample`); `cond` holds class labels, the null class included.
A class-conditional dmd2 teacher has `num_class_embeds = K + 1` with index K the null class (label dropout,
classifier-free guidance); a foreign class-conditional UNet has `num_class_embeds = K` and no null class; an
unconditional one has no class embedding (`num_classes` None).

`features(x, t, cond)` is the output of the UNet's `mid_block`, the discriminator head's input: the UNet's own
forward pass runs up to the mid block and stops there, so the features are exactly what diffusers computes,
whatever the block types.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DModel
from torch import nn


class _MidBlockReached(Exception):
    """Raised by the mid block's forward hook to stop `features` before the up path."""


def teacher_unet_config(*, image_shape: tuple[int, int, int], block_out_channels: list[int], layers_per_block: int,
                        norm_num_groups: int, num_classes: int | None) -> dict[str, Any]:
    """The `UNet2DModel` config of a teacher that `dmd2 train-teacher` trains (docs/pipeline.md §3): no attention
    (on 8x8 images it costs time without helping), `num_classes + 1` class embeddings (the last is the null class)
    or none for unconditional data."""
    channels, size, _ = image_shape
    levels = len(block_out_channels)
    return {
        "sample_size": size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": layers_per_block,
        "norm_num_groups": norm_num_groups,
        "down_block_types": ["DownBlock2D"] * levels,
        "up_block_types": ["UpBlock2D"] * levels,
        "add_attention": False,
        "num_class_embeds": None if num_classes is None else num_classes + 1,
    }


def _image_size(config: Any) -> int:
    size = config.sample_size
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"sample_size must be one positive integer (square images), got {config.sample_size!r}")
    return size


class UNet2DNet(nn.Module):
    """The adapter; `unet` keeps the diffusers module (its state dict keys are `unet.*`)."""

    def __init__(self, unet: UNet2DModel, num_classes: int | None, null_class: int | None) -> None:
        super().__init__()
        cfg = unet.config
        if cfg.class_embed_type is not None:
            raise ValueError(f"class_embed_type {cfg.class_embed_type!r} is not supported (class labels go through "
                             f"num_class_embeds)")
        if cfg.in_channels != cfg.out_channels:
            raise ValueError(f"in_channels {cfg.in_channels} differs from out_channels {cfg.out_channels}: the "
                             f"prediction must have the image's shape")
        if unet.mid_block is None:
            raise ValueError("mid_block_type is null: the discriminator head reads the mid_block output")
        embeds = cfg.num_class_embeds
        expected = None if num_classes is None else num_classes + (0 if null_class is None else 1)
        if embeds != expected or (null_class is not None and null_class != num_classes):
            raise ValueError(f"num_class_embeds {embeds} does not fit num_classes {num_classes} with null class "
                             f"{null_class} (expected num_class_embeds {expected})")
        size = _image_size(cfg)
        downsamples = len(cfg.block_out_channels) - 1
        if size % 2**downsamples:
            raise ValueError(f"sample_size {size} is not divisible by 2^{downsamples} "
                             f"({len(cfg.block_out_channels)} block_out_channels)")
        self.unet = unet
        self.num_classes = num_classes
        self.null_class = null_class
        self.in_channels = int(cfg.in_channels)
        self.image_size = size
        self.feature_channels = int(cfg.block_out_channels[-1])
        self.feature_size = size // 2**downsamples

    def _class_labels(self, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor | None:
        if self.num_classes is None:
            return None
        if cond is not None:
            return cond
        if self.null_class is None:
            raise ValueError("this UNet has no null class: pass class labels")
        return torch.full_like(t, self.null_class)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, t, self._class_labels(t, cond), return_dict=False)[0]

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The mid block's output, (B, feature_channels, feature_size, feature_size), with its autograd graph."""
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            captured.append(output)
            raise _MidBlockReached

        handle = self.unet.mid_block.register_forward_hook(stop)
        try:
            self.unet(x, t, self._class_labels(t, cond), return_dict=False)
        except _MidBlockReached:
            pass
        finally:
            handle.remove()
        return captured[0]
