"""A diffusers `UNet2DConditionModel` (the text families of the registry whose backbone it is, families.json) behind
the roles' network interface (docs/adapters.md §6): the text-to-image twin of models/unet2d.py's UNet2DNet.

`net(x, t, cond)` is the UNet's raw prediction for latents `x` at timesteps `t`, where `cond` is an
`adapters.Conditioning` (the text embeddings; a pooled embedding and time ids where the family has them). `features(x, t, cond)` is
the output of the UNet's `mid_block`, the discriminator head's input (the forward pass stops there).

The module holds the UNet as `self.unet` and nothing else with weights, so its state dict keys are
`unet.<diffusers UNet2DConditionModel key>`: `generator.safetensors` loads into a pipeline's UNet after stripping
`unet.` (what `dmd2 export` does). Text encoders and the VAE never live here.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..conditioning import Conditioning
from ..families import registry


class _MidBlockReached(Exception):
    """Raised by the mid block's forward hook to stop `features` before the up path."""


class UNet2DConditionNet(nn.Module):
    num_classes = None  # conditioned on text, never on class labels
    null_class = None
    text_conditioned = True  # roles.common.net_cond_input reads the text step tensors for it

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        cfg = unet.config
        if cfg.in_channels != cfg.out_channels:
            raise ValueError(f"in_channels {cfg.in_channels} differs from out_channels {cfg.out_channels}")
        if unet.mid_block is None:
            raise ValueError("mid_block_type is null: the discriminator head reads the mid_block output")
        size = cfg.sample_size
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise ValueError(f"sample_size must be square, got {size!r}")
            size = size[0]
        downsamples = len(cfg.block_out_channels) - 1
        if size % 2**downsamples:
            raise ValueError(f"sample_size {size} is not divisible by 2^{downsamples}")
        self.unet = unet
        self.in_channels = int(cfg.in_channels)
        self.image_size = int(size)  # the latent side
        self.feature_channels = int(cfg.block_out_channels[-1])
        self.feature_size = self.image_size // 2**downsamples
        self.cross_attention_dim = int(cfg.cross_attention_dim)
        # which text family's backbone this is (the registry's backbone class and config_match), hence which step
        # tensors it is conditioned on and their sizes (the dims read from its config; e.g. a pooled embedding as
        # wide as what the added embedding takes beside the time-id embeddings)
        fam = registry().for_backbone(type(unet).__name__, dict(cfg), text=True)
        if fam is None:
            raise ValueError(f"no text family of the registry (families.json) has a {type(unet).__name__} backbone "
                             f"with addition_embed_type {cfg.get('addition_embed_type')!r}")
        self.family = fam.name
        self.step_tensors = fam.step_tensors
        self.dims = {name: d.from_config(cfg) for name, d in fam.dims.items() if d.config is not None}

    def _kwargs(self, cond: Any, batch: int) -> dict[str, Any]:
        if not isinstance(cond, Conditioning):
            raise TypeError(f"a text-to-image UNet needs a Conditioning, got {type(cond).__name__}")
        if cond.batch_size != batch:
            raise ValueError(f"the conditioning has {cond.batch_size} rows, x has {batch}")
        dtype = next(self.unet.parameters()).dtype
        return cond.map(lambda v: v.to(dtype) if v.is_floating_point() else v).unet_kwargs()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        return self.unet(x, t, **self._kwargs(cond, x.shape[0]), return_dict=False)[0]

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """The mid block's output, (B, feature_channels, feature_size, feature_size), with its autograd graph."""
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            captured.append(output)
            raise _MidBlockReached

        kwargs = self._kwargs(cond, x.shape[0])
        handle = self.unet.mid_block.register_forward_hook(stop)
        try:
            self.unet(x, t, **kwargs, return_dict=False)
        except _MidBlockReached:
            pass
        finally:
            handle.remove()
        return captured[0]
