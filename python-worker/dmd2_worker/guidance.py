"""Classifier-free guidance, once for every teacher (Ho & Salimans 2022; DMD2 Sec. 3 uses it for the real score):

    out = out_u + s (out_c - out_u)

on the network's raw output (epsilon, v or x0: each is affine in the others at a fixed (x_t, t), so guiding any of
them gives the same x0). Both halves go through one batched call, the conditional rows first. `cond` and `uncond`
are whatever the network takes: class labels (a tensor, the null class for `uncond`) or an `adapters.Conditioning`
(anything with a `cat` classmethod). No torch module of a family is named here.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

NetFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _cat(cond: Any, uncond: Any) -> Any:
    if isinstance(cond, torch.Tensor):
        return torch.cat([cond, uncond])
    return type(cond).cat([cond, uncond])


def guided(net: NetFn, x: torch.Tensor, t: torch.Tensor, cond: Any, uncond: Any, scale: float) -> torch.Tensor:
    """`out_u + scale (out_c - out_u)` with one call `net(cat[x, x], cat[t, t], cat[cond, uncond])`; the conditional
    output `net(x, t, cond)` alone when `scale == 1` or there is no `uncond` (or no `cond`: unconditional)."""
    if cond is None or uncond is None or scale == 1.0:
        return net(x, t, cond)
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale must be finite, got {scale}")
    out = net(torch.cat([x, x]), torch.cat([t, t]), _cat(cond, uncond.to(x.device)))
    out_c, out_u = out.chunk(2)
    return out_u + scale * (out_c - out_u)
