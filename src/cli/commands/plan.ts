// `dmd2 plan [recipe] [--set key=value ...] [--json]`: validates the recipe exactly as distill does (a bad
// recipe or --set is a RecipeError, exit code 2; a teacher recipe is a UsageError, exit code 2) and prints what
// distill would do, starting nothing.

import { formatPlan } from "../../plan/format.js";
import { buildPlan, loadPlanRecipe } from "../../plan/plan.js";

export interface PlanFlags {
  set: string[];
  json?: boolean;
}

export function planCommand(recipeFile: string, flags: PlanFlags): void {
  const recipe = loadPlanRecipe(recipeFile, flags.set);
  const plan = buildPlan(recipe, recipeFile);
  process.stdout.write(flags.json ? JSON.stringify(plan) + "\n" : formatPlan(plan));
}
