// `dmd2 report <run_dir> [--out file.html] [--json]`: writes one self-contained HTML page about a run (loss
// curves, the training sample grids over time, the final grid, the resolved recipe). Works on a finished run and
// on one still training (it shows what is there). A folder that is not a run folder is a UsageError (exit 2).

import { renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { UsageError } from "../errors.js";
import { ensureOutputFile } from "../run/outputPath.js";
import { readRun } from "./data.js";
import { MAX_TRAINING_GRIDS, renderReport } from "./html.js";

export interface ReportResult {
  out: string;
  bytes: number;
  steps: number;
  grids: number;
  final_grid: boolean;
}

export function writeReport(runDir: string, out?: string): ReportResult {
  const data = readRun(runDir); // a folder that is not a run folder: its own line first
  const file = ensureOutputFile(out ?? path.join(runDir, "report.html"), { what: out === undefined ? "the report" : "--out", fix: out === undefined ? "give --out <file>" : "give another --out file" }, out);
  const html = renderReport(data);
  try {
    const tmp = `${file}.tmp-${process.pid}`;
    writeFileSync(tmp, html);
    renameSync(tmp, file);
  } catch (e) {
    throw new UsageError(`cannot write ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): choose another --out`);
  }
  return {
    out: file,
    bytes: Buffer.byteLength(html),
    steps: data.rows[data.rows.length - 1]?.step ?? 0,
    grids: Math.min(data.grids.length, MAX_TRAINING_GRIDS),
    final_grid: data.finalGrid !== null,
  };
}

export function reportCommand(runDir: string, opts: { out?: string; json?: boolean }): void {
  const res = writeReport(runDir, opts.out);
  if (opts.json) {
    process.stdout.write(JSON.stringify({ event: "result", ...res }) + "\n");
    return;
  }
  const rel = path.relative(process.cwd(), res.out) || res.out;
  process.stdout.write(
    `wrote ${rel} (${Math.ceil(res.bytes / 1024)} KiB: ${res.steps} steps, ${res.grids} training grid(s)${res.final_grid ? ", the final grid" : ""})\n`,
  );
}
