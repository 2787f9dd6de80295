// The coordinator's schedule (docs/method.md "Two time-scale update rule", "Optimisation"; docs/recipe.md
// "Seeds"): which roles update at a step, the loss weights and learning rates at that step, the op seeds,
// and when to checkpoint. Everything is a pure function of the recipe and the step, so a resumed run follows
// exactly the schedule of an uninterrupted one.

import type { Recipe } from "../recipe/types.js";

/** TTUR: the fake score (and discriminator) update every step; the generator when step % ratio == 0. */
export function isGeneratorStep(step: number, ratio: number): boolean {
  return step % ratio === 0;
}

/** How many generator updates happened in steps [0, step): the multiples of `ratio` below `step`. */
export function generatorUpdatesBefore(step: number, ratio: number): number {
  return Math.ceil(step / ratio);
}

/** Linear warm-up: lr * min(1, (u + 1) / warmup) for an optimizer's u-th update (0-based). */
export function warmupLr(lr: number, update: number, warmupSteps: number): number {
  if (warmupSteps <= 0) return lr;
  return lr * Math.min(1, (update + 1) / warmupSteps);
}

/**
 * The warm-up index of a role's update at `step` (warmupLr's `update`). optim.warmup_unit "steps" (the default,
 * as in the authors' runs): the training step, so every optimizer reaches its full rate at step warmup_steps - 1;
 * "updates": the optimizer's own update count, so with TTUR ratio k the generator's warm-up lasts k times longer.
 */
export function warmupIndex(step: number, role: "generator" | "fake_score", r: Recipe): number {
  if (role === "fake_score" || r.optim.warmup_unit === "steps") return step;
  return generatorUpdatesBefore(step, r.ttur.ratio);
}

/** G's GAN weight, ramped linearly from 0 over gan.warmup_steps (0 when the GAN is off). */
export function ganGeneratorWeight(step: number, r: Recipe): number {
  if (!r.gan.enabled) return 0;
  const w = r.gan.generator_weight;
  if (r.gan.warmup_steps <= 0) return w;
  return w * Math.min(1, step / r.gan.warmup_steps);
}

export function ganDiscriminatorWeight(r: Recipe): number {
  return r.gan.enabled ? r.gan.discriminator_weight : 0;
}

export const SEED_SALT = { generate: 1, generatorGanGrad: 2, fakeScoreUpdate: 3 } as const;

/** (seed * 1000003 + step * 7919 + salt) mod 2^31, exactly, with BigInt (no float rounding). */
export function opSeed(seed: number, step: number, salt: number): number {
  const v = (BigInt(seed) * 1000003n + BigInt(step) * 7919n + BigInt(salt)) % 2147483648n;
  return Number(v);
}

/** Checkpoint after step `step` (0-based) completes? Every `checkpoint_every` steps and at the end. */
export function isCheckpointStep(step: number, r: Recipe): boolean {
  const done = step + 1;
  return done % r.train.checkpoint_every === 0 || done === r.train.steps;
}
