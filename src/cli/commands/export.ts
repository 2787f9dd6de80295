// `dmd2 export <run_dir> --out DIR [--checkpoint NAME] [--lora] [--force]`: the run's distilled generator as a folder
// a stock diffusers pipeline loads (python -m dmd2_worker.export; docs/cli.md). Checks what it can before Python
// starts: the run folder, the checkpoint (verified against its manifest), the output folder.

import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { UsageError } from "../../errors.js";
import { ensureOutputParent } from "../../run/outputPath.js";
import { INTERRUPTED_EXIT_CODE, runCommandJob } from "../../run/pythonJob.js";
import type { Reporter } from "../../run/reporter.js";
import { pickIntactCheckpoint, readRunRecipe, runTeacherDir } from "../../run/sample.js";
import { resolvePython } from "../../workers/python.js";

export interface ExportFlags {
  out: string;
  checkpoint?: string;
  lora?: boolean;
  force?: boolean;
  json?: boolean;
}

export async function exportCommand(runDir: string, flags: ExportFlags, reporter: Reporter): Promise<number> {
  const recipe = readRunRecipe(runDir);
  if (recipe.teacher.source !== "diffusers") {
    throw new UsageError(`${runDir}: its teacher is the built-in network, not a diffusers model; export needs a run whose teacher.source is diffusers (a UNet2DModel or Stable Diffusion folder)`);
  }
  if (flags.lora && (recipe.generator.lora?.rank ?? null) === null) { // a run from before generator.lora: no LoRA
    throw new UsageError(`--lora: ${runDir} trained the whole network (generator.lora.rank is null); drop --lora for a full export`);
  }
  runTeacherDir(recipe); // the export copies the teacher's folder: it must still be at teacher.path (same line as dmd2 sample)
  const checkpoint = pickIntactCheckpoint(runDir, flags.checkpoint, (dir, bad) => `${dir} is damaged: ${bad} (export another --checkpoint)`);
  const out = path.resolve(flags.out);
  if (existsSync(out)) {
    if (!statSync(out).isDirectory()) throw new UsageError(`--out ${flags.out} is a file (give a folder to create)`);
    if (readdirSync(out).length > 0 && !flags.force) throw new UsageError(`--out ${flags.out} exists and is not empty (add --force to replace it, or give another folder)`);
  }
  ensureOutputParent(out, { what: "--out", fix: "give another --out folder" }, flags.out);
  reporter.phase("exporting", `${path.basename(checkpoint)} of ${runDir} to ${flags.out}${flags.lora ? " (LoRA adapters)" : ""}`);
  const result = await runCommandJob({
    reporter,
    stopping: "stopping the export",
    whenInterrupted: "nothing exported",
    python: resolvePython(recipe.python ?? null),
    module: "dmd2_worker.export",
    spec: { run_dir: path.resolve(runDir), checkpoint, out, lora: flags.lora === true },
    finalEvent: "done",
  });
  if (result === null) return INTERRUPTED_EXIT_CODE;
  const timesteps = (result.timesteps as number[]).join(", ");
  if (flags.json) process.stdout.write(JSON.stringify(result) + "\n");
  else reporter.info(`exported to ${flags.out}: timesteps [${timesteps}]; ${path.join(flags.out, "README.md")} says how to sample it`);
  return 0;
}
