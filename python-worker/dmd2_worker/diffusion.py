"""The DDPM noise schedule and the conversions between network outputs and x0 (docs/method.md, "Noise schedule")."""
from __future__ import annotations

import math

import torch

from .config import DiffusionConfig

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class NoiseSchedule:
    """`alpha_bar[t] = prod_{s<=t} (1 - betas[s])` in float64, t in 0..T-1.

    Coefficients are looked up in float64 and cast to the data's dtype (float32) just before use.
    """

    def __init__(
        self,
        num_train_timesteps: int,
        beta_schedule: str,
        beta_start: float,
        beta_end: float,
        prediction_type: str = "epsilon",
    ) -> None:
        T = int(num_train_timesteps)
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2
        else:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r} (expected 'linear' or 'scaled_linear')")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r} (expected one of {PREDICTION_TYPES})")
        self.num_train_timesteps = T
        self.prediction_type = prediction_type
        self.betas = betas
        self.alpha_bar = torch.cumprod(1.0 - betas, dim=0)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "NoiseSchedule":
        return cls(cfg.num_train_timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.prediction_type)

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(alpha_bar[t]), sqrt(1 - alpha_bar[t])) shaped (B, 1, ..., 1), in `like`'s dtype and device."""
        t = t.to(device="cpu", dtype=torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps}), got {t.min()}..{t.max()}")
        a = self.alpha_bar[t]
        shape = (-1,) + (1,) * (like.dim() - 1)
        sqrt_a = a.sqrt().reshape(shape).to(device=like.device, dtype=like.dtype)
        sqrt_1ma = (1.0 - a).sqrt().reshape(shape).to(device=like.device, dtype=like.dtype)
        return sqrt_a, sqrt_1ma

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: `x_t = sqrt(ab[t]) x0 + sqrt(1 - ab[t]) noise`."""
        sqrt_a, sqrt_1ma = self.coefficients(t, x0)
        return sqrt_a * x0 + sqrt_1ma * noise

    def to_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str | None = None) -> torch.Tensor:
        """Convert a network output to an x0 estimate, in float32 (float64 inputs stay float64)."""
        kind = prediction_type or self.prediction_type
        dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
        out = out.to(dtype)
        x_t = x_t.to(dtype)
        if kind == "sample":
            return out
        sqrt_a, sqrt_1ma = self.coefficients(t, out)
        if kind == "epsilon":
            return (x_t - sqrt_1ma * out) / sqrt_a
        if kind == "v_prediction":
            return sqrt_a * x_t - sqrt_1ma * out
        raise ValueError(f"unknown prediction_type {kind!r} (expected one of {PREDICTION_TYPES})")

    def to_eps(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise implied by an x0 estimate: `(x_t - sqrt(a) x0) / sqrt(1 - a)` (for DDIM)."""
        sqrt_a, sqrt_1ma = self.coefficients(t, x0)
        return (x_t - sqrt_a * x0) / sqrt_1ma

    def denoising_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction_type: str | None = None) -> torch.Tensor:
        """The regression target of the denoising loss: noise (epsilon), `sqrt(a) n - sqrt(1-a) x0` (v), or x0."""
        kind = prediction_type or self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        if kind == "v_prediction":
            sqrt_a, sqrt_1ma = self.coefficients(t, x0)
            return sqrt_a * noise - sqrt_1ma * x0
        raise ValueError(f"unknown prediction_type {kind!r} (expected one of {PREDICTION_TYPES})")


def js_round(x: float) -> int:
    """Round half up, like JavaScript's Math.round (the CLI computes the same numbers in TypeScript)."""
    return int(math.floor(x + 0.5))


def generator_timesteps(steps: int, conditioning_timestep: int) -> list[int]:
    """The default generator timesteps `c - i * round((c + 1) / N)`, e.g. 4 steps from 999: [999, 749, 499, 249]."""
    if steps < 1:
        raise ValueError(f"generator steps must be >= 1, got {steps}")
    stride = js_round((conditioning_timestep + 1) / steps)
    ts = [conditioning_timestep - i * stride for i in range(steps)]
    if ts[-1] < 0:
        raise ValueError(f"{steps} steps from timestep {conditioning_timestep} go below 0: {ts}")
    return ts


def dmd_timestep_range(min_t: float, max_t: float, num_train_timesteps: int) -> tuple[int, int]:
    """Inclusive [round(min_t T), round(max_t T)], clamped into [0, T-1]."""
    T = num_train_timesteps
    lo = min(max(js_round(min_t * T), 0), T - 1)
    hi = min(max(js_round(max_t * T), 0), T - 1)
    return lo, max(lo, hi)
