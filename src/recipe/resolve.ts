// Fills in what depends on other keys, the recipe's location or the machine: name, run_dir or out, python,
// torch_threads (from the core count and the networks' size, read from the teacher folder for a diffusers
// teacher), the generator's timesteps, the teacher's family and its conditioning tensors (conditioning.ts).
// Input: a schema-checked object (validate.ts, files.ts).

import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { RECIPE_SCHEMA_VERSION } from "./schema.js";
import type { Problem } from "./validate.js";
import type { CheckedRecipe, CheckedTeacherRecipe, PlacedRole, Recipe, RolePlacement, TeacherRecipe } from "./types.js";
import { defaultTorchThreads } from "./threads.js";
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
function resolveTeacherKeys(v: CheckedRecipe, problems: Problem[]): { family: string; conditioning: string[] } {
  const t = v.teacher;
  const family = teacherFamily(t);
  const conditioning = conditioningFor(v.data.source, family, v.data.source === "folder" ? folderHasClasses(v.data.folder.path) : true);
  if (conditioning === null) {
    problems.push({ path: ["teacher", "path"], message: `data.source prompts needs a text-to-image teacher; ${t.path} is a ${family} folder` });
    return { family, conditioning: [] };
  }
  const where = t.source === "builtin" ? "the built-in teacher" : `the teacher folder ${t.path}`;
  if (t.family !== null && t.family !== family) {
    problems.push({ path: ["teacher", "family"], message: `${t.family} differs from ${where}, whose family is ${family}: drop the key (dmd2 derives it)` });
  }
  if (t.conditioning !== null && JSON.stringify(t.conditioning) !== JSON.stringify(conditioning)) {
    problems.push({ path: ["teacher", "conditioning"], message: `[${t.conditioning.join(", ")}] differs from [${conditioning.join(", ")}], what ${where} takes with data.source ${v.data.source}: drop the key (dmd2 derives it)` });
  }
  return { family, conditioning };
}

/** The rules on generator.lora (docs/adapters.md §7). config.py's lora_problems is the worker's backstop copy,
 * kept identical by python-worker/tests/test_recipe_schema.py through the fixture scripts/dump-recipe-schema.mjs
 * writes from loraCases below. */
export function loraProblems(lora: Recipe["generator"]["lora"], teacherSource: Recipe["teacher"]["source"], generatorStrategy: RolePlacement["strategy"]): Problem[] {
  const problems: Problem[] = [];
  if (lora.rank === null && (lora.alpha !== null || lora.target_modules !== null)) {
    problems.push({ path: ["generator", "lora", "rank"], message: "required when generator.lora.alpha or target_modules is set (e.g. rank: 64)" });
  }
  if (lora.rank !== null && teacherSource === "builtin") {
    problems.push({ path: ["generator", "lora"], message: "LoRA adapts a diffusers UNet: set teacher.source: diffusers with a UNet2DModel or Stable Diffusion folder, or drop generator.lora" });
  }
  if (lora.rank !== null && generatorStrategy === "fsdp") {
    problems.push({ path: ["generator", "lora"], message: "LoRA students with roles.generator.strategy fsdp are not supported yet; use strategy replicate (the adapters are small) or drop generator.lora" });
  }
  return problems;
}

/** Inputs that cover every branch of loraProblems, for the fixture that pins config.py's copy. */
export const loraCases: { lora: Recipe["generator"]["lora"]; teacher_source: Recipe["teacher"]["source"]; strategy: RolePlacement["strategy"] }[] = [
  { lora: { rank: null, alpha: null, target_modules: null }, teacher_source: "builtin", strategy: "fsdp" },
  { lora: { rank: null, alpha: 8, target_modules: null }, teacher_source: "diffusers", strategy: "replicate" },
  { lora: { rank: null, alpha: null, target_modules: ["to_q"] }, teacher_source: "diffusers", strategy: "replicate" },
  { lora: { rank: 4, alpha: null, target_modules: null }, teacher_source: "diffusers", strategy: "replicate" },
  { lora: { rank: 4, alpha: 8, target_modules: ["to_q"] }, teacher_source: "builtin", strategy: "replicate" },
  { lora: { rank: 4, alpha: null, target_modules: null }, teacher_source: "diffusers", strategy: "fsdp" },
  { lora: { rank: 4, alpha: null, target_modules: null }, teacher_source: "builtin", strategy: "fsdp" },
];

