// Where a run folder keeps its checkpoints: <run_dir>/checkpoints/step-XXXXXXXX/, complete once it holds a
// manifest.json (run/checkpoints.ts writes and verifies them; dmd2 plan sizes them).

import { existsSync, readdirSync } from "node:fs";
import path from "node:path";

export const checkpointsDir = (runDir: string) => path.join(runDir, "checkpoints");
export const checkpointName = (step: number) => `step-${String(step).padStart(8, "0")}`;

/** The complete checkpoints of a run, oldest first. */
export function listCheckpoints(runDir: string): { dir: string; step: number }[] {
  const root = checkpointsDir(runDir);
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((n) => /^step-\d{8}$/.test(n) && existsSync(path.join(root, n, "manifest.json")))
    .map((n) => ({ dir: path.join(root, n), step: Number(n.slice(5)) }))
    .sort((a, b) => a.step - b.step);
}
