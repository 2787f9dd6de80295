// Fills in what depends on other keys, the recipe's location or the machine: name, run_dir, python,
// torch_threads, the generator's timesteps. Input: a schema-checked object (validate.ts).

import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { RECIPE_SCHEMA_VERSION } from "./schema.js";
import type { Problem } from "./validate.js";
import type { Recipe } from "./types.js";
import { workerLayout } from "../schedule/placement.js";

export interface ResolveOptions {
  recipeFile: string;
  cwd: string;
  cpuCount?: number;
  env: NodeJS.ProcessEnv;
}

/** Evenly spaced generator timesteps from the conditioning timestep: c - i * round((c + 1) / N). */
export function defaultTimesteps(conditioning: number, steps: number): number[] {
  const stride = Math.round((conditioning + 1) / steps);
  return Array.from({ length: steps }, (_, i) => conditioning - i * stride);
}

export function resolveRecipe(v: Record<string, unknown>, opts: ResolveOptions): { recipe: Recipe; problems: Problem[] } {
  const problems: Problem[] = [];
  const r = structuredClone(v) as unknown as Recipe;
  r.version = RECIPE_SCHEMA_VERSION;
  const recipeDir = path.dirname(path.resolve(opts.recipeFile));
  if (r.name === null) r.name = path.basename(opts.recipeFile).replace(/\.(ya?ml)$/i, "").replace(/[^A-Za-z0-9_.-]/g, "_") || "run";
  r.run_dir = path.resolve(opts.cwd, (r.run_dir as string | null) ?? path.join("runs", r.name));
  if (r.python !== null) {
    const p = path.isAbsolute(r.python) || !r.python.includes("/") ? r.python : path.resolve(recipeDir, r.python);
    if (p.includes("/") && !existsSync(p)) problems.push({ path: ["python"], message: `interpreter ${p} does not exist (fix the path, or drop the key to use the project's .venv)` });
    r.python = p;
  }
  if ((r.torch_threads as number | null) === null) {
    const cores = opts.cpuCount ?? os.availableParallelism();
    r.torch_threads = Math.max(1, Math.floor(cores / workerLayout(r.placement).length));
  }
  const T = r.diffusion.num_train_timesteps;
  const ts = r.generator.timesteps as number[] | null;
  if ((r.generator.conditioning_timestep as number | null) === null) r.generator.conditioning_timestep = ts?.[0] ?? T - 1;
  if (ts === null) r.generator.timesteps = defaultTimesteps(r.generator.conditioning_timestep, r.generator.steps);
  if (r.generator.timesteps.some((t) => t < 0)) {
    problems.push({ path: ["generator", "conditioning_timestep"], message: `too small for ${r.generator.steps} steps (timesteps would go below 0)` });
  }
  return { recipe: r, problems };
}
