"""The coordinator's schedule and step plan, ported from TypeScript (src/schedule/schedule.ts and stepPlan.ts).

The TypeScript plan is the specification: `plan_step(step, recipe)` gives the same phases of op calls as
`planStep` (docs/protocol.md §4, "op sequence of one training step"), with the seeds of docs/recipe.md ("Seeds")
and the warm-ups of docs/method.md. tests/test_step_plan.py checks it against test/fixtures/step-plan.json, which
scripts/regen-step-fixture.mjs writes from the TypeScript plan, so a change on one side alone fails a test.
local_loop.py runs these phases; nothing else in the worker re-derives the schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config.py re-exports the seeds below, so this module must not import it at run time
    from .config import Recipe

# Seeds (docs/recipe.md, "Seeds"): the salts of the coordinator's per-op seeds (schedule.ts SEED_SALT) ...
SALT_GENERATE = 1  # generator.generate
SALT_GAN_GRAD = 2  # discriminator.generator_gan_grad
SALT_FAKE_UPDATE = 3  # fake_score.update
# ... and of worker-internal randomness, derived the same way with step 0 (not sent by the coordinator):
SALT_TEACHER_INIT = 101  # built-in teacher: initial weights
SALT_TEACHER_DATA = 102  # built-in teacher: data, label dropout, t and noise
SALT_HEAD_INIT = 103  # discriminator head: initial weights


def op_seed(seed: int, step: int, salt: int) -> int:
    """`(seed * 1000003 + step * 7919 + salt) mod 2^31`, the coordinator's per-op seed (schedule.ts opSeed)."""
    return (seed * 1000003 + step * 7919 + salt) % 2**31


def is_generator_step(step: int, ratio: int) -> bool:
    """TTUR: the generator updates when `step % ratio == 0` (steps count from 0); the fake score every step."""
    return step % ratio == 0


def generator_updates_before(step: int, ratio: int) -> int:
    """How many generator updates happened in steps [0, step): the multiples of `ratio` below `step`
    (ceil(step / ratio)); at a generator step, the index of its update."""
    return -(-step // ratio)


def warmup_lr(base_lr: float, update_index: int, warmup_steps: int) -> float:
    """`lr * min(1, (u + 1) / warmup_steps)` for the optimizer's u-th update (0-based); `lr` when warmup_steps = 0."""
    if warmup_steps <= 0:
        return float(base_lr)
    return float(base_lr) * min(1.0, (update_index + 1) / warmup_steps)


def warmup_index(step: int, role: str, recipe: Recipe) -> int:
    """The warm-up index of a role's update at `step` (schedule.ts warmupIndex): the step with
    optim.warmup_unit "steps" (the authors' runs), the generator's own update count with "updates"."""
    if role == "fake_score" or recipe.optim.warmup_unit == "steps":
        return step
    return generator_updates_before(step, recipe.ttur.ratio)


def recipe_at(step: int, recipe: Recipe) -> Recipe:
    """The recipe with the keys of every training stage in force at `step` set (stages.ts recipeAt): the stages
    with from_step <= step, in order, later ones winning; the same object when none is."""
    active = [s for s in recipe.stages if s.from_step <= step]
    if not active:
        return recipe
    groups: dict[str, dict[str, Any]] = {}
    for stage in active:
        for key, value in stage.set.items():
            group, leaf = key.split(".")
            groups.setdefault(group, {})[leaf] = value
    changed = {}
    for group, values in groups.items():
        current = getattr(recipe, group)
        typed = {k: float(v) if isinstance(getattr(current, k), float) else v for k, v in values.items()}
        changed[group] = replace(current, **typed)
    return replace(recipe, **changed)


def gan_generator_weight(step: int, weight: float, warmup_steps: int) -> float:
    """G's GAN weight, ramping linearly from 0 over `warmup_steps` steps: `weight * min(1, step / warmup_steps)`.
    (schedule.ts ganGeneratorWeight with the GAN on; plan_step uses 0 when gan.enabled is false.)"""
    if warmup_steps <= 0:
        return float(weight)
    return float(weight) * min(1.0, step / warmup_steps)


def gan_discriminator_weight(recipe: Recipe) -> float:
    """The discriminator's loss weight in fake_score.update: gan.discriminator_weight, 0 when the GAN is off."""
    return float(recipe.gan.discriminator_weight) if recipe.gan.enabled else 0.0


@dataclass
class OpCall:
    """One op request of a step (stepPlan.ts OpCall): the tensors it reads from its store and writes to it."""
    role: str
    op: str
    args: dict[str, Any]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def conditioning_tensors(recipe: Recipe) -> list[str]:
    """`teacher.conditioning`, resolved by the CLI (src/recipe/conditioning.ts): `cond`, none, or the text tensors."""
    cond = recipe.teacher.conditioning
    if cond is None:
        raise ValueError("teacher.conditioning: missing from this resolved recipe (written before dmd2 recorded it); "
                         "resolve the recipe again with this dmd2 (dmd2 distill writes recipe.resolved.json)")
    return list(cond)


def plan_step(step: int, recipe: Recipe) -> list[list[OpCall]]:
    """One training step as phases of op calls (stepPlan.ts planStep): calls within a phase touch different roles,
    phases run in order."""
    r = recipe_at(step, recipe)  # the keys of the training stage in force at this step
    cond = conditioning_tensors(r)
    gen_step = is_generator_step(step, r.ttur.ratio)
    phases: list[list[OpCall]] = [[OpCall(
        "generator", "generate",
        {"seed": op_seed(r.seed, step, SALT_GENERATE), "batch_size": r.train.batch_size, "grad": gen_step,
         "dmd": gen_step},
        [], [*cond, "x_gen", *(["t_dmd", "x_t_dmd"] if gen_step else [])])]]
    if gen_step:
        dmd_inputs = ["x_t_dmd", "t_dmd", *cond]
        phases.append([
            OpCall("teacher", "predict_x0", {"guidance_scale": r.dmd.real_guidance_scale}, list(dmd_inputs),
                   ["x0_real"]),
            OpCall("fake_score", "predict_x0", {}, list(dmd_inputs), ["x0_fake"]),
        ])
        gan_weight = gan_generator_weight(step, r.gan.generator_weight, r.gan.warmup_steps) if r.gan.enabled else 0.0
        if gan_weight > 0:
            phases.append([OpCall("discriminator", "generator_gan_grad",
                                  {"seed": op_seed(r.seed, step, SALT_GAN_GRAD), "weight": gan_weight},
                                  ["x_gen", *cond], ["gan_grad"])])
        gen_lr = warmup_lr(r.generator.lr, warmup_index(step, "generator", r), r.optim.warmup_steps)
        phases.append([OpCall("generator", "update", {"lr": gen_lr, "dmd_weight": r.dmd.weight},
                              ["x0_real", "x0_fake", *(["gan_grad"] if gan_weight > 0 else [])], [])])
    phases.append([OpCall("fake_score", "update",
                          {"seed": op_seed(r.seed, step, SALT_FAKE_UPDATE),
                           "lr": warmup_lr(r.fake_score.lr, warmup_index(step, "fake_score", r),
                                           r.optim.warmup_steps),
                           "gan_weight": gan_discriminator_weight(r)},
                          ["x_gen", *cond], [])])
    return phases
