// Step time of a real `dmd2 distill` run (placements colocated and per_role) and of the plain Python loop
// (python -m dmd2_worker.bench local: local_loop.train_step, the same role code in one process, no coordinator).
//
// Orchestrated runs are timed by the coordinator itself: metrics.jsonl's `step_time_s`, measured around each
// step. Warm-up steps are skipped; the measured window is a whole number of TTUR cycles, so every
// configuration times the same mix of generator and fake-score-only steps. Checkpoints are pushed past the last
// step (the final one is written after it, outside the step times).

import { readFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { recipeSchema, type Node } from "../recipe/schema.js";
import { PROJECT_ROOT } from "../workers/python.js";
import { runPythonBench } from "./python.js";
import { summarize, type Summary } from "./stats.js";

export type StepMode = "colocated" | "per_role" | "local";

/**
 * Work done once per variant before its timed runs, outside every timing. "train-teacher": `dmd2 train-teacher
 * <recipe> --out <scratch>/<variant id>-teacher --set ...` (a throwaway teacher: step time does not depend on how
 * well it is trained), then every run of the variant gets `--set teacher.path=<that folder>`.
 */
export interface PrepareStep {
  kind: "train-teacher";
  /** the teacher recipe, relative to the project root */
  recipe: string;
  /** --set overrides for dmd2 train-teacher */
  sets: string[];
}

export interface StepVariant {
  id: string;
  label: string;
  /** the distillation recipe, relative to the project root */
  recipe: string;
  /** --set overrides on top of the recipe */
  sets: string[];
  prepare?: PrepareStep;
  /** the target on (a) colocated / (c) plain loop, if any: median ratio <= this */
  aOverCTarget?: number;
  /** issue 7's target for (b) per_role / (a) colocated at the default threads (the compute-bound variant) */
  bOverATarget?: number;
  warmup: number;
  steps: number;
  /** Each configuration is run this many times, interleaved with the others; the step times are pooled. */
  rounds: number;
  /** Every configuration at this many torch threads per process, instead of the placements' defaults (and no
   * extra 1-thread rows). The quick mode uses 1: threads = cores fight anything else running on the machine. */
  threads?: number;
}

export interface StepConfig {
  /** e.g. "colocated.t2" */
  key: string;
  mode: StepMode;
  /** null: the recipe's default for the placement (resolved by the CLI) */
  threads: number | null;
}

export interface StepResult {
  id: string;
  variant: string;
  mode: StepMode;
  /** torch threads per worker process (for local: of the one process) */
  torch_threads: number;
  processes: number;
  warmup: number;
  steps_measured: number;
  rounds: number;
  /** seconds */
  stats: Summary;
  /** seconds, generator steps and fake-score-only steps apart */
  generator_steps: Summary | null;
  other_steps: Summary | null;
  times_s: number[];
}

const CLI = path.join(PROJECT_ROOT, "bin", "dmd2.js");

export function stepConfigs(defaultColocatedThreads: number, fixedThreads?: number): StepConfig[] {
  if (fixedThreads !== undefined) {
    return [
      { key: "colocated.default", mode: "colocated", threads: fixedThreads },
      { key: "per_role.default", mode: "per_role", threads: fixedThreads },
      { key: "local.default", mode: "local", threads: fixedThreads },
    ];
  }
  const configs: StepConfig[] = [
    { key: "colocated.default", mode: "colocated", threads: null },
    { key: "per_role.default", mode: "per_role", threads: null },
    // null: as many threads as the colocated run's resolved torch_threads
    { key: "local.default", mode: "local", threads: null },
  ];
  if (defaultColocatedThreads !== 1) {
    configs.push({ key: "colocated.t1", mode: "colocated", threads: 1 }, { key: "local.t1", mode: "local", threads: 1 }, { key: "per_role.t1", mode: "per_role", threads: 1 });
  }
  return configs;
}

/** Whether the recipe schema has this dotted key. */
export function recipeHasKey(dotted: string): boolean {
  let node: Node | undefined = recipeSchema;
  for (const part of dotted.split(".")) {
    if (node === undefined || node.kind !== "group") return false;
    node = node.fields[part];
  }
  return node !== undefined && node.kind !== "group";
}

/** Settings that keep work out of the timed window: no periodic sample grids between steps. */
export function quietSets(): string[] {
  return recipeHasKey("train.sample_every") ? ["train.sample_every=0"] : [];
}

interface DistillRun {
  times: number[];
  generator: boolean[];
  torchThreads: number;
  resolvedRecipe: string;
  checkpointDir: string;
  processes: number;
}

/**
 * Runs the variant's prepare step (if any) in `workDir` and returns the --set overrides it adds to every run;
 * logs how long it took.
 */
export async function prepareVariant(variant: StepVariant, workDir: string, env: Record<string, string>, log: (line: string) => void): Promise<string[]> {
  const prep = variant.prepare;
  if (prep === undefined) return [];
  const t0 = performance.now();
  const out = path.join(workDir, `${variant.id}-teacher`);
  const args = [CLI, "train-teacher", path.join(PROJECT_ROOT, prep.recipe), "--out", out, "--force", ...prep.sets.flatMap((s) => ["--set", s])];
  const r = await execa("node", args, { cwd: PROJECT_ROOT, env, extendEnv: true, reject: false, stdin: "ignore", timeout: 900_000 });
  if (r.exitCode !== 0) {
    throw new Error(`dmd2 train-teacher ${prep.recipe} (${variant.id}) failed with exit ${r.exitCode}:\n${String(r.stderr).split("\n").slice(-20).join("\n")}`);
  }
  log(`  ${variant.id}: teacher trained (${prep.recipe} ${prep.sets.map((s) => `--set ${s}`).join(" ")}) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return [`teacher.path=${out}`];
}

async function distillRun(variant: StepVariant, mode: "colocated" | "per_role", threads: number | null, runDir: string, env: Record<string, string>, extraSets: string[]): Promise<DistillRun> {
  const total = variant.warmup + variant.steps;
  const sets = [
    `run_dir=${runDir}`,
    `placement=${mode}`,
    `train.steps=${total}`,
    `train.checkpoint_every=${total + 1000}`,
    `train.log_every=${total + 1000}`,
    "sample.num=4",
    ...quietSets(),
    ...(threads === null ? [] : [`torch_threads=${threads}`]),
    ...variant.sets,
    ...extraSets,
  ];
  const r = await execa("node", [CLI, "distill", path.join(PROJECT_ROOT, variant.recipe), "--json", ...sets.flatMap((s) => ["--set", s])], {
    cwd: PROJECT_ROOT,
    env,
    extendEnv: true,
    reject: false,
    stdin: "ignore",
    timeout: 900_000,
  });
  if (r.exitCode !== 0) {
    throw new Error(`dmd2 distill (${variant.id}, ${mode}) failed with exit ${r.exitCode}:\n${String(r.stderr).split("\n").slice(-20).join("\n")}`);
  }
  const rows = readFileSync(path.join(runDir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { step: number; step_time_s: number; generator_update: boolean });
  const measured = rows.filter((row) => row.step > variant.warmup);
  if (measured.length !== variant.steps) throw new Error(`${runDir}/metrics.jsonl: expected ${variant.steps} steps after warm-up, found ${measured.length}`);
  const resolvedRecipe = path.join(runDir, "recipe.resolved.json");
  const resolved = JSON.parse(readFileSync(resolvedRecipe, "utf8")) as { torch_threads: number };
  return {
    times: measured.map((row) => row.step_time_s),
    generator: measured.map((row) => row.generator_update),
    torchThreads: resolved.torch_threads,
    resolvedRecipe,
    checkpointDir: path.join(runDir, "checkpoints", `step-${String(total).padStart(8, "0")}`),
    processes: mode === "colocated" ? 1 : 3,
  };
}

interface LocalReply {
  step_times_s: number[];
  first_step: number;
  ttur_ratio: number;
  torch_threads: number;
}

async function localRun(variant: StepVariant, resolvedRecipe: string, threads: number, runDir: string, env: Record<string, string>): Promise<DistillRun & { ratio: number }> {
  const reply = await runPythonBench<LocalReply>(
    ["local", "--recipe", resolvedRecipe, "--run-dir", runDir, "--steps", String(variant.steps), "--warmup", String(variant.warmup), "--threads", String(threads)],
    env,
    threads,
  );
  const ratio = reply.ttur_ratio;
  return {
    times: reply.step_times_s,
    generator: reply.step_times_s.map((_, i) => (reply.first_step + i) % ratio === 0),
    torchThreads: reply.torch_threads,
    resolvedRecipe,
    checkpointDir: "",
    processes: 1,
    ratio,
  };
}

export interface VariantOutcome {
  results: StepResult[];
  /** recipe.resolved.json and the final checkpoint of the variant's first colocated run */
  resolvedRecipe: string;
  checkpointDir: string;
}

/**
 * Runs every configuration of a variant, `rounds` times, interleaved (A B C A B C ...), and pools each
 * configuration's step times.
 */
export async function benchVariant(
  variant: StepVariant,
  workDir: string,
  env: Record<string, string>,
  defaultThreads: number,
  log: (line: string) => void,
  configs: StepConfig[] = stepConfigs(defaultThreads, variant.threads),
): Promise<VariantOutcome> {
  const extraSets = await prepareVariant(variant, workDir, env, log);
  const pooled = new Map<string, DistillRun[]>();
  let resolvedRecipe = "";
  let checkpointDir = "";
  let colocatedThreads = defaultThreads;
  for (let round = 0; round < variant.rounds; round++) {
    for (const config of configs) {
      const runDir = path.join(workDir, `${variant.id}-${config.key}-r${round}`);
      const t0 = performance.now();
      let run: DistillRun;
      if (config.mode === "local") {
        if (resolvedRecipe === "") throw new Error("internal: the local loop needs a colocated run's resolved recipe first");
        run = await localRun(variant, resolvedRecipe, config.threads ?? colocatedThreads, runDir, env);
      } else {
        run = await distillRun(variant, config.mode, config.threads, runDir, env, extraSets);
        if (config.key === "colocated.default") colocatedThreads = run.torchThreads;
        if (resolvedRecipe === "" && config.mode === "colocated") {
          resolvedRecipe = run.resolvedRecipe;
          checkpointDir = run.checkpointDir;
        }
      }
      const s = summarize(run.times);
      log(
        `  ${variant.id} ${config.key} round ${round + 1}/${variant.rounds}: median ${(s.median * 1000).toFixed(1)} ms/step ` +
          `(${run.torchThreads} thread(s), ${((performance.now() - t0) / 1000).toFixed(1)} s)`,
      );
      pooled.set(config.key, [...(pooled.get(config.key) ?? []), run]);
    }
  }
  const results = configs.map((config): StepResult => {
    const runs = pooled.get(config.key)!;
    const times = runs.flatMap((r) => r.times);
    const gen = runs.flatMap((r) => r.generator);
    const genTimes = times.filter((_, i) => gen[i]);
    const otherTimes = times.filter((_, i) => !gen[i]);
    return {
      id: `${variant.id}.${config.key}`,
      variant: variant.id,
      mode: config.mode,
      torch_threads: runs[0]!.torchThreads,
      processes: runs[0]!.processes,
      warmup: variant.warmup,
      steps_measured: variant.steps,
      rounds: variant.rounds,
      stats: summarize(times),
      generator_steps: genTimes.length > 0 ? summarize(genTimes) : null,
      other_steps: otherTimes.length > 0 ? summarize(otherTimes) : null,
      times_s: times,
    };
  });
  return { results, resolvedRecipe, checkpointDir };
}
