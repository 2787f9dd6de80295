"""Samplers: the few-step generator loop, its backward simulation (docs/method.md, Sec. 4.5) and DDIM for the
teacher. All are pure functions without gradient (`backward_simulation(grad=True)` keeps its graph for
generator.backprop_through_chain) that take their random source as an argument.

`G(x, t, cond) -> x0` is a callable returning an x0 estimate (float32) for timestep tensor `t` (int64, (B,)).
Noise is drawn on the CPU from `generator` (a `torch.Generator`) and moved to `z`'s device.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .diffusion import NoiseSchedule
from .guidance import guided

X0Fn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def _t(value: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), int(value), dtype=torch.long, device=like.device)


NoiseFn = Callable[[torch.Tensor], torch.Tensor]


def _renoise(x0: torch.Tensor, t_next: int, schedule: NoiseSchedule, generator: torch.Generator | None,
             noise_fn: NoiseFn | None = None) -> torch.Tensor:
    if noise_fn is not None:
        noise = noise_fn(x0)
    else:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    return schedule.add_noise(x0, _t(t_next, x0), noise)


def backward_simulation(
    G: X0Fn,
    z: torch.Tensor,
    cond: torch.Tensor | None,
    timesteps: Sequence[int],
    k: int,
    schedule: NoiseSchedule,
    generator: torch.Generator | None,
    callback: Callback | None = None,
    noise_fn: NoiseFn | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """G's own input at step k: from pure noise `z`, for i < k predict x0 = G(x, tau_i) and re-noise it to
    tau_{i+1} with fresh noise. k = 0 returns `z`. Draws exactly k noise tensors (with `noise_fn(like)` when
    given: a replicated role draws the whole batch's noise and keeps its rows). `grad`: keep the graph of the k
    evaluations (generator.backprop_through_chain); else none (DMD2's stop-gradient, Sec. 4.5)."""
    if not 0 <= k < len(timesteps):
        raise ValueError(f"backward simulation step k={k} outside [0, {len(timesteps)})")
    x = z
    with torch.set_grad_enabled(grad):
        for i in range(k):
            x0 = G(x, _t(timesteps[i], x), cond)
            if callback is not None:
                callback(i, x, x0)
            x = _renoise(x0, timesteps[i + 1], schedule, generator, noise_fn)
    return x


@torch.no_grad()
def sample_generator(
    G: X0Fn,
    z: torch.Tensor,
    cond: torch.Tensor | None,
    timesteps: Sequence[int],
    schedule: NoiseSchedule,
    generator: torch.Generator | None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The N-step generator sampler: x <- z; x0 = G(x, tau_i); re-noise to tau_{i+1} with fresh noise; output the
    last x0."""
    n = len(timesteps)
    x = backward_simulation(G, z, cond, timesteps, n - 1, schedule, generator, callback)
    x0 = G(x, _t(timesteps[-1], x), cond)
    if callback is not None:
        callback(n - 1, x, x0)
    return x0


def ddim_timesteps(steps: int, num_train_timesteps: int) -> list[int]:
    """`steps` evenly spaced timesteps from T-1 down ("trailing" spacing): 50 of 1000 -> 999, 979, ..., 19."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_train_timesteps}, got {steps}")
    T = num_train_timesteps
    return [int(round(T - 1 - i * T / steps)) for i in range(steps)]


@torch.no_grad()
def ddim_loop(
    out_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    prev_timesteps: Sequence[int],
    final_alpha_bar: float | None = None,
    clip_sample: float | None = None,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one DDIM (eta = 0) loop (Song et al. 2021, eq. 12 with sigma = 0): at each t_i, the raw output
    `out_fn(x, t)` (guidance already applied) gives x0 and the noise direction eps = (x - sqrt(a_t) x0) /
    sqrt(1 - a_t), then x <- sqrt(a_prev) x0 + sqrt(1 - a_prev) eps with a_prev = alpha_bar[prev_timesteps[i]].
    A negative previous timestep is the end: x goes to `final_alpha_bar` (diffusers' set_alpha_to_one rule) or, when
    that is None, stays. `clip_sample` r clamps each x0 to [-r, r] after eps is taken (the noise direction stays the
    model's, diffusers' clip_sample without use_clipped_model_output). `callback(i, t, x, x0)`.
    Returns (the last x, the last x0)."""
    x = x.float()
    x0 = x
    for i, (t_i, t_prev) in enumerate(zip(timesteps, prev_timesteps)):
        t = _t(t_i, x)
        out = out_fn(x, t)
        x0 = schedule.to_x0(out, x, t)
        eps = schedule.to_eps(x0, x, t)
        if clip_sample is not None:
            x0 = x0.clamp(-clip_sample, clip_sample)
        if callback is not None:
            callback(i, t_i, x, x0)
        if t_prev >= 0:
            x = schedule.add_noise(x0, _t(t_prev, x), eps)
        elif final_alpha_bar is not None:
            x = final_alpha_bar ** 0.5 * x0 + (1.0 - final_alpha_bar) ** 0.5 * eps
    return x, x0


@torch.no_grad()
def ddim_sample(
    model: torch.nn.Module,
    z: torch.Tensor,
    cond: torch.Tensor | None,
    schedule: NoiseSchedule,
    steps: int,
    guidance_scale: float = 1.0,
    null_class: int | None = None,
    callback: Callback | None = None,
    clip_sample: float | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0, `ddim_loop`) with the raw network `model(x, t, cond)` in
    `schedule.prediction_type` on the trailing timesteps (`ddim_timesteps`), with classifier-free guidance
    `uncond + s (cond - uncond)` when `cond` is given and s != 1 (`uncond` = `null_class`). `clip_sample` r: each
    step's x0 is clamped to [-r, r] and the noise direction kept the model's (diffusers' DDIMScheduler with
    clip_sample, use_clipped_model_output False). Returns the last step's x0."""
    ts = ddim_timesteps(steps, schedule.num_train_timesteps)
    step = None if callback is None else (lambda i, t, x, x0: callback(i, x, x0))
    _, x0 = ddim_loop(lambda x, t: guided_output(model, x, t, cond, guidance_scale, null_class), z, schedule, ts,
                      [*ts[1:], -1], None, clip_sample, step)
    return x0


def guided_output(
    model: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor | None,
    guidance_scale: float,
    null_class: int | None,
) -> torch.Tensor:
    """`guidance.guided` for class labels: the unconditional input is the null class `null_class`; plain
    `model(x, t, cond)` when unconditional or s == 1."""
    if cond is None or guidance_scale == 1.0:
        return model(x, t, cond)
    if null_class is None:
        raise ValueError("classifier-free guidance needs the null class index")
    return guided(model, x, t, cond, torch.full_like(cond, null_class), guidance_scale)
