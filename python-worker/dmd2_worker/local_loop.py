"""A plain single-process training loop: all roles in one WorkerContext, no coordinator, no sockets.

It runs the step plan production runs (step_plan.py, the port of src/schedule/stepPlan.ts: the op sequence of
docs/protocol.md §4 with the seeds of docs/recipe.md "Seeds" and the warm-ups of docs/method.md) through
`run_phases`, so it is both the baseline a user would write by hand and an oracle for the orchestrated run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch

from .config import Recipe
from .roles import make_role
from .roles.base import Role, TensorStore, WorkerContext
from .step_plan import OpCall, plan_step

ROLE_ORDER = ("teacher", "generator", "fake_score", "discriminator")


def run_phases(step: int, phases: list[list[OpCall]], home: Mapping[str, WorkerContext],
               carry: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, float]:
    """Run one step's phases in order, each call in the worker context of its role (`home[role]`), each worker with
    a fresh tensor store for the step (a worker clears its store when the step changes, docs/protocol.md §4).
    Roles of one worker share its store. An input made in another worker is first put into the consumer's store
    through `carry` (a tensor sent between processes): what the coordinator's routeTensors attaches
    (src/schedule/stepPlan.ts). Returns the step's metrics as `role.metric`."""
    stores: dict[str, TensorStore] = {}

    def store_of(ctx: WorkerContext) -> TensorStore:
        if ctx.worker not in stores:
            stores[ctx.worker] = TensorStore()
            stores[ctx.worker].step = step  # type: ignore[attr-defined]
        return stores[ctx.worker]

    producer: dict[str, WorkerContext] = {}
    metrics: dict[str, float] = {}
    for phase in phases:
        for call in phase:
            if call.role not in home:
                raise KeyError(f"step plan: {call.role}.{call.op} has no worker (roles here: {', '.join(home)})")
            ctx = home[call.role]
            store = store_of(ctx)
            for name in call.inputs:
                source = producer.get(name)
                if source is None:
                    raise KeyError(f"step plan: {call.role}.{call.op} needs {name!r} but no earlier op produces it")
                if source.worker != ctx.worker:
                    store[name] = carry(store_of(source)[name])
            for k, v in ctx.roles[call.role].run_op(call.op, call.args, store, ctx).items():
                metrics[f"{call.role}.{k}"] = v
        for call in phase:
            for name in call.outputs:
                producer[name] = home[call.role]
    return metrics


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
    """One training step (docs/protocol.md §4, "op sequence of one training step"), every role in `ctx`; returns
    all metrics."""
    return run_phases(step, plan_step(step, recipe), dict.fromkeys(ctx.roles, ctx))


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
