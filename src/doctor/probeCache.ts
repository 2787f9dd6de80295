// The interpreter probe (probe.ts), cached: `dmd2 plan` and `dmd2 doctor` ask the interpreter the job will use,
// and importing torch takes seconds. A cached answer is kept in <DMD2_CACHE or ~/.cache/dmd2>/probe/ and used
// while the interpreter file and every folder on its sys.path (site-packages, PYTHONPATH entries) and the worker
// package's files have the same modification times, and for at most a day; installing or removing a package
// changes its site-packages folder and so makes a fresh probe. CUDA_VISIBLE_DEVICES and PYTHONPATH are part of
// the key. A cache that cannot be read or written is just not used.

import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, realpathSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { runProbe, type ProbeOutcome, type ProbeResult } from "./probe.js";

const MAX_AGE_MS = 24 * 3600 * 1000;

interface Entry {
  at: number;
  stamps: Record<string, number>;
  result: ProbeResult;
}

const mtime = (p: string): number => {
  try {
    return statSync(p).mtimeMs;
  } catch {
    return -1;
  }
};

/** The folder of the probe cache. */
export function probeCacheDir(env: NodeJS.ProcessEnv): string {
  return path.join(env.DMD2_CACHE || path.join(os.homedir(), ".cache", "dmd2"), "probe");
}

function entryFile(python: string, env: NodeJS.ProcessEnv, cwd: string | undefined): string {
  let real = python;
  try {
    real = realpathSync(python);
  } catch {
    // not there: the probe will say so, and nothing is cached
  }
  const key = JSON.stringify([python, real, env.CUDA_VISIBLE_DEVICES ?? null, env.PYTHONPATH ?? null, path.resolve(cwd ?? ".")]);
  return path.join(probeCacheDir(env), `${createHash("sha256").update(key).digest("hex").slice(0, 24)}.json`);
}

/** runProbe, answered from the cache while the interpreter's environment is unchanged. Never throws. */
export async function cachedProbe(python: string, options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<ProbeOutcome> {
  const env = options.env ?? process.env;
  const file = entryFile(python, env, options.cwd);
  try {
    const entry = JSON.parse(readFileSync(file, "utf8")) as Entry;
    const fresh = Date.now() - entry.at < MAX_AGE_MS && Object.entries(entry.stamps).every(([p, t]) => mtime(p) === t);
    if (fresh) return { ok: true, result: entry.result };
  } catch {
    // no usable entry
  }
  const outcome = await runProbe(python, options);
  if (outcome.ok) {
    const paths = [python, ...(outcome.result.stamp_paths ?? [])];
    const entry: Entry = { at: Date.now(), stamps: Object.fromEntries(paths.map((p) => [p, mtime(p)])), result: outcome.result };
    try {
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, JSON.stringify(entry));
    } catch {
      // an unwritable cache: probe again next time
    }
  }
  return outcome;
}
