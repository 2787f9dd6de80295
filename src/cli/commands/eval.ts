// `dmd2 eval <path>... [--data-from recipe] [--steps list] [--teacher-steps list] [--n N] [--seed N] [--repeats K]
// [--checkpoint name[,name...]|all] [--raw-weights] [--features classifier|torchscript:<file>] [--picture file.png] [--device d] [--torch-threads n] [--json]`: samples from teacher
// folders and distilled runs, scores them against held-out data (docs/pipeline.md §4) and prints a table (or,
// with --json, the result object). Returns the exit status (130 when interrupted).

import { existsSync } from "node:fs";
import path from "node:path";
import { UsageError } from "../../errors.js";
import { loadDataGroup } from "../../recipe/load.js";
import { buildSpec, type EvalSpec, type Features } from "../../eval/spec.js";
import { notes, textTable, type EvalResult } from "../../eval/table.js";
import { chooseData, readTarget } from "../../eval/targets.js";
import { INTERRUPTED_EXIT_CODE, runCommandJob } from "../../run/pythonJob.js";
import type { Reporter } from "../../run/reporter.js";
import { resolvePython } from "../../workers/python.js";
import { listCheckpoints } from "../../run/checkpoints.js";
import { pickIntactCheckpoint } from "../../run/sample.js";
import { ensureOutputFile } from "../../run/outputPath.js";

export interface EvalFlags {
  dataFrom?: string;
  /** undefined: each run's default (spec.ts defaultStudentSteps) */
  steps?: number[];
  teacherSteps: number[];
  n: number;
  seed: number;
  repeats: number;
  features: Features;
  picture?: string;
  /** checkpoints of each distilled run instead of the newest: a folder name or step number, a comma list of them,
   *  or "all" (every complete one); each scored as its own row */
  checkpoint?: string;
  /** score the raw weights instead of the average (generator.ema_decay) */
  rawWeights?: boolean;
  device: string;
  torchThreads: number;
  json?: boolean;
}

/** The checkpoints --checkpoint names for one run: [undefined] (the newest) without it, or [] when the run has none
 *  yet (the Python job says so); "all": every complete one, oldest first; else the comma list as given. */
function checkpointNames(flag: string | undefined, runDir: string): (string | undefined)[] {
  if (flag === undefined) return listCheckpoints(runDir).length === 0 ? [] : [undefined];
  if (flag.trim() === "all") {
    const all = listCheckpoints(runDir).map((c) => path.basename(c.dir));
    if (all.length === 0) throw new UsageError(`--checkpoint all: ${runDir} has no complete checkpoint yet (run dmd2 distill until it saves one)`);
    return all;
  }
  const names = flag.split(",").map((n) => n.trim());
  if (names.some((n) => n === "")) throw new UsageError(`--checkpoint ${flag}: an empty name in the list (give folder names or step numbers separated by commas, or all)`);
  return names;
}

export async function evalCommand(paths: string[], flags: EvalFlags, reporter: Reporter): Promise<number> {
  const targets = paths.map(readTarget);
  const data = chooseData(targets, flags.dataFrom === undefined ? null : loadDataGroup(flags.dataFrom));
  if (flags.features.kind !== "classifier" && !existsSync(flags.features.path)) {
    const what = flags.features.kind === "inception"
      ? "give a local copy of the TorchScript Inception FID detector, inception-2015-12-05.pt"
      : "give a TorchScript module saved with torch.jit.save";
    throw new UsageError(`--features: ${flags.features.path} does not exist (${what})`);
  }
  const checkpoints = new Map<string, string[]>();
  const students = targets.filter((t) => t.kind === "student");
  if (flags.checkpoint !== undefined && students.length === 0) throw new UsageError("--checkpoint: no distilled run among the paths (it picks a checkpoint of each run folder)");
  if (flags.rawWeights && students.length === 0) throw new UsageError("--raw-weights: no distilled run among the paths (it scores a run's raw generator weights)");
  // the checkpoints each run is scored at, their files checked against their manifests as dmd2 sample and export do (a
  // run with none is left to the Python job, which says so)
  const everyCheckpoint = flags.checkpoint?.trim() === "all";
  for (const t of students) {
    const names = checkpointNames(flags.checkpoint, t.dir);
    if (names.length === 0) continue;
    const dirs = names.map((name) => pickIntactCheckpoint(t.dir, name, (dir, bad) =>
      name === undefined ? `${dir} is damaged: ${bad} (pick another with --checkpoint)`
        : everyCheckpoint ? `--checkpoint all: ${dir} is damaged: ${bad} (name the others as a comma list)`
        : `--checkpoint ${name}: ${dir} is damaged: ${bad} (pick another)`));
    checkpoints.set(t.dir, [...new Set(dirs)]); // "10" and "step-00000010" name one folder: one row
  }
  const spec = buildSpec(targets, {
    data,
    n: flags.n,
    seed: flags.seed,
    repeats: flags.repeats,
    device: flags.device,
    torchThreads: flags.torchThreads,
    features: flags.features,
    studentSteps: flags.steps ?? null,
    teacherSteps: flags.teacherSteps,
    picture: flags.picture === undefined ? null : ensureOutputFile(flags.picture, { what: "--picture", fix: "give another --picture file" }),
    checkpoints,
    weights: flags.rawWeights ? "raw" : "ema",
  });
  const scored = (m: EvalSpec["models"][number]) => {
    if (m.kind === "teacher") return "";
    const which = [m.checkpoint === null ? null : `checkpoint ${path.basename(m.checkpoint)}`, m.weights === "raw" ? "raw weights" : null].filter((w) => w !== null);
    return which.length === 0 ? "" : ` (${which.join(", ")})`;
  };
  reporter.phase("evaluating", `${spec.models.map((m) => `${m.label} [${m.steps.join(",")}]${scored(m)}`).join(", ")}; ${spec.n} samples each${spec.repeats > 1 ? `, ${spec.repeats} draws` : ""} on ${data.source} data`);
  const result = await runCommandJob({
    reporter,
    stopping: "stopping the evaluation",
    whenInterrupted: "nothing evaluated",
    python: resolvePython(null),
    module: "dmd2_worker.evaluate",
    spec,
    finalEvent: "result",
  });
  if (result === null) return INTERRUPTED_EXIT_CODE;
  if (flags.json) process.stdout.write(JSON.stringify(result) + "\n");
  else process.stdout.write(`${textTable(result as unknown as EvalResult)}\n${notes(result as unknown as EvalResult)}\n`);
  return 0;
}
