// One job of the worker package that is not a distillation worker: `<python> -m <module> <spec.json>` (dmd2
// train-teacher, dmd2 eval, dmd2 export; docs/pipeline.md §3-4; the Python side of the scaffold is
// dmd2_worker/job.py). The spec goes in a temporary JSON file; the job answers
// with JSON lines on stdout (`{"event": ...}`) and free text on stderr. It runs in its own process group, so a
// terminal's Ctrl-C reaches only the CLI, which stops it (SIGTERM, then SIGKILL) through `signal`; it is
// killed too if the CLI exits first.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { execa } from "execa";
import { DmdError, oneLine, WorkerDiedError } from "../errors.js";
import { stopChild } from "../workers/stop.js";
import { onInterrupt } from "./interrupt.js";
import type { Reporter } from "./reporter.js";

export type JobEvent = { event: string } & Record<string, unknown>;

const STDERR_TAIL_LINES = 40;
/** A command's exit status when Ctrl-C stopped it. */
export const INTERRUPTED_EXIT_CODE = 130;

/** The job reported an error event: bad input (exit code 2) or a failure (1). */
export class PythonJobError extends DmdError {
  /** the recipe or spec key the error is about, when the job named one */
  readonly key: string | null;

  constructor(message: string, key: string | null, jobExitCode: number | null) {
    const text = oneLine(message);
    super(key !== null && !text.startsWith(key) ? `${key}: ${text}` : text, {
      code: "PYTHON_JOB_ERROR",
      exitCode: jobExitCode === 2 ? 2 : 1,
    });
    this.key = key;
  }
}

/** The job ended without its final event and without an error event (a crash, a kill): its stderr's last lines. */
export class PythonJobDiedError extends WorkerDiedError {
  override readonly hint = "run with --verbose to see all of its output";
}

export interface PythonJobOptions {
  python: string;
  /** e.g. "dmd2_worker.train_teacher" */
  module: string;
  /** written to the JSON file that is the job's only argument */
  spec: unknown;
  /** the event that ends a successful job ("done", "result"); it is returned, not passed to onEvent */
  finalEvent: string;
  /** environment on top of this process's (HF_HUB_OFFLINE=1 and PYTHONUNBUFFERED=1 are always set) */
  env?: Record<string, string>;
  /** aborting stops the job: SIGTERM, SIGKILL after 5 s (workers/stop.ts) */
  signal?: AbortSignal;
  /** every event but the final and the error event, in order */
  onEvent?: (event: JobEvent) => void;
  /** every stderr line, and stdout lines that are not events */
  onText?: (line: string) => void;
}

/** onEvent and onText for a job whose "progress" events are the user's progress lines: the rest of its output only
 * at --verbose. */
export function reportJobOutput(reporter: { info(text: string): void; debug(text: string): void }): Pick<PythonJobOptions, "onEvent" | "onText"> {
  return {
    onEvent: (e) => (e.event === "progress" ? reporter.info(String(e.message)) : reporter.debug(JSON.stringify(e))),
    onText: (line) => reporter.debug(line),
  };
}

export type JobOutcome = { interrupted: true } | { interrupted: false; final: JobEvent };

function parseEvent(line: string): JobEvent | null {
  if (!line.startsWith("{")) return null;
  try {
    const v = JSON.parse(line) as unknown;
    return typeof v === "object" && v !== null && typeof (v as { event?: unknown }).event === "string" ? (v as JobEvent) : null;
  } catch {
    return null;
  }
}

