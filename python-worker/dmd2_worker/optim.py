"""Optimisation (docs/method.md, "Optimisation"): AdamW per trained network, linear lr warm-up, global clipping."""
from __future__ import annotations

import math

from typing import Iterable

import torch

from .config import OptimConfig
from .step_plan import warmup_lr  # noqa: F401 (the step plan's warm-up, re-exported for its callers)


def build_adamw(params: Iterable[torch.nn.Parameter], lr: float, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW(betas, weight_decay) from the recipe; the fused kernel where the device supports it."""
    params = list(params)
    kwargs = dict(lr=lr, betas=(float(cfg.betas[0]), float(cfg.betas[1])), weight_decay=cfg.weight_decay)
    devices = {p.device.type for p in params}
    if devices <= {"cpu", "cuda"}:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # older torch without fused kernels for this device
            pass
    return torch.optim.AdamW(params, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = float(lr)


def warmup_cosine_lr(base_lr: float, step: int, steps: int, warmup_steps: int) -> float:
    """Linear warm-up over `warmup_steps` (`lr * (step + 1) / warmup_steps`), then cosine decay from `lr` towards 0
    at `steps` (0-based `step`); the teachers' schedule (docs/pipeline.md §3)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / span))


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm at `max_norm`; return the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded (FSDP) gradients: a DTensor


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm was NaN or infinite in an update, and the recipe says `train.on_nonfinite: stop`."""


def nonfinite_guard(values: dict[str, float], policy: str, where: str, step: int | None) -> bool:
    """Whether the optimizer step may go ahead. With all `values` finite: yes. Otherwise, by `train.on_nonfinite`:
    "stop" raises NonFiniteError naming the step, op and value; "skip" says no (the caller drops the gradients)."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if not bad:
        return True
    if policy == "skip":
        return False
    what = ", ".join(f"{k} = {v}" for k, v in bad.items())
    raise NonFiniteError(f"non-finite {what} in {where} at step {step} (lower the learning rate, or set "
                         f"train.on_nonfinite: skip to skip such steps)")


def guarded_step(optimizer: torch.optim.Optimizer, lr: float, values: dict[str, float], policy: str, where: str,
                 step: int | None) -> float:
    """One optimizer step at `lr` unless `nonfinite_guard` says no (then the gradients are dropped). Returns the
    `skipped_nonfinite` metric: 1.0 when the step was skipped, else 0.0."""
    if nonfinite_guard(values, policy, where, step):
        set_lr(optimizer, lr)
        optimizer.step()
        return 0.0
    optimizer.zero_grad(set_to_none=True)
    return 1.0
