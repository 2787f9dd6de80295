// The spec `python -m dmd2_worker.evaluate` reads (docs/pipeline.md §4), built from the targets and the
// command's options.

import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import type { DataConfig } from "../recipe/types.js";
import type { Target } from "./targets.js";

/** classifier: the project's CNN; torchscript: a user's module; inception: a local inception-2015-12-05.pt FID detector. */
export type Features = { kind: "classifier" } | { kind: "torchscript" | "inception"; path: string };

type EvalModel =
  | { label: string; kind: "teacher"; path: string; steps: number[]; guidance_scale: number }
  | { label: string; kind: "student"; run_dir: string; steps: number[]; checkpoint: string | null; weights: StudentWeights };

/** ema: the average of the weights when the run kept one (generator.ema_decay > 0), else the raw ones; raw: the raw ones */
export type StudentWeights = "ema" | "raw";

/** A picture row: ["real"] or [label, steps]. */
type PictureRow = ["real"] | [string, number];

export interface EvalSpec {
  data: DataConfig;
  n: number;
  seed: number;
  /** draws of n samples (seeds seed, seed + 1, ...); FD: their mean */
  repeats: number;
  batch_size: number;
  device: string;
  torch_threads: number;
  features: Features;
  cache_dir: string | null;
  models: EvalModel[];
  picture: { path: string; rows: PictureRow[]; classes: number[] | null } | null;
}

export interface SpecOptions {
  data: DataConfig;
  n: number;
  seed: number;
  repeats: number;
  device: string;
  torchThreads: number;
  features: Features;
  /** null: each run at the step counts 1, 2, 4 up to the one it was trained for, and that one */
  studentSteps: number[] | null;
  teacherSteps: number[];
  /** the PNG to write, absolute */
  picture: string | null;
  /** each run's checkpoint folders to score (absolute), by run folder, one model row each; a run not in it: its
   *  newest */
  checkpoints?: ReadonlyMap<string, readonly string[]>;
  weights?: StudentWeights;
}

const MAX_BATCH = 500;

/** "teacher" / "student" when a kind has one target, else the folder names (made unique). */
function labels(targets: readonly Target[]): string[] {
  const count = (kind: Target["kind"]) => targets.filter((t) => t.kind === kind).length;
  const seen = new Map<string, number>();
  return targets.map((t) => {
    const base = count(t.kind) === 1 ? t.kind : path.basename(t.dir);
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    return n === 1 ? base : `${base}-${n}`;
  });
}

/** The classes a picture shows, one column each; null for unconditional data (a folder without subfolders). */
function pictureClasses(data: DataConfig): number[] | null {
  const range = (k: number) => Array.from({ length: k }, (_, i) => i);
  if (data.source === "gmm") return range(data.gmm.num_classes);
  if (data.source === "digits") return range(10);
  const dir = data.folder.path!;
  const classes = existsSync(dir) ? readdirSync(dir).filter((f) => statSync(path.join(dir, f)).isDirectory()).length : 0;
  return classes > 0 ? range(classes) : null;
}

/** Real images, each teacher at its most steps, each student at its fewest and most. */
function pictureRows(models: readonly EvalModel[]): PictureRow[] {
  const rows: PictureRow[] = [["real"]];
  for (const m of models) {
    const steps = m.kind === "teacher" ? [Math.max(...m.steps)] : [...new Set([Math.min(...m.steps), Math.max(...m.steps)])];
    for (const s of steps) rows.push([m.label, s]);
  }
  return rows;
}

/** The step counts a distilled run is evaluated at by default: 1, 2, 4 up to its trained count, and that count. */
export function defaultStudentSteps(trained: number | null): number[] {
  const n = trained ?? 4;
  return [...new Set([...[1, 2, 4].filter((s) => s < n), n])];
}

/** "<label>@<step>" for a run scored at several checkpoints (step-00003500 -> 3500; another name as it is). */
function checkpointLabel(label: string, checkpointDir: string): string {
  const name = path.basename(checkpointDir);
  const step = /^step-(\d+)$/.exec(name);
  return `${label}@${step ? Number(step[1]) : name}`;
}

export function buildSpec(targets: readonly Target[], o: SpecOptions): EvalSpec {
  const names = labels(targets);
  const models = targets.flatMap((t, i): EvalModel[] => {
    if (t.kind === "teacher") return [{ label: names[i]!, kind: "teacher", path: t.dir, steps: o.teacherSteps, guidance_scale: 1 }];
    const steps = o.studentSteps ?? defaultStudentSteps(t.generatorSteps);
    const weights = o.weights ?? "ema";
    const given = o.checkpoints?.get(t.dir) ?? [];
    const checkpoints: (string | null)[] = given.length > 0 ? [...given] : [null]; // null: the newest
    const several = checkpoints.length > 1;
    return checkpoints.map((c) => ({ label: several && c !== null ? checkpointLabel(names[i]!, c) : names[i]!, kind: "student", run_dir: t.dir, steps, checkpoint: c, weights }));
  });
  return {
    data: o.data,
    n: o.n,
    seed: o.seed,
    repeats: o.repeats,
    batch_size: Math.min(o.n, MAX_BATCH),
    device: o.device,
    torch_threads: o.torchThreads,
    features: o.features,
    cache_dir: null,
    models,
    picture: o.picture === null ? null : { path: o.picture, rows: pictureRows(models), classes: pictureClasses(o.data) },
  };
}