export async function runPythonJob(opts: PythonJobOptions): Promise<JobOutcome> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "dmd2-job-"));
  const specFile = path.join(dir, "spec.json");
  writeFileSync(specFile, JSON.stringify(opts.spec, null, 1) + "\n");
  const child = execa(opts.python, ["-m", opts.module, specFile], {
    env: { ...opts.env, HF_HUB_OFFLINE: "1", PYTHONUNBUFFERED: "1" },
    extendEnv: true,
    stdin: "ignore",
    buffer: false,
    reject: false,
    detached: true,
    forceKillAfterDelay: false,
  });
  const killNow = () => child.kill("SIGKILL");
  process.on("exit", killNow);
  let interrupted = false;
  const onAbort = () => {
    interrupted = true;
    void stopChild(child, child);
  };
  opts.signal?.addEventListener("abort", onAbort);

  const tail: string[] = [];
  const text = (line: string) => {
    tail.push(line);
    if (tail.length > STDERR_TAIL_LINES) tail.shift();
    opts.onText?.(line);
  };
  let final: JobEvent | null = null;
  let error: JobEvent | null = null;
  const stdoutDone = new Promise<void>((resolve) => {
    const rl = createInterface({ input: child.stdout! });
    rl.on("line", (line) => {
      const e = parseEvent(line);
      if (e === null) text(line);
      else if (e.event === "error") error = e;
      else if (e.event === opts.finalEvent) final = e;
      else opts.onEvent?.(e);
    });
    rl.on("close", resolve);
  });
  const stderrDone = new Promise<void>((resolve) => {
    const rl = createInterface({ input: child.stderr! });
    rl.on("line", text);
    rl.on("close", resolve);
  });

  try {
    const result = await child;
    await Promise.all([stdoutDone, stderrDone]);
    const label = `python -m ${opts.module}`;
    if (result.failed && result.exitCode === undefined && result.signal === undefined) {
      throw new PythonJobDiedError({ worker: label, workerExitCode: null, signal: null, stderrTail: tail, reason: `could not be started (${opts.python}): ${oneLine(String(result.message))}`, cause: result.cause });
    }
    if (interrupted) return { interrupted: true };
    const err = error as JobEvent | null;
    if (err !== null) {
      throw new PythonJobError(String(err.message ?? "failed"), typeof err.key === "string" ? err.key : null, result.exitCode ?? null);
    }
    const done = final as JobEvent | null;
    if (result.exitCode === 0 && done !== null) return { interrupted: false, final: done };
    throw new PythonJobDiedError({
      worker: label,
      workerExitCode: result.exitCode ?? null,
      signal: result.signal ?? null,
      stderrTail: tail,
      reason: result.exitCode === 0 ? `ended without a "${opts.finalEvent}" event` : undefined,
    });
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
    process.removeListener("exit", killNow);
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface CommandJobOptions extends Omit<PythonJobOptions, "signal" | "onEvent" | "onText"> {
  reporter: Reporter;
  /** what the first Ctrl-C does, e.g. "stopping the export" */
  stopping: string;
  /** the line after "interrupted: " when Ctrl-C stopped the job, e.g. "nothing exported" */
  whenInterrupted: string;
  /** default: reportJobOutput(reporter) */
  onEvent?: PythonJobOptions["onEvent"];
  onText?: PythonJobOptions["onText"];
  /** runs when the job has ended, either way, before anything is reported (e.g. ends a progress bar) */
  onEnd?: () => void;
}

/** A CLI command's Python job (dmd2 train-teacher, eval, export): Ctrl-C stops it (a second one exits at once,
 * interrupt.ts) and is reported in one line. Returns the final event without its `event` key, or null when
 * interrupted (the command then exits with INTERRUPTED_EXIT_CODE). */
export async function runCommandJob(opts: CommandJobOptions): Promise<Record<string, unknown> | null> {
  const { reporter, stopping, whenInterrupted, onEnd, ...job } = opts;
  const interrupt = onInterrupt(reporter, stopping);
  try {
    const output = reportJobOutput(reporter);
    const outcome = await runPythonJob({ ...job, onEvent: job.onEvent ?? output.onEvent, onText: job.onText ?? output.onText, signal: interrupt.signal });
    onEnd?.();
    if (outcome.interrupted) {
      reporter.info(`interrupted: ${whenInterrupted}`);
      return null;
    }
    const { event: _event, ...result } = outcome.final;
    return result;
  } finally {
    onEnd?.();
    interrupt.dispose();
  }
}
