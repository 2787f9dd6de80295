// `restart: {max: M}`: when a worker dies, raises or stops sending heartbeats, every worker is stopped (distill's
// own clean-up), fresh ones are started and the run resumes from its newest complete checkpoint, up to M times.
// Errors that would only repeat (bad input, a non-finite loss under on_nonfinite: stop, a protocol mismatch)
// are not retried. The run folder's lock (lock.ts) is taken once, before any other work, and held across the
// restarts; `--fresh` moves the old folder aside first.

import path from "node:path";
import { color as chalk } from "../colors.js";
import { DmdError, shortenValue, StorageError, storageFaultCode, UsageError, WorkerDiedError, WorkerError, WorkerTimeoutError } from "../errors.js";
import { listCheckpoints } from "./checkpoints.js";
import type { Recipe } from "../recipe/types.js";
import { existsSync, readdirSync, renameSync, rmSync } from "node:fs";
import { distill, ensureRunDir, type DistillResult } from "./distill.js";
import { acquireRunLock, LOCK_FILE } from "./lock.js";
import type { Reporter } from "./reporter.js";

const NOT_RETRIED = new Set(["NonFiniteError", "ProtocolVersionError", "RecipeError"]);

export function isRestartable(e: unknown): boolean {
  if (e instanceof WorkerDiedError || e instanceof WorkerTimeoutError) return true;
  if (e instanceof WorkerError) return !NOT_RETRIED.has(e.ename);
  return false;
}

export async function distillWithRestarts(
  recipe: Recipe,
  reporter: Reporter,
  opts: { signal?: AbortSignal; recipeFile?: string; fresh?: boolean; diskWarning?: () => string | null } = {},
): Promise<DistillResult & { restarts: number }> {
  // one writer per run folder (lock.ts), held across restarts; checked and taken before any other work
  ensureRunDir(recipe.run_dir);
  const lock = namedFaults(recipe.run_dir, () => {
    if (opts.fresh) startOver(recipe.run_dir, reporter);
    return acquireRunLock(recipe.run_dir, (line) => reporter.info(line));
  });
  try {
    return await distillLocked(recipe, reporter, opts);
  } finally {
    lock.release();
  }
}

/** A storage fault while the lock is written or the folder moved aside is the same StorageError as in the run. */
function namedFaults<T>(runDir: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    const errno = storageFaultCode(e);
    if (errno === null || e instanceof DmdError) throw e;
    throw new StorageError(runDir, errno, listCheckpoints(runDir).at(-1)?.dir ?? null, e);
  }
}

/**
 * `--fresh`: the run folder, if it holds anything, is renamed to `<run_dir>.old-<time>` (under its lock, so not
 * while another command writes there) and an empty one takes its place.
 */
export function startOver(runDir: string, reporter: Reporter): string | null {
  if (readdirSync(runDir).length === 0) return null;
  const lock = acquireRunLock(runDir, (line) => reporter.info(line));
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  let aside = `${runDir}.old-${stamp}`;
  for (let i = 2; existsSync(aside); i++) aside = `${runDir}.old-${stamp}-${i}`;
  try {
    renameSync(runDir, aside);
  } catch (e) {
    lock.release();
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new UsageError(`--fresh: cannot move ${shortenValue(runDir)} aside to ${shortenValue(aside)} (${code}): move or delete it yourself, or choose another run_dir`, { code: "FRESH" });
  }
  rmSync(path.join(aside, LOCK_FILE), { force: true }); // the lock moved with the folder: ours, released
  ensureRunDir(runDir);
  reporter.info(`--fresh: starting ${runDir} over; the old run folder is kept as ${aside}`);
  return aside;
}

async function distillLocked(
  recipe: Recipe,
  reporter: Reporter,
  opts: { signal?: AbortSignal; recipeFile?: string; diskWarning?: () => string | null },
): Promise<DistillResult & { restarts: number }> {
  // once per command, not on every restart: the checkpoints would not fit on the run folder's disk (the caller
  // passes plan's check, src/plan/plan.ts checkpointDiskWarning: run/ does not import plan/)
  const disk = opts.diskWarning?.() ?? null;
  if (disk !== null) reporter.warn(disk);
  const max = recipe.restart.max;
  for (let restarts = 0; ; restarts++) {
    try {
      return { ...(await distill(recipe, reporter, opts)), restarts };
    } catch (e) {
      if (!isRestartable(e) || restarts >= max || opts.signal?.aborted) throw e;
      const why = (e as DmdError).message;
      reporter.endSteps();
      reporter.event(
        "restart",
        { attempt: restarts + 1, max, reason: why },
        chalk.yellow(`${why}: restarting the workers from the last checkpoint (restart ${restarts + 1} of ${max})`),
      );
    }
  }
}
