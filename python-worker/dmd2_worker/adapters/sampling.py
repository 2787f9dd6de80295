"""Multi-step DDIM (eta 0) over a teacher adapter, with classifier-free guidance (docs/adapters.md): the package's
one DDIM loop (sampling.ddim_loop) on the timesteps diffusers' DDIMScheduler takes.

It reproduces what `StableDiffusionPipeline` / `StableDiffusionXLPipeline` do with a `DDIMScheduler` built from
the folder's scheduler config (a test checks the latents against theirs):
- timesteps: `DDIMScheduler.from_config(scheduler_config).set_timesteps(steps)` (the config's
  `timestep_spacing` and `steps_offset`; DDIM's defaults for keys the config leaves out);
- each step goes from t to `t - num_train_timesteps // steps`, and below 0 to alpha_bar = 1 when the config's
  `set_alpha_to_one` (DDIM's default: true) else alpha_bar[0] (diffusers' DDIM rule, whatever the spacing);
- x0 is never clipped: `clip_sample` and `thresholding` are switched off (latents are not in [-1, 1]; DDIM's
  default `clip_sample` is true, so a folder whose config lacks the key, e.g. SDXL's Euler config, needs
  `clip_sample=False` to match in diffusers too);
- the initial noise is `torch.randn((B, C, H, W), generator=torch.Generator().manual_seed(seed))` on the CPU,
  moved to the adapter's device (what the pipelines draw with a CPU generator).
The result is the last step's `x_{t_prev}` (not x0), as the pipelines' `output_type="latent"`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers import DDIMScheduler

from ..sampling import ddim_loop
from .base import Conditioning, TeacherAdapter, guided

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (i, t, x_t, x0)


def ddim_schedule(adapter: TeacherAdapter, steps: int) -> tuple[list[int], list[int], float]:
    """(timesteps, previous timesteps (negative: the final step), final alpha_bar) of `steps`-step DDIM."""
    T = adapter.num_train_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"DDIM steps must be in 1..{T}, got {steps}")
    sched = DDIMScheduler.from_config(adapter.scheduler_config, clip_sample=False, thresholding=False)
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    prev = [t - T // steps for t in ts]
    final = 1.0 if sched.config.set_alpha_to_one else float(adapter.schedule.alpha_bar[0])
    return ts, prev, final


def initial_noise(adapter: TeacherAdapter, batch: int, seed: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, C, H, W) float32 standard normal noise drawn on the CPU, on the adapter's device."""
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return torch.randn((batch, *adapter.latent_shape), generator=generator, dtype=torch.float32).to(adapter.device)


@torch.no_grad()
def ddim_sample(adapter: TeacherAdapter, prompts: Sequence[str] | None = None, *, steps: int,
                guidance_scale: float = 1.0, seed: int | None = 0, generator: torch.Generator | None = None,
                latents: torch.Tensor | None = None, cond: Conditioning | None = None,
                uncond: Conditioning | None = None, decode: bool = False,
                callback: StepCallback | None = None) -> torch.Tensor:
    """`steps`-step DDIM from noise (or `latents`): float32 latents (B, C, H, W), or images in about [-1, 1]
    through the VAE when `decode`.

    Give `prompts` (encoded with `encode_prompts`) or a ready `cond`. Guidance `uncond + s (cond - uncond)` is
    applied when `guidance_scale > 1` (as the pipelines do; `uncond` defaults to the family's `uncond(B)`).
    """
    if cond is None:
        if prompts is None:
            raise ValueError("ddim_sample needs prompts or cond")
        cond = adapter.encode_prompts(prompts)
    batch = cond.batch_size
    use_cfg = guidance_scale > 1.0
    if use_cfg and uncond is None:
        uncond = adapter.uncond(batch)
    x = initial_noise(adapter, batch, seed, generator) if latents is None else latents.to(adapter.device).float()
    if x.shape[0] != batch:
        raise ValueError(f"{x.shape[0]} latents for {batch} conditioning rows")
    ts, prev, final = ddim_schedule(adapter, steps)
    x, _ = ddim_loop(lambda x, t: guided(adapter, x, t, cond, uncond if use_cfg else None, guidance_scale), x,
                     adapter.schedule, ts, prev, final, None, callback)
    return adapter.vae_decode(x) if decode else x
