// `dmd2 sample`: images from a run's distilled generator. Starts one worker hosting the generator, loads the
// chosen checkpoint (verified against its manifest first) and asks it to sample.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { DmdError, storageFaultCode, storageFaultWords, UsageError } from "../errors.js";
import { readTeacherClasses } from "../unet/unet2d.js";
import { overrideResolved } from "../recipe/load.js";
import { readPromptsFile } from "../recipe/prompts.js";
import type { Recipe } from "../recipe/types.js";
import { checkpointName, listCheckpoints, verifyCheckpoint } from "./checkpoints.js";
import { Cluster } from "./cluster.js";
import { ensureOutputDir } from "./outputPath.js";
import type { Reporter } from "./reporter.js";

export interface SampleOptions {
  checkpoint?: string;
  steps?: number;
  /** default: one image per prompt given, else 16 */
  num?: number;
  seed: number;
  classes?: number[];
  /** text prompts (`--prompt`, repeatable) for a run distilled from a text-to-image teacher */
  prompt?: string[];
  /** a prompts file (`--prompts-file`): UTF-8, one a line, blank lines and # comments skipped */
  promptsFile?: string;
  out?: string;
  /** `--set key=value` overrides of the run's resolved recipe (device, python, ...) */
  set?: string[];
}

export function readRunRecipe(runDir: string): Recipe {
  const file = path.join(runDir, "recipe.resolved.json");
  if (!existsSync(runDir)) throw new UsageError(`run folder ${runDir} does not exist (give the run_dir of a dmd2 distill run, e.g. runs/tiny)`);
  if (!existsSync(file)) throw new UsageError(`${runDir} is not a dmd2 run folder: no recipe.resolved.json (give the run_dir of a dmd2 distill run)`);
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Recipe;
  } catch (e) {
    throw new UsageError(`${file} is not valid JSON (${(e as Error).message}); the run folder is damaged`);
  }
}

/** The folder the generator is initialised from: the built-in teacher's copy in the run folder, or the diffusers teacher folder. */
export function runTeacherDir(recipe: Recipe): string {
  if (recipe.teacher.source === "builtin") return path.join(recipe.run_dir, "teacher");
  const dir = recipe.teacher.path!;
  if (!existsSync(dir)) throw new UsageError(`the run's teacher folder ${dir} does not exist (teacher.path of ${path.join(recipe.run_dir, "recipe.resolved.json")}; put the teacher back there)`);
  return dir;
}

/**
 * The classes the run's generator is conditioned on (docs/pipeline.md §1): gmm's data.gmm.num_classes, digits'
 * 10, a folder's as the teacher recorded them (dmd2_teacher.json's num_classes, else its UNet's
 * num_class_embeds); null: unconditional.
 */
export function runClassCount(recipe: Recipe): number | null {
  switch (recipe.data.source) {
    case "gmm":
      return recipe.data.gmm.num_classes;
    case "digits":
      return 10;
    case "folder": {
      const read = readTeacherClasses(runTeacherDir(recipe));
      if ("error" in read) throw new UsageError(`cannot tell the run's classes: ${read.error}`);
      return read.numClasses;
    }
    case "prompts":
      return null; // conditioned on text (--prompt), not on classes
  }
}

/** --classes against the run's classes: each a whole number in 0..K-1; none for an unconditional generator. */
export function checkClasses(classes: readonly number[] | undefined, k: number | null): void {
  if (classes === undefined) return;
  if (k === null) throw new UsageError("--classes: this run's generator is unconditional (its teacher has no classes); drop --classes");
  for (const c of classes) if (!Number.isInteger(c) || c < 0 || c >= k) throw new UsageError(`--classes: ${c} is not a class of this run (0..${k - 1})`);
}

/**
 * The prompts to sample with: `--prompt`s, then `--prompts-file`'s; null when neither is given (a text run then
 * samples its recipe's prompts file). Refused for a run conditioned on classes, as --classes is for a text run.
 */
export function samplePrompts(recipe: Recipe, opts: Pick<SampleOptions, "prompt" | "promptsFile" | "classes">): string[] | null {
  const given = [...(opts.prompt ?? [])];
  if (opts.promptsFile !== undefined) {
    const read = readPromptsFile(path.resolve(opts.promptsFile));
    if ("error" in read) throw new UsageError(`--prompts-file ${opts.promptsFile} ${read.error}`);
    given.push(...read.prompts);
  }
  const text = recipe.data.source === "prompts";
  if (text && opts.classes !== undefined) throw new UsageError("--classes: this run's generator is conditioned on text (data.source prompts); give --prompt or --prompts-file instead");
  if (!text && (opts.prompt?.length ?? 0) + (opts.promptsFile === undefined ? 0 : 1) > 0) {
    throw new UsageError(`--prompt: this run's generator is conditioned on ${runClassCount(recipe) === null ? "nothing (unconditional)" : "classes (--classes)"}, not on text; only runs with data.source prompts take prompts`);
  }
  return given.length > 0 ? given : null;
}

