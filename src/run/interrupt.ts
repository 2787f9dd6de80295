// Ctrl-C (and SIGTERM) for the commands that run workers or a Python job: the first signal aborts the command's
// signal, which then stops in order (distill: after the current step and a checkpoint); a second one exits at
// once with 130 (children are killed on exit).

import { color as chalk } from "../colors.js";
import type { Reporter } from "./reporter.js";

export interface Interrupt {
  signal: AbortSignal;
  /** removes the signal handlers */
  dispose(): void;
}

/** `action`: what the first signal does, e.g. "stopping the evaluation". */
export function onInterrupt(reporter: Reporter, action: string): Interrupt {
  const ac = new AbortController();
  const handler = (sig: NodeJS.Signals) => {
    if (!ac.signal.aborted) {
      reporter.info(chalk.yellow(`${sig}: ${action} (press Ctrl-C again to stop at once)`));
      ac.abort();
    } else {
      process.stderr.write(`${sig} again: stopping at once\n`);
      process.exit(130);
    }
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
  return {
    signal: ac.signal,
    dispose() {
      process.removeListener("SIGINT", handler);
      process.removeListener("SIGTERM", handler);
    },
  };
}
