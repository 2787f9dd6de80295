"""Multi-step Euler over a flow-matching teacher adapter (adapters/sd3.py), with classifier-free guidance: the
teacher's sampler, which reproduces `StableDiffusion3Pipeline` with its `FlowMatchEulerDiscreteScheduler`
(docs/method.md "Teacher sampling"; tests/test_sd3.py compares the latents):
- sigmas and model timesteps: the family pipeline's own inference grid from its FlowMatchEulerDiscreteScheduler
  (`adapter.euler_sigmas(steps)`), ending at sigma = 0;
- each step `x <- x + (sigma_{i+1} - sigma_i) v` in float32, v guided `v_u + s (v_c - v_u)` when s > 1, the
  unconditional rows first in one batched call, as the pipeline does;
- the initial noise is drawn on the CPU (`adapters.sampling.initial_noise`), what the pipeline draws with a CPU
  generator. The result is the final latents (`output_type="latent"`), or images through the VAE with `decode`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from .adapters.base import Conditioning
from .adapters.sampling import initial_noise

StepCallback = Callable[[int, float, torch.Tensor, torch.Tensor], None]  # (i, sigma, x, v)


def euler_sigmas(adapter: Any, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(model timesteps (steps,), sigmas (steps + 1,), the last 0) of the family pipeline's `steps`-step Euler
    (the adapter's `euler_sigmas`: SD3 `set_timesteps(steps)`, Flux the linspace(1, 1/N, N) sigmas with mu)."""
    if steps < 1:
        raise ValueError(f"Euler steps must be >= 1, got {steps}")
    return adapter.euler_sigmas(steps)


def guided_velocity(adapter: Any, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                    uncond: Conditioning | None, scale: float) -> torch.Tensor:
    """The family's guidance at a model timestep: for `guidance_kind` "cfg" `v_u + scale (v_c - v_u)` (one batched
    call, unconditional rows first; the conditional velocity alone without `uncond`); for "embedded" (Flux.1-dev,
    guidance-distilled) one conditional call with `scale` as the embedded guidance; for "none" (schnell) a plain
    conditional call."""
    kind = getattr(adapter, "guidance_kind", "cfg")
    if kind == "embedded":
        return adapter.predict_at(x, timestep, cond, guidance=scale)
    if uncond is None or kind == "none":
        return adapter.predict_at(x, timestep, cond)
    v = adapter.predict_at(torch.cat([x, x]), torch.cat([timestep, timestep]), Conditioning.cat([uncond, cond]))
    v_u, v_c = v.chunk(2)
    return v_u + scale * (v_c - v_u)


@torch.no_grad()
def flow_euler_sample(adapter: Any, prompts: Sequence[str] | None = None, *, steps: int,
                      guidance_scale: float = 1.0, seed: int | None = 0, generator: torch.Generator | None = None,
                      latents: torch.Tensor | None = None, cond: Conditioning | None = None,
                      uncond: Conditioning | None = None, decode: bool = False,
                      callback: StepCallback | None = None) -> torch.Tensor:
    """`steps`-step Euler from noise (or `latents`): float32 latents (B, C, H, W), or images through the VAE.
    Guidance is applied when `guidance_scale > 1` (`uncond` defaults to the family's `uncond(B)`)."""
    if cond is None:
        if prompts is None:
            raise ValueError("flow_euler_sample needs prompts or cond")
        cond = adapter.encode_prompts(prompts)
    batch = cond.batch_size
    use_cfg = guidance_scale > 1.0 and getattr(adapter, "guidance_kind", "cfg") == "cfg"
    if use_cfg and uncond is None:
        uncond = adapter.uncond(batch)
    x = initial_noise(adapter, batch, seed, generator) if latents is None else latents.to(adapter.device).float()
    if x.shape[0] != batch:
        raise ValueError(f"{x.shape[0]} latents for {batch} conditioning rows")
    timesteps, sigmas = euler_sigmas(adapter, steps)
    for i in range(len(timesteps)):
        timestep = timesteps[i].expand(batch).to(x.device)
        v = guided_velocity(adapter, x, timestep, cond, uncond if use_cfg else None, guidance_scale).float()
        if callback is not None:
            callback(i, float(sigmas[i]), x, v)
        x = x + (sigmas[i + 1] - sigmas[i]).to(x.device) * v
    return adapter.vae_decode(x) if decode else x