export function resolveRecipe(c: CheckedRecipe, opts: ResolveOptions): { recipe: Recipe; problems: Problem[] } {
  const problems: Problem[] = [];
  const v = structuredClone(c);
  const name = v.name ?? defaultName(opts.recipeFile);
  const run_dir = path.resolve(opts.cwd, v.run_dir ?? path.join("runs", name));
  const python = resolvePythonKey(v.python, opts.recipeFile, problems);
  const roles = resolvePlacement(v.roles, {
    device: v.device, precision: v.precision, gradient_checkpointing: v.gradient_checkpointing, placement: v.placement, batchSize: v.train.batch_size, transport: v.transport,
  }, problems);
  problems.push(...loraProblems(v.generator.lora, v.teacher.source, roles.generator.strategy));
  const T = v.diffusion.num_train_timesteps;
  const ts = v.generator.timesteps;
  const conditioning = v.generator.conditioning_timestep ?? ts?.[0] ?? T - 1;
  const timesteps = ts ?? defaultTimesteps(conditioning, v.generator.steps);
  if (timesteps.some((t) => t < 0)) {
    problems.push({ path: ["generator", "conditioning_timestep"], message: `too small for ${v.generator.steps} steps (timesteps would go below 0)` });
  }
  const teacherKeys = resolveTeacherKeys(v, problems);
  const withoutThreads = {
    ...v,
    version: RECIPE_SCHEMA_VERSION,
    name,
    run_dir,
    python,
    roles,
    teacher: { ...v.teacher, ...teacherKeys },
    generator: { ...v.generator, conditioning_timestep: conditioning, timesteps },
  };
  // one worker: all cores; several: split them, unless the networks are big enough that compute dominates (threads.ts)
  const torch_threads = v.torch_threads ?? defaultTorchThreads(withoutThreads, opts.cpuCount ?? os.availableParallelism()).threads;
  return { recipe: { ...withoutThreads, torch_threads }, problems };
}

export function resolveTeacherRecipe(c: CheckedTeacherRecipe, opts: ResolveOptions): { recipe: TeacherRecipe; problems: Problem[] } {
  const problems: Problem[] = [];
  const v = structuredClone(c);
  const name = v.name ?? defaultName(opts.recipeFile);
  const recipe: TeacherRecipe = {
    version: RECIPE_SCHEMA_VERSION,
    kind: "teacher",
    ...v,
    name,
    out: path.resolve(opts.cwd, v.out ?? path.join("teachers", name)),
    python: resolvePythonKey(v.python, opts.recipeFile, problems),
    torch_threads: v.torch_threads ?? opts.cpuCount ?? os.availableParallelism(),
  };
  return { recipe, problems };
}

/** A schema-checked recipe that was resolved before (a run's recipe.resolved.json after `--set`): the keys
 * resolveRecipe fills must hold values already. Returns the resolved recipe, or the problems. */
export function alreadyResolved(c: CheckedRecipe, version: number): { recipe: Recipe } | { problems: Problem[] } {
  const problems: Problem[] = [];
  const need = <T>(value: T | null, p: string[]): T => {
    if (value === null) problems.push({ path: p, message: "must have a value in a resolved recipe (it cannot be reset to null)" });
    return value as T;
  };
  const role = (name: PlacedRole): RolePlacement => {
    const r = c.roles[name];
    const at = (key: string) => ["roles", name, key];
    const backend = r.backend === "auto" ? need<"gloo" | "nccl">(null, at("backend")) : r.backend;
    return { ...r, device: typeof r.device === "string" ? [r.device] : need(r.device, at("device")), precision: need(r.precision, at("precision")), gradient_checkpointing: need(r.gradient_checkpointing, at("gradient_checkpointing")), replicas: need(r.replicas, at("replicas")), backend };
  };
  const recipe: Recipe = {
    ...c,
    name: need(c.name, ["name"]),
    run_dir: need(c.run_dir, ["run_dir"]),
    torch_threads: need(c.torch_threads, ["torch_threads"]),
    roles: { teacher: role("teacher"), generator: role("generator"), fake_score: role("fake_score") },
    // a run resolved before these keys existed has neither: derive them as a fresh resolve does
    teacher: c.teacher.family !== null && c.teacher.conditioning !== null
      ? { ...c.teacher, family: c.teacher.family, conditioning: c.teacher.conditioning }
      : { ...c.teacher, ...resolveTeacherKeys(c, problems) },
    generator: { ...c.generator, conditioning_timestep: need(c.generator.conditioning_timestep, ["generator", "conditioning_timestep"]), timesteps: need(c.generator.timesteps, ["generator", "timesteps"]) },
    version,
  };
  return problems.length > 0 ? { problems } : { recipe };
}
