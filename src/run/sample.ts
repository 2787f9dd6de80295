// `dmd2 sample`: images from a run's distilled generator. Starts one worker hosting the generator, loads the
// chosen checkpoint (verified against its manifest first) and asks it to sample.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { UsageError } from "../errors.js";
import { overrideResolved } from "../recipe/load.js";
import type { Recipe } from "../recipe/types.js";
import { checkpointName, listCheckpoints, verifyCheckpoint } from "./checkpoints.js";
import { Cluster } from "./cluster.js";
import type { Reporter } from "./reporter.js";

export interface SampleOptions {
  checkpoint?: string;
  steps?: number;
  num: number;
  seed: number;
  classes?: number[];
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

export async function sample(runDir: string, opts: SampleOptions, reporter: Reporter): Promise<{ outDir: string; grid: string; checkpoint: string }> {
  const recipe = overrideResolved(readRunRecipe(path.resolve(runDir)), opts.set ?? []);
  const ckpt = pickCheckpoint(path.resolve(runDir), opts.checkpoint);
  const bad = verifyCheckpoint(ckpt);
  if (bad.length > 0) throw new UsageError(`checkpoint ${ckpt} is damaged: ${bad.join(", ")} (pick another with --checkpoint)`);
  const steps = opts.steps ?? recipe.generator.steps;
  if (!Number.isInteger(steps) || steps < 1 || steps > 4) throw new UsageError(`--steps ${opts.steps}: must be 1, 2, 3 or 4`);
  const k = recipe.data.gmm.num_classes;
  for (const c of opts.classes ?? []) if (!Number.isInteger(c) || c < 0 || c >= k) throw new UsageError(`--classes: ${c} is not a class of this run (0..${k - 1})`);
  const outDir = path.resolve(opts.out ?? path.join(recipe.run_dir, "samples", `${path.basename(ckpt)}-${steps}step-seed${opts.seed}`));
  reporter.phase("starting generator worker");
  const cluster = await Cluster.start(recipe, [{ name: "generator", roles: ["generator"] }], reporter, { logTag: "sample" });
  try {
    return await cluster.guard(async () => {
      await cluster.setup("generator", { teacher_dir: path.join(recipe.run_dir, "teacher") });
      reporter.phase("loading", path.relative(process.cwd(), ckpt) || ckpt);
      await cluster.restoreAll(ckpt);
      reporter.phase("sampling", `${opts.num} images, ${steps} step(s), seed ${opts.seed}`);
      await cluster.op("generator", "sample", 0, { seed: opts.seed, n: opts.num, steps, classes: opts.classes ?? null, out_dir: outDir }, [], []);
      const grid = path.join(outDir, "grid.png");
      reporter.event("done", { out_dir: outDir, grid, checkpoint: ckpt }, `wrote ${opts.num} images to ${path.relative(process.cwd(), outDir) || outDir} (grid: ${path.relative(process.cwd(), grid)})`);
      return { outDir, grid, checkpoint: ckpt };
    });
  } finally {
    await cluster.close();
  }
}
