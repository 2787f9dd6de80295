// `dmd2 plan [recipe] [--set key=value ...] [--json]`: validates the recipe exactly as distill does (a bad
// recipe or --set is a RecipeError, exit code 2; a teacher recipe is a UsageError, exit code 2) and prints what
// distill would do, starting nothing.

import { formatPlan } from "../../plan/format.js";
import { cachedProbe } from "../../doctor/probeCache.js";
import { buildPlan, loadPlanRecipe } from "../../plan/plan.js";
import { resolvePython } from "../../workers/python.js";

export interface PlanFlags {
  set: string[];
  json?: boolean;
}

/** The interpreter the workers would use, probed (cached); undefined when there is none (the plan says so). */
async function probeFor(python: string | null) {
  try {
    return await cachedProbe(resolvePython(python));
  } catch {
    return undefined;
  }
}

export async function planCommand(recipeFile: string, flags: PlanFlags): Promise<void> {
  const recipe = loadPlanRecipe(recipeFile, flags.set);
  const probe = await probeFor(recipe.python);
  const plan = buildPlan(recipe, recipeFile, probe === undefined ? {} : { probe });
  process.stdout.write(flags.json ? JSON.stringify(plan) + "\n" : formatPlan(plan));
}
