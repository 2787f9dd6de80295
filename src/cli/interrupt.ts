// Ctrl-C (and SIGTERM) for commands that run one Python job: the first signal aborts the job, which is then
// stopped in order; a second one exits at once (the job is killed on exit).

import { color as chalk } from "../colors.js";
import type { Reporter } from "../run/reporter.js";

export interface Interrupt {
  signal: AbortSignal;
  /** removes the signal handlers */
  dispose(): void;
}

export function onInterrupt(reporter: Reporter, what: string): Interrupt {
  const ac = new AbortController();
  const handler = (sig: NodeJS.Signals) => {
    if (!ac.signal.aborted) {
      reporter.info(chalk.yellow(`${sig}: stopping ${what} (press Ctrl-C again to exit at once)`));
      ac.abort();
    } else {
      process.stderr.write(`${sig} again: exiting at once\n`);
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
