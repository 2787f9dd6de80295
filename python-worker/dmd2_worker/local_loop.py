"""A plain single-process training loop: all roles in one WorkerContext, no coordinator, no sockets.

It runs the op sequence of docs/protocol.md §4 with the seeds of docs/recipe.md ("Seeds") and the warm-ups of
docs/method.md, so it is both the baseline a user would write by hand and an oracle for the orchestrated run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from .config import SALT_FAKE_UPDATE, SALT_GAN_GRAD, SALT_GENERATE, Recipe, op_seed
from .optim import warmup_lr
from .roles import make_role
from .roles.base import Role, TensorStore, WorkerContext

ROLE_ORDER = ("teacher", "generator", "fake_score", "discriminator")


def is_generator_step(step: int, ratio: int) -> bool:
    """TTUR: the generator updates when `step % ratio == 0` (steps count from 0)."""
    return step % ratio == 0


def generator_update_index(step: int, ratio: int) -> int:
    """How many generator updates came before the one at `step` (a generator step)."""
    return step // ratio


def gan_generator_weight(step: int, weight: float, warmup_steps: int) -> float:
    """G's GAN weight, ramping linearly from 0 over `warmup_steps` steps: `weight * min(1, step / warmup_steps)`."""
    if warmup_steps <= 0:
        return float(weight)
    return float(weight) * min(1.0, step / warmup_steps)


def build_roles(recipe: Recipe, device: torch.device | str = "cpu") -> tuple[WorkerContext, dict[str, Role]]:
    """Create and set up every role in one context (the discriminator only when the GAN is enabled)."""
    ctx = WorkerContext(worker="all", recipe=recipe, run_dir=Path(recipe.run_dir), device=torch.device(device))
    names = [n for n in ROLE_ORDER if n != "discriminator" or recipe.gan.enabled]
    for name in names:
        ctx.roles[name] = make_role(name)
    reply = ctx.roles["teacher"].setup({"role": "teacher", "teacher_dir": None}, ctx)
    for name in names[1:]:
        ctx.roles[name].setup({"role": name, "teacher_dir": reply["teacher_dir"]}, ctx)
    return ctx, ctx.roles


def train_step(step: int, recipe: Recipe, ctx: WorkerContext) -> dict[str, float]:
    """One training step (docs/protocol.md §4, "op sequence of one training step"); returns all metrics."""
    roles = ctx.roles
    store = TensorStore()
    store.step = step  # type: ignore[attr-defined]
    metrics: dict[str, float] = {}

    def op(role: str, name: str, args: dict[str, Any]) -> None:
        for k, v in roles[role].run_op(name, args, store, ctx).items():
            metrics[f"{role}.{k}"] = v

    gen_step = is_generator_step(step, recipe.ttur.ratio)
    op("generator", "generate", {"seed": op_seed(recipe.seed, step, SALT_GENERATE),
                                 "batch_size": recipe.train.batch_size, "grad": gen_step, "dmd": gen_step})
    gan_on = recipe.gan.enabled
    if gen_step:
        op("teacher", "predict_x0", {"guidance_scale": recipe.dmd.real_guidance_scale})
        op("fake_score", "predict_x0", {})
        w_g = gan_generator_weight(step, recipe.gan.generator_weight, recipe.gan.warmup_steps) if gan_on else 0.0
        if w_g > 0:
            op("discriminator", "generator_gan_grad", {"seed": op_seed(recipe.seed, step, SALT_GAN_GRAD), "weight": w_g})
        u = generator_update_index(step, recipe.ttur.ratio)
        op("generator", "update", {"lr": warmup_lr(recipe.generator.lr, u, recipe.optim.warmup_steps),
                                   "dmd_weight": recipe.dmd.weight})
    w_d = recipe.gan.discriminator_weight if gan_on else 0.0
    op("fake_score", "update", {"seed": op_seed(recipe.seed, step, SALT_FAKE_UPDATE),
                                "lr": warmup_lr(recipe.fake_score.lr, step, recipe.optim.warmup_steps),
                                "gan_weight": w_d})
    return metrics


def run_local(
    recipe: Recipe,
    steps: int | None = None,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Role]:
    """Set up all roles and train for `steps` (default `train.steps`) steps from step 0; return the roles."""
    ctx, roles = build_roles(recipe, device)
    total = recipe.train.steps if steps is None else steps
    for step in range(total):
        metrics = train_step(step, recipe, ctx)
        if on_step is not None:
            on_step(step, metrics)
    return roles
