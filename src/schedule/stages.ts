// Training stages (issue 23; docs/recipe.md "Stages"): from step S on, some keys of the recipe take other values.
// recipeAt gives the recipe in force at a step, so the step plan stays a pure function of the resolved recipe and
// the step, and a resumed run follows the stages exactly as an uninterrupted one. The warm-ups are counted from
// step 0 of the run, not from a stage's start: a stage replaces a rate or weight, the warm-up factor of its step
// multiplies it.

import type { Recipe } from "../recipe/types.js";
import type { TrainingStage } from "../recipe/schema.js";

/** The stages in force at `step`: those with from_step <= step, in order (later ones win). */
export function stagesInForce(step: number, r: Recipe): TrainingStage[] {
  return r.stages.filter((s) => s.from_step <= step);
}

/** The index of the stage in force at `step`, or -1 before the first one (the top-level keys alone). */
export function stageIndexAt(step: number, r: Recipe): number {
  return stagesInForce(step, r).length - 1;
}

/** `r` with the keys of every stage in force at `step` set (the same object when none is). */
export function recipeAt(step: number, r: Recipe): Recipe {
  const active = stagesInForce(step, r);
  if (active.length === 0) return r;
  const out = { ...r } as Record<string, unknown>;
  for (const stage of active) {
    for (const [key, value] of Object.entries(stage.set)) {
      const [group, leaf] = key.split(".") as [string, string];
      out[group] = { ...(out[group] as Record<string, unknown>), [leaf]: value };
    }
  }
  return out as Recipe;
}

/** The keys each stage sets, as "key value" text, for dmd2 plan and the log. */
export function describeStage(stage: TrainingStage): string {
  return Object.entries(stage.set).map(([k, v]) => `${k} ${String(v)}`).join(", ");
}
