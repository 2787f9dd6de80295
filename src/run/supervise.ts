// `restart: {max: M}`: when a worker dies, raises or stops sending heartbeats, every worker is stopped (distill's
// own clean-up), fresh ones are started and the run resumes from its newest complete checkpoint, up to M times.
// Errors that would only repeat (bad input, a non-finite loss under on_nonfinite: stop, a protocol mismatch)
// are not retried.

import path from "node:path";
import { color as chalk } from "../colors.js";
import { DmdError, WorkerDiedError, WorkerError, WorkerTimeoutError } from "../errors.js";
import type { Recipe } from "../recipe/types.js";
import { checkpointDiskWarning } from "../plan/plan.js";
import { distill, type DistillResult } from "./distill.js";
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
  opts: { signal?: AbortSignal; recipeFile?: string } = {},
): Promise<DistillResult & { restarts: number }> {
  // once per command, not on every restart: the checkpoints would not fit on the run folder's disk
  const disk = checkpointDiskWarning(recipe, opts.recipeFile ?? path.join(recipe.run_dir, "recipe.resolved.json"));
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
