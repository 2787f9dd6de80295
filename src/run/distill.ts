// `dmd2 distill`: the coordinator's run loop. It owns the recipe, the placement, the step schedule, the
// checkpoints, metrics and progress; it holds no model and does no tensor math (tensors it routes between
// processes are passed on untouched).

import { createHash } from "node:crypto";
import { appendFileSync, existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { DmdError, StorageError, storageFaultCode } from "../errors.js";
import { alarmMetrics, CollapseError, CollapseWatch, type Alarm } from "./alarms.js";
import type { Recipe, Role } from "../recipe/types.js";
import { workerLayout, roleHome } from "../recipe/workerLayout.js";
import { generatorUpdatesBefore, isCheckpointStep, isGeneratorStep } from "../schedule/schedule.js";
import { planStep, routeTensors } from "../schedule/stepPlan.js";
import { applyRetention, beginCheckpoint, commitCheckpoint, listCheckpoints, type Manifest } from "./checkpoints.js";
import { Cluster } from "./cluster.js";
import type { Reporter } from "./reporter.js";
import type { TensorFrame } from "../protocol/messages.js";
import { FINAL_TAG, TB_DIR, TrainingWatch } from "./watch.js";
import { ensureOutputDir } from "./outputPath.js";
import { checkResume, describeChanges, RESOLVED_FILE } from "./resumeCheck.js";
import { removeEventFiles } from "./tensorboard.js";

export interface DistillResult {
  runDir: string;
  steps: number;
  resumedFrom: number | null;
  checkpoint: string;
  grid: string;
  pids: Record<string, number>;
  interrupted: boolean;
}

/** The run folder, made sure of before any work (outputPath.ts): one line naming it when it cannot be written. */
export function ensureRunDir(dir: string): string {
  return ensureOutputDir(dir, { what: "run_dir", fix: "choose another run_dir or fix its permissions" });
}

/** recipe.resolved.json, written whole (a temporary file renamed over it) once the recipe is known to fit the run. */
function writeResolved(recipe: Recipe) {
  const file = path.join(recipe.run_dir, RESOLVED_FILE);
  writeFileSync(file + ".tmp", JSON.stringify(recipe, null, 2) + "\n");
  renameSync(file + ".tmp", file);
}

export function recipeHash(r: Recipe): string {
  return createHash("sha256").update(JSON.stringify(r)).digest("hex");
}

export async function distill(recipe: Recipe, reporter: Reporter, opts: { signal?: AbortSignal; recipeFile?: string } = {}): Promise<DistillResult> {
  const runDir = recipe.run_dir;
  ensureRunDir(runDir);
  const existing = listCheckpoints(runDir);
  const resume = existing.length > 0 ? existing[existing.length - 1]! : null;
  // the run's recipe.resolved.json is replaced only once the new recipe fits the run: its checkpoint (here) and
  // its teacher (the workers' setup, below)
  const changed = resume ? checkResume(recipe, resume.dir) : [];
  if (changed.length > 0) reporter.info(`resuming with changed keys: ${describeChanges(changed)}`);
  if (resume && resume.step >= recipe.train.steps) {
    reporter.info(`run ${runDir} already finished (${resume.step} steps); sampling from its last checkpoint`);
  }
  const layout = workerLayout(recipe.placement);
  const home = roleHome(layout);
  reporter.phase("starting workers", layout.map((w) => `${w.name}[${w.roles.join(",")}]`).join(" "));
  const cluster = await Cluster.start(recipe, layout, reporter, { recipeFile: opts.recipeFile ?? null });
  const watch = new TrainingWatch(recipe, resume?.step ?? 0, reporter); // TensorBoard events, sample grids
  try {
    return await cluster.guard(async () => {
      reporter.phase("setting up teacher", recipe.teacher.source === "builtin" ? "(built-in; trained on first use, then cached)" : "");
      const t = await cluster.setup("teacher", { teacher_dir: null });
      const teacherDir = String(t.teacher_dir);
      const cacheNote = recipe.data.source === "prompts" && recipe.gan.enabled ? `; the fake score encodes the real images into ${path.join(runDir, "latents")} unless they are there already (progress in its worker log)` : "";
      reporter.phase("setting up generator and fake score", `(initialised from the teacher${cacheNote})`);
      const [g] = await Promise.all([cluster.setup("generator", { teacher_dir: teacherDir }), cluster.setup("fake_score", { teacher_dir: teacherDir })]);
      await cluster.setup("discriminator", { teacher_dir: teacherDir });
      if (g.trained_params !== undefined) {
        const r = recipe.generator.lora;
        reporter.info(`generator: LoRA rank ${r.rank}, alpha ${r.alpha ?? r.rank}: ${g.trained_params.toLocaleString("en-US")} of ${g.params.toLocaleString("en-US")} parameters train (${((100 * g.trained_params) / g.params).toFixed(1)}%)`);
      }

      let start = 0;
      const metricsFile = path.join(runDir, "metrics.jsonl");
      if (resume) {
        reporter.phase("resuming", `from ${path.relative(process.cwd(), resume.dir) || resume.dir} (step ${resume.step})`);
        await cluster.restoreAll(resume.dir);
        start = resume.step;
      }
      writeResolved(recipe);
      // metrics.jsonl keeps the rows up to the step resumed from, none for a run starting at 0 (a restart or a
      // kill before the first checkpoint); TensorBoard's files of a run starting at 0 go too (a resumed run
      // marks its restart in them instead: TrainingWatch)
      truncateMetrics(metricsFile, start);
      if (start === 0) removeEventFiles(path.join(runDir, TB_DIR));
      let lastCheckpoint = resume?.dir ?? "";
      const total = recipe.train.steps;
      let interrupted = false;
      const onAbort = () => {
        interrupted = true;
      };
      opts.signal?.addEventListener("abort", onAbort);
      reporter.startSteps(total, start);
      const collapse = new CollapseWatch(); // issue 23: train.on_collapse (alarms.ts)
      let stopFor: Alarm | null = null;
      let step = start;
      for (; step < total; step++) {
        const t0 = performance.now();
        const metrics = await runStep(cluster, recipe, home, step);
        const stepTime = (performance.now() - t0) / 1000;
        const genUpdates = generatorUpdatesBefore(step + 1, recipe.ttur.ratio);
        const logLine = (step + 1) % recipe.train.log_every === 0 || step + 1 === total;
        const alarms = collapse.observe(step, metrics);
        const row = { step: step + 1, time: Date.now() / 1000, step_time_s: stepTime, generator_update: isGeneratorStep(step, recipe.ttur.ratio), gen_updates: genUpdates, ...metrics, ...alarmMetrics(alarms) };
        appendFileSync(metricsFile, JSON.stringify(row) + "\n");
        watch.row(row);
        reporter.step(step, total, genUpdates, metrics, logLine);
        for (const a of alarms) reporter.warn(a.message);
        if (recipe.train.on_collapse === "stop" && alarms.length > 0) stopFor = alarms[0]!;
        await watch.afterStep(cluster, step);
        if (isCheckpointStep(step, recipe) || interrupted || stopFor !== null) {
          lastCheckpoint = await writeCheckpoint(cluster, recipe, step + 1);
          reporter.debug(`checkpoint ${lastCheckpoint}`);
        }
        if (stopFor !== null) throw new CollapseError(stopFor, lastCheckpoint);
        if (interrupted) break;
      }
      reporter.endSteps();
      opts.signal?.removeEventListener("abort", onAbort);
      if (interrupted) {
        reporter.info(`interrupted: checkpoint ${path.relative(process.cwd(), lastCheckpoint)} written; run the same command again to resume`);
      }
      const done = Math.min(step + (interrupted ? 1 : 0), total);
      const outDir = path.join(runDir, "samples", "final");
      const grid = path.join(outDir, "grid.png");
      if (interrupted) {
        return { runDir, steps: done, resumedFrom: resume?.step ?? null, checkpoint: lastCheckpoint, grid: "", pids: cluster.pids(), interrupted: true };
      }
      reporter.phase("sampling", `${recipe.sample.num} images, ${recipe.generator.steps} step(s)`);
      await cluster.opOnce("generator", "sample", done, { seed: recipe.sample.seed, n: recipe.sample.num, steps: recipe.generator.steps, classes: null, out_dir: outDir }, [], []);
      watch.image(FINAL_TAG, done, grid);
      reporter.event("done", { run_dir: runDir, steps: done, checkpoint: lastCheckpoint, grid }, `done: ${done} steps, checkpoint ${path.relative(process.cwd(), lastCheckpoint)}, samples ${path.relative(process.cwd(), grid)}`);
      return { runDir, steps: done, resumedFrom: resume?.step ?? null, checkpoint: lastCheckpoint, grid, pids: cluster.pids(), interrupted: false };
    });
  } catch (e) {
    const errno = storageFaultCode(e);
    if (errno === null || e instanceof StorageError) throw e;
    const last = listCheckpoints(runDir).at(-1)?.dir ?? null;
    throw new StorageError(runDir, errno, last, e);
  } finally {
    try {
      watch.close();
    } catch (e) {
      if (storageFaultCode(e) === null) throw e; // a full disk was already reported; closing files may fail again
    }
    reporter.endSteps();
    await cluster.close();
    await watch.finished(); // the W&B process writing its run (watch.ts)
  }
}

/** Drops metric rows of steps after `step` (they were run after the checkpoint we resume from, and will be again). */
function truncateMetrics(file: string, step: number) {
  if (!existsSync(file)) return;
  if (step === 0) return writeFileSync(file, "");
  const keep = readFileSync(file, "utf8")
    .split("\n")
    .filter((line) => {
      if (line.trim() === "") return false;
      try {
        return (JSON.parse(line) as { step: number }).step <= step;
      } catch {
        return false; // a line cut short by a crash
      }
    });
  const tmp = file + ".tmp";
  writeFileSync(tmp, keep.map((l) => l + "\n").join(""));
  renameSync(tmp, file);
}

async function runStep(cluster: Cluster, recipe: Recipe, home: Map<Role, string>, step: number): Promise<Record<string, number | null>> {
  const phases = routeTensors(planStep(step, recipe), home);
  const held = new Map<string, TensorFrame>();
  const metrics: Record<string, number | null> = {};
  const trace: string[] | null = process.env.DMD2_TRACE ? [] : null; // docs/protocol.md, `op`
  for (const phase of phases) {
    const replies = await Promise.all(
      phase.map((call) => {
        const inputs = call.attach.map((name) => {
          const t = held.get(name);
          if (!t) throw new DmdError(`internal: tensor "${name}" was not returned before ${call.role}.${call.op}`, { code: "INTERNAL" });
          return t;
        });
        // the generator's output spread for the collapse alarms (alarms.ts); not part of the step's math
        const args = call.role === "generator" && call.op === "generate" ? { ...call.args, output_std: true } : call.args;
        return cluster.op(call.role, call.op, step, args, inputs, call.returns);
      }),
    );
    for (const call of phase) if (call.op === "update" && typeof call.args.lr === "number") metrics[`lr_${call.role}`] = call.args.lr;
    if (trace !== null) {
      phase.forEach((call, i) => {
        const t = replies[i]!.reply.body.time;
        if (Array.isArray(t) && t.length === 2) {
          trace.push(JSON.stringify({ step, worker: home.get(call.role), role: call.role, op: call.op, start: t[0], end: t[1] }));
        }
      });
    }
    for (const rep of replies) {
      Object.assign(metrics, rep.metrics);
      for (const t of rep.tensors) held.set(t.name, t);
    }
  }
  if (trace !== null && trace.length > 0) appendFileSync(process.env.DMD2_TRACE!, trace.join("\n") + "\n");
  return metrics;
}

async function writeCheckpoint(cluster: Cluster, recipe: Recipe, stepsDone: number): Promise<string> {
  const tmp = beginCheckpoint(recipe.run_dir, stepsDone);
  const files = await cluster.saveAll(tmp, stepsDone);
  const manifest: Manifest = {
    format: "dmd2-checkpoint",
    version: 1,
    step: stepsDone,
    created: new Date().toISOString(),
    recipe_sha256: recipeHash(recipe),
    files,
  };
  const dir = commitCheckpoint(tmp, manifest);
  applyRetention(recipe.run_dir, recipe.train.keep_last);
  return dir;
}

