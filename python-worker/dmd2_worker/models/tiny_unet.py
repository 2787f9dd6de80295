"""A small class-conditional conv UNet for C x H x W images (H a multiple of 4; built for 1 x 8 x 8).

Built from a JSON-able ``arch_config`` (stored in a teacher's ``config.json``, docs/protocol.md §5) so that the
generator and the fake score can be rebuilt from the teacher's folder.

Layout, for speed on a CPU: the image is first folded 2x2 into channels (pixel_unshuffle), so the UNet runs at
H/2 and, after each of the ``len(channel_mult)`` - 1 downsamplings, at half that: the default ``[1, 2]`` gives
H/2 and H/4 (4x4 and 2x2 for 8x8 images). Each level has one residual block (GroupNorm, SiLU, 3x3 convs, the
timestep + class embedding added in between) on the way down and one on the way up, with additive skips;
``features`` returns the bottleneck map (B, channels * channel_mult[-1], H/4, H/4), the discriminator head's
input. A learned, timestep-gated copy of the input is added to the output (see ``skip_gate``).

Conditioning: sinusoidal timestep embedding -> MLP, plus a class embedding with ``num_classes + 1`` rows: index
``num_classes`` is the null class (label dropout, classifier-free guidance). ``num_classes`` None: unconditional.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

ARCH_NAME = "tiny_unet"
_ARCH_KEYS = {"in_channels", "image_size", "channels", "channel_mult", "num_classes"}


def default_arch_config(*, channels: int, image_size: int, num_classes: int | None, in_channels: int = 1) -> dict[str, Any]:
    return {
        "in_channels": in_channels,
        "image_size": image_size,
        "channels": channels,
        "channel_mult": [1, 2],
        "num_classes": num_classes,
    }


def _groups(ch: int) -> int:
    """GroupNorm groups: at most 8, at least 4 channels per group where possible, dividing ``ch``."""
    for g in (8, 4, 2, 1):
        if ch % g == 0 and ch // g >= 4:
            return g
    return 1


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps ``t`` (B,) -> (B, dim), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(ch), ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, ch)
        self.norm2 = nn.GroupNorm(_groups(ch), ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class TinyUNet(nn.Module):
    def __init__(self, arch_config: dict[str, Any]) -> None:
        super().__init__()
        unknown = set(arch_config) - _ARCH_KEYS
        missing = _ARCH_KEYS - set(arch_config)
        if unknown or missing:
            raise ValueError(f"tiny_unet arch_config: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        self.arch_config = dict(arch_config)
        self.gradient_checkpointing = False  # placement.enable_gradient_checkpointing: recompute blocks in backward
        self.in_channels = int(arch_config["in_channels"])
        self.image_size = int(arch_config["image_size"])
        self.num_classes = arch_config["num_classes"]
        c = int(arch_config["channels"])
        mult = [int(m) for m in arch_config["channel_mult"]]
        levels = len(mult)
        if levels < 1 or self.image_size % (2**levels):
            raise ValueError(f"tiny_unet: image_size {self.image_size} is not divisible by 2^{levels} "
                             f"(channel_mult has {levels} levels)")
        chs = [c * m for m in mult]
        emb_dim = 4 * c
        self.base_channels = c
        self.feature_channels = chs[-1]
        self.feature_size = self.image_size // 2**levels

        self.time_mlp = nn.Sequential(nn.Linear(c, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes is not None else None
        self.conv_in = nn.Conv2d(4 * self.in_channels, chs[0], 3, padding=1)
        self.down_res = nn.ModuleList([ResBlock(chs[i], emb_dim) for i in range(levels - 1)])
        self.down = nn.ModuleList([nn.Conv2d(chs[i], chs[i + 1], 3, stride=2, padding=1) for i in range(levels - 1)])
        self.mid = ResBlock(chs[-1], emb_dim)
        self.up = nn.ModuleList([nn.ConvTranspose2d(chs[i + 1], chs[i], 2, stride=2) for i in range(levels - 1)])
        self.up_res = nn.ModuleList([ResBlock(chs[i], emb_dim) for i in range(levels - 1)])
        self.norm_out = nn.GroupNorm(_groups(chs[0]), chs[0])
        self.conv_out = nn.Conv2d(chs[0], 4 * self.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # A learned, timestep-dependent input skip `out += gate(emb) * x`: near t = T-1 an epsilon (or v) target is
        # almost x_t itself, and x0 = (x_t - sqrt(1-a) out) / sqrt(a) amplifies any error in copying it ~15x.
        self.skip_gate = nn.Linear(emb_dim, self.in_channels)
        nn.init.zeros_(self.skip_gate.weight)
        nn.init.zeros_(self.skip_gate.bias)

    @property
    def null_class(self) -> int | None:
        return self.num_classes

    def _embed(self, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is not None:
            if cond is None:
                cond = torch.full_like(t, self.num_classes)
            emb = emb + self.class_emb(cond)
        return emb

    def _block(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def _encode(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None):
        emb = self._embed(t, cond)
        h = self.conv_in(F.pixel_unshuffle(x, 2))
        skips = []
        for res, down in zip(self.down_res, self.down):
            h = self._block(res, h, emb)
            skips.append(h)
            h = down(h)
        h = self._block(self.mid, h, emb)
        return h, skips, emb

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The bottleneck feature map, (B, feature_channels, feature_size, feature_size)."""
        return self._encode(x, t, cond)[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h, skips, emb = self._encode(x, t, cond)
        for i in reversed(range(len(self.up))):
            h = self.up[i](h) + skips[i]
            h = self._block(self.up_res[i], h, emb)
        out = F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), 2)
        return out + self.skip_gate(emb)[:, :, None, None] * x
