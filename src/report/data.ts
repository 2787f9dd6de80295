// Reads what `dmd2 report` shows from a run folder: metrics.jsonl, recipe.resolved.json, the training sample grids
// (samples/step-XXXXXXXX/grid.png), the final grid and the checkpoints. Only reads; never needs a worker.

import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { UsageError } from "../errors.js";
import { listCheckpoints } from "../run/checkpoints.js";

export type Row = { step: number; time?: number } & Record<string, unknown>;

export interface Grid {
  step: number;
  file: string;
}

export interface RunData {
  runDir: string;
  recipe: Record<string, unknown> | null;
  rows: Row[];
  /** lines of metrics.jsonl that were not JSON (a line cut short by a crash) */
  badLines: number;
  grids: Grid[];
  finalGrid: string | null;
  checkpoints: Array<{ dir: string; step: number }>;
}

/**
 * Parses metrics.jsonl. A row whose step is not after the previous one starts a resumed stretch: the rows it
 * replaces (that step and later) are dropped, as TensorBoard drops them, so every step appears once.
 */
export function parseMetrics(text: string): { rows: Row[]; badLines: number } {
  let rows: Row[] = [];
  let badLines = 0;
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch {
      badLines++;
      continue;
    }
    if (typeof row !== "object" || row === null || typeof (row as Row).step !== "number") {
      badLines++;
      continue;
    }
    const r = row as Row;
    const last = rows[rows.length - 1];
    if (last && r.step <= last.step) rows = rows.filter((x) => x.step < r.step);
    rows.push(r);
  }
  return { rows, badLines };
}

export function readRun(runDir: string): RunData {
  if (!existsSync(runDir) || !statSync(runDir).isDirectory()) {
    throw new UsageError(`run folder ${runDir} does not exist: give the run_dir of a dmd2 distill run, e.g. runs/tiny`);
  }
  const metricsFile = path.join(runDir, "metrics.jsonl");
  const recipeFile = path.join(runDir, "recipe.resolved.json");
  if (!existsSync(metricsFile) && !existsSync(recipeFile)) {
    throw new UsageError(`${runDir} is not a run folder (it has no metrics.jsonl and no recipe.resolved.json): give the run_dir of a dmd2 distill run`);
  }
  let recipe: Record<string, unknown> | null = null;
  if (existsSync(recipeFile)) {
    try {
      recipe = JSON.parse(readFileSync(recipeFile, "utf8")) as Record<string, unknown>;
    } catch (e) {
      throw new UsageError(`${recipeFile} is not valid JSON (${(e as Error).message})`);
    }
  }
  const { rows, badLines } = existsSync(metricsFile) ? parseMetrics(readFileSync(metricsFile, "utf8")) : { rows: [], badLines: 0 };
  const samplesDir = path.join(runDir, "samples");
  const grids: Grid[] = [];
  if (existsSync(samplesDir)) {
    for (const name of readdirSync(samplesDir)) {
      const m = /^step-(\d{8})$/.exec(name);
      const file = path.join(samplesDir, name, "grid.png");
      if (m && existsSync(file)) grids.push({ step: Number(m[1]), file });
    }
  }
  grids.sort((a, b) => a.step - b.step);
  const finalFile = path.join(samplesDir, "final", "grid.png");
  return {
    runDir,
    recipe,
    rows,
    badLines,
    grids,
    finalGrid: existsSync(finalFile) ? finalFile : null,
    checkpoints: listCheckpoints(runDir),
  };
}

/** At most `max` items, evenly spaced, always the first and the last. */
export function evenlySpaced<T>(items: T[], max: number): T[] {
  if (items.length <= max) return items;
  if (max <= 1) return items.slice(-1);
  const out: T[] = [];
  for (let i = 0; i < max; i++) out.push(items[Math.round((i * (items.length - 1)) / (max - 1))]!);
  return out;
}
