// W&B logging of a run (`logging.wandb`, docs/recipe.md "W&B"): a small Python process
// (python-worker/dmd2_worker/wandb_log.py, which says why it is a process of its own) fed the same scalars and
// grids as the TensorBoard writer, one JSON line each over its stdin. Best effort like TensorBoard: when it cannot
// run (wandb not installed, a failed login online) that is one warning line and the run goes on without it.

import { spawn, type ChildProcess } from "node:child_process";
import type { Recipe } from "../recipe/types.js";
import { resolvePython } from "../workers/python.js";
import type { Reporter } from "./reporter.js";

/** wandb_log.py's exit code when wandb cannot be imported */
const EXIT_NO_WANDB = 3;

export class WandbLogger {
  private child: ChildProcess | null;
  private readonly exited: Promise<void>;
  private closing = false;
  private stderr = "";

  private constructor(python: string, runDir: string, private readonly reporter: Reporter) {
    const child = spawn(python, ["-m", "dmd2_worker.wandb_log", runDir], { stdio: ["pipe", "ignore", "pipe"], env: { ...process.env, PYTHONUNBUFFERED: "1" } });
    this.child = child;
    child.stderr!.on("data", (d: Buffer) => {
      this.stderr = (this.stderr + d.toString("utf8")).slice(-8192);
    });
    child.stdin!.on("error", () => {
      // it exited early: reported when it exits
    });
    this.exited = new Promise((resolve) => {
      let reported = false;
      const done = (code: number | null, why?: string) => {
        // exit code 0 after close() is the normal end; anything else is one warning
        if (!reported && (code !== 0 || !this.closing)) this.failed(code, why);
        reported = true;
        this.child = null;
        resolve();
      };
      child.on("error", (e) => done(null, e.message));
      child.on("exit", (code) => done(code));
    });
  }

  /** The logger of `recipe`'s run, or null when logging.wandb is off (no project, or mode disabled). */
  static start(recipe: Recipe, reporter: Reporter): WandbLogger | null {
    const w = recipe.logging.wandb;
    if (w.project === null || w.mode === "disabled") return null;
    const logger = new WandbLogger(resolvePython(recipe.python), recipe.run_dir, reporter);
    logger.send({ config: recipe }); // the run's config: the resolved recipe
    return logger;
  }

  private failed(code: number | null, why?: string) {
    const last = this.stderr.split("\n").map((l) => l.trim()).filter((l) => l !== "").at(-1);
    // exit code 3: wandb is not installed, which its one line says with the fix
    if (code === EXIT_NO_WANDB && last !== undefined) this.reporter.warn(last);
    else this.reporter.warn(`W&B logging stopped (${why ?? `its process exited with code ${code}`}): ${last ?? "no message"}`);
  }

  private send(msg: Record<string, unknown>) {
    if (this.child?.stdin?.writable) this.child.stdin.write(JSON.stringify(msg) + "\n");
  }

  /** TensorBoard's scalars of one step, tag -> value. */
  scalars(step: number, time: number, values: ReadonlyArray<readonly [string, number | null]>) {
    this.send({ step, time, scalars: Object.fromEntries(values) });
  }

  image(tag: string, step: number, file: string) {
    this.send({ step, image: tag, file });
  }

  /** Ends the W&B run: closes its input and waits for it to finish writing. */
  async close(): Promise<void> {
    this.closing = true;
    this.child?.stdin?.end();
    await this.exited;
  }
}
