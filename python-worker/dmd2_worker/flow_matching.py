"""The flow-matching (rectified flow) schedule of SD3 / Flux / Sana teachers (docs/method.md, "Flow-matching
teachers"): `x_sigma = (1 - sigma) x0 + sigma eps`, the network predicts `v = eps - x0`.

`FlowMatchSchedule` has the methods the roles call on `diffusion.NoiseSchedule` (`num_train_timesteps`,
`prediction_type`, `coefficients`, `add_noise`, `to_x0`, `to_eps`, `denoising_target`), all taking integer
timestep indices t in [0, T), so the roles, the samplers and the losses run unchanged on either. What flow adds:
`sigma_of(t)` and `model_timestep(t)` (what the transformer is fed: sigma * T).

Index -> sigma: `sigma(t) = shift_fn((t + 1) / T)`, so index T-1 is sigma = 1 and the grid is diffusers'
FlowMatchEulerDiscreteScheduler training sigmas; shift_fn is the config's static `shift` or, with
`use_dynamic_shifting`, the resolution-dependent time shift with mu from the image's token count.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

FLOW_PREDICTION = "flow"  # the network output is the velocity v = eps - x0
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)

# diffusers' FlowMatchEulerDiscreteScheduler defaults, for keys a scheduler_config.json leaves out
FLOW_DEFAULTS: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False,
                                 "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                                 "max_image_seq_len": 4096, "time_shift_type": "exponential"}
# options that reshape the sigma grid in ways this schedule does not reproduce: refused, with the value that is fine
UNSUPPORTED: dict[str, Any] = {"shift_terminal": None, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                               "use_beta_sigmas": False, "invert_sigmas": False, "stochastic_sampling": False}


class FlowConfigError(ValueError):
    """A flow scheduler config that cannot be used; the message is one line naming the file and key."""


def is_flow_config(raw: dict[str, Any]) -> bool:
    """A scheduler config of a flow-matching teacher (by its `_class_name`)."""
    return raw.get("_class_name") in FLOW_SCHEDULERS


def calculate_mu(image_seq_len: int, base_image_seq_len: int, max_image_seq_len: int, base_shift: float,
                 max_shift: float) -> float:
    """Flux's resolution-dependent shift: mu linear in the image token count, base_shift at base_image_seq_len and
    max_shift at max_image_seq_len."""
    m = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    b = base_shift - m * base_image_seq_len
    return image_seq_len * m + b


def check_flow_config(raw: dict[str, Any], where: str | Path = "scheduler_config.json") -> dict[str, Any]:
    """The config with diffusers' defaults filled in, checked (FlowConfigError, one line, naming `where`)."""
    cfg = {**FLOW_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    for key, ok in UNSUPPORTED.items():
        if raw.get(key) is not None and raw[key] != ok:
            raise FlowConfigError(f"{where}: {key} {raw[key]!r} is not supported by dmd2's flow schedule "
                                  f"(set it to {json_value(ok)})")
    T = cfg["num_train_timesteps"]
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise FlowConfigError(f"{where}: num_train_timesteps must be an integer >= 2, got {T!r}")
    if cfg["time_shift_type"] not in ("exponential", "linear"):
        raise FlowConfigError(f"{where}: time_shift_type {cfg['time_shift_type']!r} must be 'exponential' or 'linear'")
    keys = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len") if cfg["use_dynamic_shifting"] \
        else ("shift",)
    for key in keys:
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                (key == "shift" and v <= 0):
            raise FlowConfigError(f"{where}: {key} must be a {'positive ' if key == 'shift' else ''}number, got {v!r}")
    if cfg["use_dynamic_shifting"] and cfg["max_image_seq_len"] == cfg["base_image_seq_len"]:
        raise FlowConfigError(f"{where}: max_image_seq_len must differ from base_image_seq_len")
    return cfg


def json_value(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else repr(v)


class FlowMatchSchedule:
    """sigma(t) for t in 0..T-1 in float64 (`self.sigmas`, ascending in t); coefficients are cast to the data's
    dtype (float32) just before use, like NoiseSchedule's."""

    prediction_type = FLOW_PREDICTION

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, mu: float | None = None,
                 time_shift_type: str = "exponential") -> None:
        T = int(num_train_timesteps)
        s = torch.arange(1, T + 1, dtype=torch.float64) / T  # (t + 1) / T
        if mu is None:
            sigmas = shift * s / (1 + (shift - 1) * s)
        elif time_shift_type == "exponential":
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
        else:
            sigmas = mu / (mu + (1 / s - 1))
        self.num_train_timesteps = T
        self.shift = float(shift)
        self.mu = mu
        self.sigmas = sigmas

    @classmethod
    def from_config(cls, raw: dict[str, Any], image_seq_len: int | None = None,
                    where: str | Path = "scheduler_config.json") -> "FlowMatchSchedule":
        """From a FlowMatchEulerDiscreteScheduler config; `image_seq_len` (the image's token count) is needed only
        with `use_dynamic_shifting`."""
        cfg = check_flow_config(raw, where)
        if not cfg["use_dynamic_shifting"]:
            return cls(cfg["num_train_timesteps"], float(cfg["shift"]))
        if image_seq_len is None:
            raise FlowConfigError(f"{where}: use_dynamic_shifting needs the image's token count (image_seq_len)")
        mu = calculate_mu(image_seq_len, cfg["base_image_seq_len"], cfg["max_image_seq_len"],
                          float(cfg["base_shift"]), float(cfg["max_shift"]))
        return cls(cfg["num_train_timesteps"], mu=mu, time_shift_type=cfg["time_shift_type"])

    # --- index -> sigma ---

    def _index(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).to(device="cpu", dtype=torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps}), got {t.min()}..{t.max()}")
        return t

    def sigma_of(self, t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """sigma(t) (float64, shape of t); with `like`, shaped (B, 1, ..., 1) in its dtype and on its device."""
        sigma = self.sigmas[self._index(t)]
        if like is None:
            return sigma
        return sigma.reshape((-1,) + (1,) * (like.dim() - 1)).to(device=like.device, dtype=like.dtype)

    def model_timestep(self, t: torch.Tensor, device: torch.device | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """What the transformer is fed for index t: sigma(t) * T (as the pipelines feed `scheduler.timesteps`)."""
        t = torch.as_tensor(t)
        out = (self.sigma_of(t) * self.num_train_timesteps).to(dtype=dtype)
        return out.to(device if device is not None else t.device)

    # --- NoiseSchedule's interface ---

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 - sigma(t), sigma(t)): x_t = coefficients[0] x0 + coefficients[1] eps, shaped (B, 1, ..., 1)."""
        sigma = self.sigma_of(t, like)
        return 1.0 - sigma, sigma

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process (and the generator's re-noising): `x_t = (1 - sigma) x0 + sigma noise`."""
        a, sigma = self.coefficients(t, x0)
        return a * x0 + sigma * noise

    def to_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str | None = None) -> torch.Tensor:
        """The velocity `out` as an x0 estimate, `x_t - sigma v`, in float32 (float64 inputs stay float64)."""
        kind = prediction_type or self.prediction_type
        if kind != FLOW_PREDICTION:
            raise ValueError(f"a flow-matching schedule converts velocity ('{FLOW_PREDICTION}'), not {kind!r}")
        dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
        out, x_t = out.to(dtype), x_t.to(dtype)
        return x_t - self.sigma_of(t, out) * out

    def to_eps(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise implied by an x0 estimate: `(x_t - (1 - sigma) x0) / sigma`."""
        a, sigma = self.coefficients(t, x0)
        return (x_t - a * x0) / sigma

    def velocity_to_eps(self, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity as a noise estimate: `x_t + (1 - sigma) v`, float32."""
        v, x_t = v.float(), x_t.float()
        return x_t + (1.0 - self.sigma_of(t, v)) * v

    def denoising_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                         prediction_type: str | None = None) -> torch.Tensor:
        """The flow-matching loss target: the velocity `noise - x0` (the fake score's loss, docs/method.md)."""
        kind = prediction_type or self.prediction_type
        if kind != FLOW_PREDICTION:
            raise ValueError(f"a flow-matching schedule's target is the velocity ('{FLOW_PREDICTION}'), not {kind!r}")
        return noise - x0

    def __repr__(self) -> str:
        how = f"shift={self.shift}" if self.mu is None else f"mu={self.mu:.4f}"
        return f"FlowMatchSchedule(T={self.num_train_timesteps}, {how})"


def read_flow_schedule(folder: str | Path, image_seq_len: int | None = None) -> FlowMatchSchedule | None:
    """The folder's flow schedule when its scheduler/scheduler_config.json is a flow-matching one, else None."""
    from .teacher_folder import read_json_object

    path = Path(folder) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return None
    raw = read_json_object(path)
    if not is_flow_config(raw):
        return None
    return FlowMatchSchedule.from_config(raw, image_seq_len, where=path)
