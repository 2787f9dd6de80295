// `dmd2 plan [recipe] [--set key=value ...] [--json]`: validates the recipe exactly as distill does (a bad
// recipe or --set is a RecipeError, exit code 2) and prints what distill would do, starting nothing.

import { loadRecipe } from "../../recipe/load.js";
import { formatPlan } from "../../plan/format.js";
import { buildPlan } from "../../plan/plan.js";

export interface PlanFlags {
  set: string[];
  json?: boolean;
}

export function planCommand(recipeFile: string, flags: PlanFlags): void {
  const recipe = loadRecipe(recipeFile, { overrides: flags.set });
  const plan = buildPlan(recipe, recipeFile);
  process.stdout.write(flags.json ? JSON.stringify(plan) + "\n" : formatPlan(plan));
}
