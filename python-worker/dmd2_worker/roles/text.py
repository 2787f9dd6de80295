"""What the roles share for text-to-image teachers (`data.source: prompts`, docs/adapters.md §6): which family the
teacher folder is, loading its UNet behind `UNet2DConditionNet`, the text step tensors, and guidance with the
family's unconditional input.

Step tensors (docs/protocol.md §4), all batch-major so that replicas split them, written by `generator.generate`
and read by every op that needs conditioning (none of those roles loads a text encoder):
- `cond_hidden`   float32 (B, L, D): the text encoders' token embeddings (cross-attention input);
- `cond_pooled`   float32 (B, P): SDXL: the second text encoder's pooled, projected embedding; SD3: both CLIP
                  encoders' pooled outputs concatenated (its `pooled_projections`);
- `cond_time_ids` float32 (B, 6): SDXL only, original (h, w), crop (top, left), target (h, w).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .base import TensorStore
from ..config import Recipe

if TYPE_CHECKING:  # the adapters import diffusers (seconds): only workers with a text-to-image teacher do
    from ..adapters.base import Conditioning

COND_HIDDEN = "cond_hidden"
COND_POOLED = "cond_pooled"
COND_TIME_IDS = "cond_time_ids"
TEXT_FAMILIES = ("sd15", "sdxl", "sd3", "flux", "sana")


def is_text_recipe(recipe: Recipe) -> bool:
    """Text-to-image distillation: the data is prompts (the teacher is then a StableDiffusion(XL)Pipeline folder)."""
    return recipe.data.source == "prompts"


def teacher_family(recipe: Recipe) -> str | None:
    """The adapter family of a diffusers teacher folder ("sd15", "sdxl", "unet2d"); None for the built-in teacher."""
    if recipe.teacher.source != "diffusers" or not recipe.teacher.path:
        return None
    from ..adapters.registry import family_of

    return family_of(recipe.teacher.path)


def check_text_teacher(folder: str | Path, recipe: Recipe) -> str:
    """The teacher folder fits a text recipe: a text-to-image family whose scheduler config is the recipe's
    `diffusion`. Returns the family. A text-to-image folder with other data is refused too (check_family_fits)."""
    from ..adapters.base import read_json_object, read_scheduler_config
    from ..adapters.registry import family_of

    folder = Path(folder)
    family = family_of(folder)
    if family not in TEXT_FAMILIES:
        raise ValueError(f"teacher.path: {folder} is a {family} folder, but data.source prompts needs a "
                         f"StableDiffusionPipeline or StableDiffusionXLPipeline folder")
    from ..adapters.registry import families
    from ..flow_matching import FlowMatchSchedule, is_flow_config

    # a flow-matching schedule: the recipe's DDPM `diffusion` does not describe it (flow_matching.py); the family
    # reads it (Sana's DPM-Solver flow_prediction config too, adapters/sana.py)
    if is_flow_config(read_json_object(folder / "scheduler" / "scheduler_config.json")) or \
            isinstance(families()[family].read_schedule(folder), FlowMatchSchedule):
        return family
    cfg = read_scheduler_config(folder)
    want = dataclasses.asdict(recipe.diffusion)
    have = {k: cfg[k] for k in want}
    if any(have[k] != v and not (isinstance(v, float) and float(have[k]) == v) for k, v in want.items()):
        raise ValueError(f"{folder}: the teacher's diffusion config {have} differs from the recipe's {want}")
    return family


def check_family_fits(recipe: Recipe) -> None:
    """A class-label or unconditional recipe must not name a text-to-image teacher (one line with the fix)."""
    if is_text_recipe(recipe):
        return
    family = teacher_family(recipe)
    if family in TEXT_FAMILIES:
        raise ValueError(f"teacher.path: {recipe.teacher.path} is a text-to-image ({family}) pipeline: set "
                         f"data.source: prompts with data.prompts.file (data.source is {recipe.data.source!r})")


def load_text_unet(folder: str | Path, device: torch.device) -> torch.nn.Module:
    """The folder's denoiser alone (float32, on `device`): its UNet2DConditionModel, or a flow family's
    transformer (the adapter's `load_denoiser`): what the fake score trains."""
    from ..adapters.registry import families, family_of

    return families()[family_of(folder)].load_denoiser(folder, device, torch.float32)


def text_network(folder: str | Path, denoiser: torch.nn.Module, guidance: float | None = None) -> tuple[torch.nn.Module, Any]:
    """The denoiser behind the roles' network interface and the folder's schedule, both by its family's adapter
    (UNet2DConditionNet and NoiseSchedule; SD3TransformerNet and FlowMatchSchedule for a flow family).
    `guidance`: the scale a guidance-embedded transformer (Flux.1-dev) embeds; the others ignore it."""
    from ..adapters.registry import families, family_of

    adapter = families()[family_of(folder)]
    schedule = adapter.read_schedule(folder)
    return adapter.network(denoiser, schedule, folder=folder, guidance=guidance), schedule


# --- step tensors ------------------------------------------------------------------------------------------------

def store_conditioning(store: TensorStore, cond: Conditioning) -> None:
    """`cond` as the text step tensors (float32; the SDXL ones only when set)."""
    store[COND_HIDDEN] = cond.encoder_hidden_states.float().contiguous()
    if cond.text_embeds is not None:
        store[COND_POOLED] = cond.text_embeds.float().contiguous()
    if cond.time_ids is not None:
        store[COND_TIME_IDS] = cond.time_ids.float().contiguous()


def _float_input(store: TensorStore, name: str, where: str, shape: tuple[int | None, ...]) -> torch.Tensor:
    from .common import need

    v = need(store, name, where)
    if v.dtype != torch.float32:
        raise ValueError(f"{where}: {name!r} must be float32, got {str(v.dtype).removeprefix('torch.')}")
    if v.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, v.shape)):
        want = ", ".join("?" if s is None else str(s) for s in shape)
        raise ValueError(f"{where}: {name!r} must have shape ({want}), got {list(v.shape)}")
    return v


def conditioning_input(store: TensorStore, where: str, batch: int, net: Any, device: torch.device) -> Conditioning:
    """The text step tensors for a UNet2DConditionNet `net` (SDXL: all three), checked, as a Conditioning."""
    from ..adapters.base import Conditioning

    hidden = _float_input(store, COND_HIDDEN, where, (batch, None, net.cross_attention_dim))
    pooled = time_ids = None
    if net.pooled_dim is not None:  # SDXL, SD3
        pooled = _float_input(store, COND_POOLED, where, (batch, net.pooled_dim))
    if net.sdxl:
        time_ids = _float_input(store, COND_TIME_IDS, where, (batch, 6))
    return Conditioning(hidden, pooled, time_ids).to(device)


def guided_text_output(net: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning,
                       scale: float) -> torch.Tensor:
    """Classifier-free guidance `out_u + scale (out_c - out_u)` with the family's unconditional input `uncond`
    (one row per sample), one batched forward pass; the conditional output alone when scale == 1."""
    from ..adapters.base import Conditioning

    if scale == 1.0:
        return net(x, t, cond)
    out = net(torch.cat([x, x]), torch.cat([t, t]), Conditioning.cat([cond, uncond.to(x.device)]))
    out_c, out_u = out.chunk(2)
    return out_u + scale * (out_c - out_u)
