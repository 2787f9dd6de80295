/**
 * One worker process: `python -m dmd2_worker --name NAME --connect ENDPOINT --heartbeat ENDPOINT
 * [--heartbeat-interval S]` (docs/protocol.md §1). Its stdout and stderr are appended to a log file and the
 * last 40 stderr lines kept for error messages. Stopping is graceful, then forced: SIGTERM, then SIGKILL after
 * a grace period (stop.ts, as for the Python jobs). A process 'exit' handler (and a handler for fatal signals
 * nobody else handles) SIGKILLs any worker still running, so none is left behind.
 */
import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import path from "node:path";
import { execa, type ResultPromise } from "execa";
import { DmdError, WorkerDiedError } from "../errors.js";
import { STOP_GRACE_MS, stopChild } from "./stop.js";

export const STDERR_TAIL_LINES = 40;
/** How long to wait, after the process exits, for the rest of its stderr. */
export const STDERR_FLUSH_MS = 100;

export interface WorkerExit {
  /** Exit code, null when ended by a signal. */
  code: number | null;
  /** The signal that ended it (e.g. "SIGKILL"), else null. */
  signal: string | null;
}

export interface SpawnWorkerOptions {
  python: string;
  name: string;
  roles: readonly string[];
  requestEndpoint: string;
  heartbeatEndpoint: string;
  /** Seconds between heartbeats (passed as --heartbeat-interval); omitted: the worker's default. */
  heartbeatInterval?: number | null;
  /** File the worker's stdout and stderr are appended to; null: not logged to a file. */
  logFile?: string | null;
  /** Extra environment variables (on top of this process's environment). */
  env?: Record<string, string | undefined>;
  /** Working directory; default the current one. */
  cwd?: string;
  /**
   * What comes between the interpreter and the worker's arguments; default ["-m", "dmd2_worker"]. Tests
   * use a fixture script here.
   */
  entry?: readonly string[];
  /**
   * Run the worker in its own process group (default true), so that a terminal's Ctrl-C reaches only the
   * coordinator. This module kills it when the coordinator exits either way.
   */
  detached?: boolean;
}

// --- never leave a process behind --------------------------------------------------------------------------
//
// Workers run in their own process group (detached), so a Ctrl-C in the terminal reaches only the
// coordinator, which can then finish the step, checkpoint and shut them down in order. In exchange the
// coordinator must end them itself whenever it ends: on 'exit', and on a fatal signal that nobody else
// handles (then the signal is raised again, so this process still dies of it).

const live = new Set<WorkerProcess>();
let exitHandlerInstalled = false;
const FATAL_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

function killAll(): void {
  for (const worker of live) worker.kill("SIGKILL");
}

