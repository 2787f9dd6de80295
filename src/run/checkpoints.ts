// Checkpoint folders in a run: <run_dir>/checkpoints/step-XXXXXXXX/ with each role's files and a manifest.
// A checkpoint is written into step-XXXXXXXX.tmp, the manifest (with every file's sha256, as the workers
// reported) is written last, and only then is the folder renamed into place; so a folder without ".tmp" and
// with a manifest is complete. Retention removes the oldest complete ones beyond keep_last.

import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { checkpointName, checkpointsDir, listCheckpoints } from "../runFolder.js";

export interface ManifestFile {
  name: string;
  bytes: number;
  sha256: string;
  worker: string;
}

export interface Manifest {
  format: "dmd2-checkpoint";
  version: 1;
  /** steps completed: a run resumed from here starts at this step */
  step: number;
  created: string;
  recipe_sha256: string;
  files: ManifestFile[];
}

// where checkpoints are in a run folder: runFolder.ts (dmd2 plan reads them too, and src/plan is below src/run)
export { checkpointName, checkpointsDir, listCheckpoints } from "../runFolder.js";

export function beginCheckpoint(runDir: string, step: number): string {
  const tmp = path.join(checkpointsDir(runDir), checkpointName(step) + ".tmp");
  rmSync(tmp, { recursive: true, force: true });
  // one level at a time below the run folder (checked by distill): never mkdir { recursive: true } (issue 20)
  if (!existsSync(checkpointsDir(runDir))) mkdirSync(checkpointsDir(runDir));
  mkdirSync(tmp);
  return tmp;
}

export function commitCheckpoint(tmpDir: string, manifest: Manifest): string {
  const finalDir = tmpDir.replace(/\.tmp$/, "");
  const mtmp = path.join(tmpDir, "manifest.json.tmp");
  writeFileSync(mtmp, JSON.stringify(manifest, null, 2) + "\n");
  renameSync(mtmp, path.join(tmpDir, "manifest.json"));
  if (existsSync(finalDir)) rmSync(finalDir, { recursive: true, force: true });
  renameSync(tmpDir, finalDir);
  return finalDir;
}

export function readManifest(dir: string): Manifest {
  return JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8")) as Manifest;
}

/** sha256 of a file read in 8 MiB chunks: a whole-file read fails above 2 GiB (an SD 1.5 UNet is 3.4 GB). */
export function sha256OfFile(file: string): string {
  const hash = createHash("sha256");
  const buf = Buffer.allocUnsafe(8 << 20);
  const fd = openSync(file, "r");
  try {
    for (let n = readSync(fd, buf, 0, buf.length, null); n > 0; n = readSync(fd, buf, 0, buf.length, null)) hash.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/** Files whose size or sha256 differ from the manifest (empty: intact). */
export function verifyCheckpoint(dir: string): string[] {
  const m = readManifest(dir);
  const bad: string[] = [];
  for (const f of m.files) {
    const p = path.join(dir, f.name);
    if (!existsSync(p)) {
      bad.push(`${f.name} (missing)`);
      continue;
    }
    if (statSync(p).size !== f.bytes || sha256OfFile(p) !== f.sha256) bad.push(`${f.name} (checksum mismatch)`);
  }
  return bad;
}

export function applyRetention(runDir: string, keepLast: number): string[] {
  const all = listCheckpoints(runDir);
  const drop = all.slice(0, Math.max(0, all.length - keepLast));
  for (const c of drop) rmSync(c.dir, { recursive: true, force: true });
  // leftovers of interrupted checkpoints
  const root = checkpointsDir(runDir);
  if (existsSync(root)) for (const n of readdirSync(root)) if (n.endsWith(".tmp")) rmSync(path.join(root, n), { recursive: true, force: true });
  return drop.map((c) => c.dir);
}