export function pickCheckpoint(runDir: string, name?: string): string {
  const all = listCheckpoints(runDir);
  if (name === undefined) {
    if (all.length === 0) throw new UsageError(`${runDir} has no complete checkpoint yet (run dmd2 distill first, or let it reach train.checkpoint_every)`);
    return all[all.length - 1]!.dir;
  }
  const byName = /^\d+$/.test(name) ? checkpointName(Number(name)) : name;
  const hit = all.find((c) => path.basename(c.dir) === byName || c.dir === path.resolve(name));
  if (!hit) {
    const known = all.map((c) => path.basename(c.dir)).join(", ") || "none";
    throw new UsageError(`--checkpoint ${name}: no such complete checkpoint in ${runDir} (available: ${known})`);
  }
  return hit.dir;
}

/** pickCheckpoint, then its files checked against the manifest: a damaged one is a UsageError, worded by `damaged`
 *  (the checkpoint folder, its bad files joined) so each command names its own fix. */
export function pickIntactCheckpoint(runDir: string, name: string | undefined, damaged: (dir: string, bad: string) => string): string {
  const dir = pickCheckpoint(runDir, name);
  const bad = verifyCheckpoint(dir);
  if (bad.length > 0) throw new UsageError(damaged(dir, bad.join(", ")));
  return dir;
}

export async function sample(runDir: string, opts: SampleOptions, reporter: Reporter): Promise<{ outDir: string; grid: string; checkpoint: string }> {
  const recipe = overrideResolved(readRunRecipe(path.resolve(runDir)), opts.set ?? []);
  const steps = opts.steps ?? recipe.generator.steps;
  if (!Number.isInteger(steps) || steps < 1 || steps > 4) throw new UsageError(`--steps ${opts.steps}: must be 1, 2, 3 or 4`);
  const prompts = samplePrompts(recipe, opts);
  checkClasses(opts.classes, runClassCount(recipe));
  const num = opts.num ?? prompts?.length ?? 16;
  const teacherDir = runTeacherDir(recipe);
  const ckpt = pickIntactCheckpoint(path.resolve(runDir), opts.checkpoint, (dir, bad) => `checkpoint ${dir} is damaged: ${bad} (pick another with --checkpoint)`);
  const outDir = path.resolve(opts.out ?? path.join(recipe.run_dir, "samples", `${path.basename(ckpt)}-${steps}step-seed${opts.seed}`));
  ensureOutputDir(outDir, { what: opts.out === undefined ? "the samples folder" : "--out", fix: opts.out === undefined ? "give --out <dir>" : "give another --out folder" }, opts.out);
  reporter.phase("starting generator worker");
  const cluster = await Cluster.start(recipe, [{ name: "generator", roles: ["generator"] }], reporter, { logTag: "sample", replicas: false });
  try {
    return await cluster.guard(async () => {
      await cluster.setup("generator", { teacher_dir: teacherDir });
      reporter.phase("loading", path.relative(process.cwd(), ckpt) || ckpt);
      await cluster.restoreAll(ckpt);
      reporter.phase("sampling", `${num} images, ${steps} step(s), seed ${opts.seed}${prompts === null ? "" : `, ${prompts.length} prompt(s)`}`);
      const args = { seed: opts.seed, n: num, steps, classes: opts.classes ?? null, out_dir: outDir, ...(prompts === null ? {} : { prompts }) };
      await cluster.opOnce("generator", "sample", 0, args, [], []);
      const grid = path.join(outDir, "grid.png");
      reporter.event("done", { out_dir: outDir, grid, checkpoint: ckpt }, `wrote ${num} images to ${path.relative(process.cwd(), outDir) || outDir} (grid: ${path.relative(process.cwd(), grid)})`);
      return { outDir, grid, checkpoint: ckpt };
    });
  } catch (e) {
    const errno = storageFaultCode(e);
    if (errno === null || (e instanceof DmdError && e.code === "STORAGE")) throw e;
    throw new DmdError(`cannot write the samples to ${outDir}: ${storageFaultWords(errno)} (${errno})`, {
      code: "STORAGE",
      cause: e,
      hint: `${errno === "ENOSPC" || errno === "EDQUOT" ? "free some space" : "make the folder writable"} (or give another --out) and run the same command again`,
    });
  } finally {
    await cluster.close();
  }
}