function installExitHandler(): void {
  if (exitHandlerInstalled) return;
  exitHandlerInstalled = true;
  process.on("exit", killAll);
  for (const signal of FATAL_SIGNALS) {
    const onSignal = (): void => {
      if (process.listenerCount(signal) > 1) return; // handled elsewhere (e.g. the CLI's graceful stop)
      killAll();
      process.removeListener(signal, onSignal);
      process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}

/** Workers started by this process that have not exited yet. */
export function liveWorkers(): WorkerProcess[] {
  return [...live];
}

// --- stderr tail -------------------------------------------------------------------------------------------

class LineTail {
  private readonly lines: string[] = [];
  private partial = "";

  constructor(private readonly max: number) {}

  push(chunk: string): void {
    const parts = (this.partial + chunk).split(/\r?\n/);
    this.partial = parts.pop() ?? "";
    for (const line of parts) this.add(line);
  }

  end(): void {
    if (this.partial !== "") this.add(this.partial);
    this.partial = "";
  }

  private add(line: string): void {
    this.lines.push(line);
    if (this.lines.length > this.max) this.lines.shift();
  }

  snapshot(): string[] {
    return this.partial === "" ? [...this.lines] : [...this.lines, this.partial].slice(-this.max);
  }
}

// --- the process -------------------------------------------------------------------------------------------

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class WorkerProcess {
  readonly name: string;
  readonly roles: readonly string[];
  readonly pid: number;
  readonly logFile: string | null;
  /** Resolves when the process has exited (and its stderr was read, or STDERR_FLUSH_MS passed). Never rejects. */
  readonly exited: Promise<WorkerExit>;
  private exitInfo: WorkerExit | null = null;
  private stopping = false;
  private killedHard = false;
  private readonly tail = new LineTail(STDERR_TAIL_LINES);

  /** @internal use spawnWorker */
  constructor(
    private readonly subprocess: ResultPromise,
    options: SpawnWorkerOptions,
    log: WriteStream | null,
    pid: number,
  ) {
    this.name = options.name;
    this.roles = [...options.roles];
    this.logFile = options.logFile ?? null;
    this.pid = pid;

    const stderrEnded = new Promise<void>((resolve) => {
      const stderr = subprocess.stderr;
      if (stderr === null) return resolve();
      stderr.setEncoding("utf8");
      stderr.on("data", (chunk: string) => {
        this.tail.push(chunk);
        log?.write(chunk);
      });
      stderr.once("end", () => resolve());
      stderr.once("close", () => resolve());
      stderr.once("error", () => resolve());
    });
    subprocess.stdout?.on("data", (chunk: Buffer) => log?.write(chunk));
    subprocess.stdout?.on("error", () => {});

    // execa's own promise: with reject: false it resolves with the result; never let it go unhandled.
    subprocess.then(
      () => {},
      () => {},
    );

    this.exited = new Promise<WorkerExit>((resolve) => {
      const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
        const info: WorkerExit = { code, signal };
        void Promise.race([stderrEnded, delay(STDERR_FLUSH_MS)])
          .then(async () => {
            this.tail.end();
            this.exitInfo = info;
            live.delete(this);
            if (log !== null) {
              await Promise.race([new Promise<void>((done) => log.end(() => done())), delay(STDERR_FLUSH_MS)]);
            }
          })
          .finally(() => resolve(info));
      };
      if (subprocess.exitCode !== null || subprocess.signalCode !== null) {
        onExit(subprocess.exitCode, subprocess.signalCode);
      } else {
        subprocess.once("exit", onExit);
      }
    });
    live.add(this);
    installExitHandler();
  }

  /** The exit status once the process has exited, else null. */
  get exit(): WorkerExit | null {
    return this.exitInfo;
  }

  get running(): boolean {
    return this.exitInfo === null;
  }

  /** True once stop() was called: an exit after that is expected. */
  get stopRequested(): boolean {
    return this.stopping;
  }

  /** The last (up to 40) lines the worker wrote to stderr. */
  stderrTail(): string[] {
    return this.tail.snapshot();
  }

  /** Sends a signal if the process is still running. Returns whether it was sent. */
  kill(signal: NodeJS.Signals = "SIGTERM"): boolean {
    if (this.exitInfo !== null) return false;
    try {
      return this.subprocess.kill(signal);
    } catch {
      return false;
    }
  }

  /**
   * Ends the process: SIGTERM, then SIGKILL if it is still running after graceMs. Resolves with how it exited.
   * Safe to call more than once, and after it exited.
   */
  async stop(options: { graceMs?: number } = {}): Promise<WorkerExit> {
    this.stopping = true;
    if (this.exitInfo !== null) return this.exitInfo;
    this.killedHard = (await stopChild(this, this.exited, options.graceMs ?? STOP_GRACE_MS)).forced;
    return this.exited;
  }

  /** True when stop() had to SIGKILL the process after its grace period. */
  get forced(): boolean {
    return this.killedHard;
  }

  /** A WorkerDiedError describing this process's exit (call after `exited` resolved). */
  diedError(): WorkerDiedError {
    const info = this.exitInfo ?? { code: null, signal: null };
    return new WorkerDiedError({
      worker: this.name,
      roles: this.roles,
      workerExitCode: info.code,
      signal: info.signal,
      stderrTail: this.stderrTail(),
      logFile: this.logFile,
    });
  }
}

/** The worker's command line after the interpreter. */
export function workerArgs(options: SpawnWorkerOptions): string[] {
  const args = [
    ...(options.entry ?? ["-m", "dmd2_worker"]),
    "--name",
    options.name,
    "--connect",
    options.requestEndpoint,
    "--heartbeat",
    options.heartbeatEndpoint,
  ];
  if (options.heartbeatInterval != null) args.push("--heartbeat-interval", String(options.heartbeatInterval));
  return args;
}

/**
 * Starts a worker process. Resolves once it is running; rejects with WorkerDiedError when it cannot be started
 * (e.g. the interpreter does not exist).
 */
export async function spawnWorker(options: SpawnWorkerOptions): Promise<WorkerProcess> {
  let log: WriteStream | null = null;
  if (options.logFile != null) {
    try {
      mkdirSync(path.dirname(options.logFile), { recursive: true });
    } catch (error) {
      throw new DmdError(`cannot create the log folder of worker "${options.name}": ${(error as Error).message}`, {
        code: "WORKER_LOG",
        cause: error,
      });
    }
    log = createWriteStream(options.logFile, { flags: "a" });
    log.on("error", () => {}); // a log that cannot be written must not take the run down
  }
  const subprocess = execa(options.python, workerArgs(options), {
    cwd: options.cwd,
    env: { ...options.env, PYTHONUNBUFFERED: "1" },
    extendEnv: true,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    buffer: false,
    reject: false,
    detached: options.detached ?? true,
    cleanup: true,
    forceKillAfterDelay: false,
  });

  const started = await new Promise<{ ok: true } | { ok: false; error: Error }>((resolve) => {
    subprocess.once("spawn", () => resolve({ ok: true }));
    subprocess.once("error", (error) => resolve({ ok: false, error }));
  });
  if (!started.ok || subprocess.pid === undefined) {
    await subprocess.catch(() => {});
    log?.end();
    const error = started.ok ? new Error("no pid") : started.error;
    throw new WorkerDiedError({
      worker: options.name,
      roles: options.roles,
      workerExitCode: null,
      signal: null,
      stderrTail: [],
      logFile: options.logFile ?? null,
      reason: `could not be started (${options.python}): ${error.message}`,
      cause: error,
    });
  }
  return new WorkerProcess(subprocess, options, log, subprocess.pid);
}
