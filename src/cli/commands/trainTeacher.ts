// `dmd2 train-teacher <recipe> [--set key=value ...] [--out dir] [--force]`: validates a teacher recipe
// (docs/pipeline.md §3), runs `python -m dmd2_worker.train_teacher` on its resolved form and says how to
// distil from the folder it wrote. Returns the exit status (130 when interrupted).

import { existsSync } from "node:fs";
import path from "node:path";
import { UsageError } from "../../errors.js";
import { showPath } from "../../recipe/files.js";
import { loadTeacherRecipe } from "../../recipe/load.js";
import { ensureOutputParent } from "../../run/outputPath.js";
import { INTERRUPTED_EXIT_CODE, runCommandJob } from "../../run/pythonJob.js";
import type { Reporter } from "../../run/reporter.js";
import { TrainProgress, type TrainStart, type TrainStep } from "../../run/trainProgress.js";
import { resolvePython } from "../../workers/python.js";

export interface TrainTeacherFlags {
  set: string[];
  out?: string;
  force?: boolean;
}

/** How to use the teacher folder `out`: printed on stdout, ready to paste. */
function usage(out: string): string {
  return [
    "Distil from it with these keys in a distillation recipe (a relative path starts at the recipe's folder):",
    "  teacher:",
    "    source: diffusers",
    `    path: ${out}`,
    `Evaluate it: dmd2 eval ${showPath(out)}`,
    "",
  ].join("\n");
}

export async function trainTeacherCommand(recipeFile: string, flags: TrainTeacherFlags, reporter: Reporter): Promise<number> {
  const recipe = loadTeacherRecipe(recipeFile, { overrides: flags.set });
  if (flags.out !== undefined) recipe.out = path.resolve(flags.out);
  if (existsSync(recipe.out) && !flags.force) {
    throw new UsageError(`${showPath(recipe.out)} already exists (pass --force to replace it, or write elsewhere with --out <dir>)`, { code: "TEACHER_EXISTS" });
  }
  ensureOutputParent(recipe.out, { what: "the teacher folder", fix: "write elsewhere with --out <dir>" }, showPath(recipe.out));
  const python = resolvePython(recipe.python);
  const spec = flags.force ? { ...recipe, force: true } : recipe;
  reporter.phase("training teacher", `${recipe.name}: ${recipe.data.source} data, UNet [${recipe.model.block_out_channels.join(", ")}], ${recipe.train.steps} steps`);

  const progress = new TrainProgress(reporter);
  const result = await runCommandJob({
    reporter,
    stopping: "stopping training",
    whenInterrupted: `no teacher written (${showPath(recipe.out)} is left as it was)`,
    python,
    module: "dmd2_worker.train_teacher",
    spec,
    finalEvent: "done",
    onEvent: (e) => {
      if (e.event === "start") progress.start(e as unknown as TrainStart);
      else if (e.event === "progress") progress.progress(e as unknown as TrainStep);
      else reporter.debug(JSON.stringify(e));
    },
    onText: (line) => progress.text(line),
    onEnd: () => progress.end(),
  });
  if (result === null) return INTERRUPTED_EXIT_CODE;
  const { out, seconds, final_loss } = result as { out: string; seconds: number; final_loss: number };
  reporter.event("done", { out, seconds, final_loss }, `done: teacher written to ${showPath(out)} in ${seconds.toFixed(0)} s (final loss ${final_loss.toPrecision(4)})`);
  if (reporter.mode !== "json" && !reporter.quiet) process.stdout.write(usage(out));
  return 0;
}
