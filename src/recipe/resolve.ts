// Fills in what depends on other keys, the recipe's location or the machine: name, run_dir or out, python,
// torch_threads (from the core count and the networks' size, read from the teacher folder for a diffusers
// teacher), the generator's timesteps, the teacher's family and its conditioning tensors (conditioning.ts).
// Input: a schema-checked object (validate.ts, files.ts).

import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { RECIPE_SCHEMA_VERSION } from "./schema.js";
import type { Problem } from "./validate.js";
import type { Recipe, TeacherRecipe } from "./types.js";
import { defaultTorchThreads } from "../plan/threads.js";
import { resolvePlacement } from "./placement.js";
import { conditioningFor, folderHasClasses, teacherFamily } from "./conditioning.js";

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

const defaultName = (recipeFile: string) => path.basename(recipeFile).replace(/\.(ya?ml)$/i, "").replace(/[^A-Za-z0-9_.-]/g, "_") || "run";

/** The `python` key: a path with a slash is taken relative to the recipe's folder and must exist. */
function resolvePythonKey(python: string | null, recipeFile: string, problems: Problem[]): string | null {
  if (python === null) return null;
  const p = path.isAbsolute(python) || !python.includes("/") ? python : path.resolve(path.dirname(path.resolve(recipeFile)), python);
  if (p.includes("/") && !existsSync(p)) problems.push({ path: ["python"], message: `interpreter ${p} does not exist (fix the path, or drop the key to use the project's .venv)` });
  return p;
}

/** teacher.family and teacher.conditioning, read from the disk once here so that the step plan is pure. A value
 * written in the recipe (a resolved recipe given back) must equal what the folders say. */
function resolveTeacherKeys(r: Recipe, problems: Problem[]): void {
  const t = r.teacher;
  const given = { family: t.family as string | null, conditioning: t.conditioning as string[] | null };
  const family = teacherFamily(t);
  const conditioning = conditioningFor(r.data.source, family, r.data.source === "folder" ? folderHasClasses(r.data.folder.path) : true);
  if (conditioning === null) {
    problems.push({ path: ["teacher", "path"], message: `data.source prompts needs a text-to-image teacher; ${t.path} is a ${family} folder` });
    return;
  }
  const where = t.source === "builtin" ? "the built-in teacher" : `the teacher folder ${t.path}`;
  if (given.family !== null && given.family !== family) {
    problems.push({ path: ["teacher", "family"], message: `${given.family} differs from ${where}, whose family is ${family}: drop the key (dmd2 derives it)` });
  }
  if (given.conditioning !== null && JSON.stringify(given.conditioning) !== JSON.stringify(conditioning)) {
    problems.push({ path: ["teacher", "conditioning"], message: `[${given.conditioning.join(", ")}] differs from [${conditioning.join(", ")}], what ${where} takes with data.source ${r.data.source}: drop the key (dmd2 derives it)` });
  }
  t.family = family;
  t.conditioning = conditioning;
}

export function resolveRecipe(v: Record<string, unknown>, opts: ResolveOptions): { recipe: Recipe; problems: Problem[] } {
  const problems: Problem[] = [];
  const r = structuredClone(v) as unknown as Recipe;
  r.version = RECIPE_SCHEMA_VERSION;
  if (r.name === null) r.name = defaultName(opts.recipeFile);
  r.run_dir = path.resolve(opts.cwd, (r.run_dir as string | null) ?? path.join("runs", r.name));
  r.python = resolvePythonKey(r.python, opts.recipeFile, problems);
  r.roles = resolvePlacement(r.roles as never, {
    device: r.device, precision: r.precision, gradient_checkpointing: r.gradient_checkpointing, placement: r.placement, batchSize: r.train.batch_size, transport: r.transport,
  }, problems);
  const lora = r.generator.lora;
  if (lora.rank === null && (lora.alpha !== null || lora.target_modules !== null)) {
    problems.push({ path: ["generator", "lora", "rank"], message: "required when generator.lora.alpha or target_modules is set (e.g. rank: 64; null trains the whole network)" });
  }
  if (lora.rank !== null && r.teacher.source === "builtin") {
    problems.push({ path: ["generator", "lora"], message: "LoRA adapts a diffusers UNet: set teacher.source: diffusers with a UNet2DModel or Stable Diffusion folder, or drop generator.lora" });
  }
  if (lora.rank !== null && r.roles.generator.strategy === "fsdp") {
    problems.push({ path: ["generator", "lora"], message: "LoRA students with roles.generator.strategy fsdp are not supported yet; use strategy replicate (the adapters are small) or drop generator.lora" });
  }
  resolveTeacherKeys(r, problems);
  // one worker: all cores; several: split them, unless the networks are big enough that compute dominates (plan/threads.ts)
  if ((r.torch_threads as number | null) === null) r.torch_threads = defaultTorchThreads(r, opts.cpuCount ?? os.availableParallelism()).threads;
  const T = r.diffusion.num_train_timesteps;
  const ts = r.generator.timesteps as number[] | null;
  if ((r.generator.conditioning_timestep as number | null) === null) r.generator.conditioning_timestep = ts?.[0] ?? T - 1;
  if (ts === null) r.generator.timesteps = defaultTimesteps(r.generator.conditioning_timestep, r.generator.steps);
  if (r.generator.timesteps.some((t) => t < 0)) {
    problems.push({ path: ["generator", "conditioning_timestep"], message: `too small for ${r.generator.steps} steps (timesteps would go below 0)` });
  }
  return { recipe: r, problems };
}

export function resolveTeacherRecipe(v: Record<string, unknown>, opts: ResolveOptions): { recipe: TeacherRecipe; problems: Problem[] } {
  const problems: Problem[] = [];
  const r = { version: RECIPE_SCHEMA_VERSION, kind: "teacher", ...structuredClone(v) } as unknown as TeacherRecipe;
  if (r.name === null) r.name = defaultName(opts.recipeFile);
  r.out = path.resolve(opts.cwd, (r.out as string | null) ?? path.join("teachers", r.name));
  r.python = resolvePythonKey(r.python, opts.recipeFile, problems);
  if ((r.torch_threads as number | null) === null) r.torch_threads = opts.cpuCount ?? os.availableParallelism();
  return { recipe: r, problems };
}
