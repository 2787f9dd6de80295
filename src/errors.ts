/**
 * Typed errors. Every error the CLI shows to a user is a DmdError: a one-line `message`, a stable `code`
 * (for tests and scripts), the process `exitCode` (2 for bad input, 1 for failures) and an optional `hint`
 * that names the fix. Only the CLI's entry point turns them into output and an exit status.
 */

export interface DmdErrorOptions {
  code: string;
  exitCode?: number;
  hint?: string;
  cause?: unknown;
}

/** Collapses a possibly multi-line string into one readable line. */
export function oneLine(text: string): string {
  return text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.length > 0)
    .join(" | ");
}

export class DmdError extends Error {
  readonly code: string;
  /** Exit status of the CLI when this error ends it: 2 for bad input, 1 for failures. */
  readonly exitCode: number;
  readonly hint?: string;

  constructor(message: string, options: DmdErrorOptions) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code;
    this.exitCode = options.exitCode ?? 1;
    if (options.hint !== undefined) this.hint = options.hint;
  }
}

export function isDmdError(error: unknown): error is DmdError {
  return error instanceof DmdError;
}

// ---------------------------------------------------------------------------------------------------------

/**
 * Stable codes of ProtocolError. PROTOCOL_VERSION: the peer speaks another protocol version; the others: a
 * malformed message (docs/protocol.md §2) or a reply that does not fit its request.
 */
export type ProtocolErrorCode =
  | "PROTOCOL_ERROR"
  | "PROTOCOL_VERSION"
  | "PROTOCOL_BAD_JSON"
  | "PROTOCOL_MISSING_FIELD"
  | "PROTOCOL_BAD_FIELD"
  | "PROTOCOL_MISSING_FRAME"
  | "PROTOCOL_EXTRA_FRAME"
  | "PROTOCOL_FRAME_LENGTH"
  | "PROTOCOL_DUPLICATE_TENSOR"
  | "PROTOCOL_UNEXPECTED_REPLY";

export class ProtocolError extends DmdError {
  /** The worker the message came from or went to, when known. */
  readonly worker?: string;

  constructor(
    message: string,
    options: { code?: ProtocolErrorCode; worker?: string; hint?: string; cause?: unknown } = {},
  ) {
    super(options.worker === undefined ? message : `worker "${options.worker}": ${message}`, {
      code: options.code ?? "PROTOCOL_ERROR",
      exitCode: 1,
      hint: options.hint,
      cause: options.cause,
    });
    if (options.worker !== undefined) this.worker = options.worker;
  }

  /** The same error, attributed to a worker (used when a codec error surfaces in a client). */
  withWorker(worker: string): ProtocolError {
    if (this.worker !== undefined) return this;
    return new ProtocolError(this.message, {
      code: this.code as ProtocolErrorCode,
      worker,
      hint: this.hint,
      cause: this,
    });
  }
}

// ---------------------------------------------------------------------------------------------------------

function describeWorker(worker: string, roles: readonly string[]): string {
  if (roles.length === 0 || (roles.length === 1 && roles[0] === worker)) return `worker "${worker}"`;
  return `worker "${worker}" (roles ${roles.join(", ")})`;
}

/** What a failed request was, for messages and for the coordinator's report. */
export interface RequestInfo {
  type: string;
  id: string;
  /** `setup` and `op` requests name a role. */
  role?: string;
  /** `op` requests: the op's name and step. */
  op?: string;
  step?: number;
}

export interface WorkerErrorInit {
  worker: string;
  roles: readonly string[];
  /** The role the failed request addressed (setup, op), else null. */
  role?: string | null;
  ename: string;
  evalue: string;
  traceback: string;
  request?: RequestInfo;
}

/** A worker answered a request with an error reply (docs/protocol.md §3, "Error replies"). */
export class WorkerError extends DmdError {
  readonly worker: string;
  readonly roles: readonly string[];
  readonly role: string | null;
  readonly ename: string;
  readonly evalue: string;
  readonly traceback: string;
  readonly request?: RequestInfo;

  constructor(init: WorkerErrorInit) {
    const evalue = oneLine(init.evalue);
    const req = init.request;
    const who =
      req?.type === "op" && req.role !== undefined && req.op !== undefined
        ? `${req.role}.${req.op}${req.step === undefined ? "" : ` at step ${req.step}`} (worker "${init.worker}")`
        : req?.role !== undefined
          ? `${req.type} of role ${req.role} (worker "${init.worker}")`
          : describeWorker(init.worker, init.roles);
    super(
      `${who} raised ${init.ename}${evalue === "" ? "" : `: ${evalue}`}`,
      {
        code: "WORKER_ERROR",
        exitCode: 1,
        hint: init.traceback.trim() === "" ? undefined : "run with --verbose to see the Python traceback",
      },
    );
    this.worker = init.worker;
    this.roles = [...init.roles];
    this.role = init.role ?? null;
    this.ename = init.ename;
    this.evalue = init.evalue;
    this.traceback = init.traceback;
    if (init.request !== undefined) this.request = init.request;
  }

  /** The protocol's user-facing form: `<role or worker>: <ename>: <evalue>`. */
  get summary(): string {
    return `${this.role ?? this.worker}: ${this.ename}: ${oneLine(this.evalue)}`;
  }
}

// ---------------------------------------------------------------------------------------------------------

export interface WorkerDiedInit {
  worker: string;
  roles?: readonly string[];
  /** The worker process's exit code, null when it was ended by a signal or never started. */
  workerExitCode: number | null;
  signal: string | null;
  /** Last lines the worker wrote to stderr (at most 40). */
  stderrTail: readonly string[];
  logFile?: string | null;
  /** Overrides the description of what happened, e.g. "could not be started: spawn ... ENOENT". */
  reason?: string;
  cause?: unknown;
}

/**
 * A worker process ended while it was needed. `workerExitCode` is the worker's exit code (`exitCode` is the
 * CLI's exit status, as for every DmdError).
 */
export class WorkerDiedError extends DmdError {
  readonly worker: string;
  readonly roles: readonly string[];
  readonly workerExitCode: number | null;
  readonly signal: string | null;
  readonly stderrTail: readonly string[];
  readonly logFile: string | null;

  constructor(init: WorkerDiedInit) {
    const what =
      init.reason ??
      (init.signal !== null
        ? `was killed by signal ${init.signal}`
        : init.workerExitCode !== null
          ? `exited with code ${init.workerExitCode}`
          : "exited");
    const lastLine = [...init.stderrTail].reverse().find((line) => line.trim() !== "");
    const tail = lastLine === undefined ? "" : `; last stderr line: ${lastLine.trim()}`;
    super(`worker "${init.worker}" ${what}${tail}`, {
      code: "WORKER_DIED",
      exitCode: 1,
      hint:
        init.logFile != null
          ? `its full output is in ${init.logFile}`
          : init.stderrTail.length > 0
            ? "its last stderr lines are in the error's stderrTail"
            : undefined,
      cause: init.cause,
    });
    this.worker = init.worker;
    this.roles = [...(init.roles ?? [])];
    this.workerExitCode = init.workerExitCode;
    this.signal = init.signal;
    this.stderrTail = [...init.stderrTail];
    this.logFile = init.logFile ?? null;
  }
}

// ---------------------------------------------------------------------------------------------------------

export type WorkerTimeoutKind = "heartbeat" | "request";

export interface WorkerTimeoutInit {
  worker: string;
  kind: WorkerTimeoutKind;
  /** The limit that was exceeded, in seconds. */
  timeoutS: number;
  /** heartbeat: whether any heartbeat ever arrived, and whether the last one said busy. */
  everSeen?: boolean;
  lastBusy?: boolean | null;
  /** request: the request that got no reply in time. */
  request?: RequestInfo;
}

/** A worker stopped sending heartbeats for `timeout_s`, or a request got no reply in its time limit. */
export class WorkerTimeoutError extends DmdError {
  readonly worker: string;
  readonly kind: WorkerTimeoutKind;
  readonly timeoutS: number;
  readonly request?: RequestInfo;

  constructor(init: WorkerTimeoutInit) {
    const seconds = formatSeconds(init.timeoutS);
    let message: string;
    if (init.kind === "heartbeat") {
      message =
        init.everSeen === false
          ? `worker "${init.worker}" sent no heartbeat within ${seconds} of starting`
          : `worker "${init.worker}" sent no heartbeat for ${seconds}${init.lastBusy ? " (it was busy)" : ""}`;
    } else {
      const what = init.request === undefined ? "a request" : describeRequest(init.request);
      message = `worker "${init.worker}" did not answer ${what} within ${seconds}`;
    }
    super(message, {
      code: "WORKER_TIMEOUT",
      exitCode: 1,
      hint:
        init.kind === "heartbeat"
          ? "the worker is hung or overloaded (or, if it joined from another host, stopped or cut off there); check its log, or raise heartbeat.timeout_s in the recipe"
          : undefined,
    });
    this.worker = init.worker;
    this.kind = init.kind;
    this.timeoutS = init.timeoutS;
    if (init.request !== undefined) this.request = init.request;
  }
}

function formatSeconds(s: number): string {
  const rounded = Math.round(s * 1000) / 1000;
  return `${rounded} s`;
}

function describeRequest(request: RequestInfo): string {
  if (request.type === "op" && request.role !== undefined && request.op !== undefined) {
    return `op ${request.role}.${request.op}${request.step === undefined ? "" : ` (step ${request.step})`}`;
  }
  if (request.role !== undefined) return `${request.type} ${request.role}`;
  return `${request.type} request ${request.id}`;
}

// ---------------------------------------------------------------------------------------------------------

export interface RecipeIssue {
  file?: string | null;
  line?: number | null;
  /** The key's dotted path, e.g. `heartbeat.timeout_s`; "" for the whole recipe. */
  path: string;
  message: string;
}

/** `<file>:<line>: <key.path>: <problem>` (the parts that are known). */
export function formatRecipeIssue(issue: RecipeIssue): string {
  let where = shortenValue(issue.file ?? "");
  if (issue.line != null) where = `${where}:${issue.line}`;
  const parts = [where, issue.path, shortenValue(issue.message)].filter((part) => part !== "");
  return parts.join(": ");
}

/** The recipe is invalid. Carries every problem found; `message` is the first, `lines()` gives all. */
export class RecipeError extends DmdError {
  readonly issues: readonly RecipeIssue[];

  constructor(issues: readonly RecipeIssue[], options: { hint?: string } = {}) {
    const first = issues[0];
    const message =
      first === undefined
        ? "invalid recipe"
        : issues.length === 1
          ? formatRecipeIssue(first)
          : `${formatRecipeIssue(first)} (and ${issues.length - 1} more problem${issues.length === 2 ? "" : "s"})`;
    super(message, { code: "RECIPE_INVALID", exitCode: 2, hint: options.hint });
    this.issues = [...issues];
  }

  /** One line per issue, in order. */
  lines(): string[] {
    return this.issues.map(formatRecipeIssue);
  }
}

/** Bad command-line input or environment (a missing interpreter, a bad flag): exit code 2. */
export class UsageError extends DmdError {
  constructor(message: string, options: { hint?: string; code?: string; cause?: unknown } = {}) {
    super(message, { code: options.code ?? "USAGE", exitCode: 2, hint: options.hint, cause: options.cause });
  }
}

/** errno codes that mean the run folder's storage refused a write (full disk, quota, read-only, permissions). */
const STORAGE_CODES: Record<string, string> = {
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  EROFS: "read-only file system",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
};
const PY_STORAGE_ERRNO: Record<string, string> = { "28": "ENOSPC", "122": "EDQUOT", "30": "EROFS", "13": "EACCES", "1": "EPERM" };
/** The C library's words for the same faults, as layers that drop the number print them (torch, PIL, numpy). */
const STORAGE_WORDS: Array<[RegExp, string]> = [
  [/no space left on device/i, "ENOSPC"],
  [/disk quota exceeded/i, "EDQUOT"],
  [/read-only file system/i, "EROFS"],
];

/**
 * The errno code of a storage fault, from every layer that writes: a Node system error (`code`), a worker's
 * reply from Python (`[Errno 28]` of an OSError, PIL's OSError), safetensors' Rust `(os error 28)`, and torch's
 * or anything's "No space left on device" without a number; null otherwise.
 */
export function storageFaultCode(error: unknown): string | null {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  if (typeof code === "string" && code in STORAGE_CODES) return code;
  if (error instanceof WorkerError) return storageFaultInText(error.evalue);
  return null;
}

/** The words of a storage fault's errno code: "no space left on device" for ENOSPC. */
export const storageFaultWords = (errno: string) => STORAGE_CODES[errno] ?? errno;

/** storageFaultCode of an error's text (a worker's evalue, a job's last line). */
export function storageFaultInText(text: string): string | null {
  const m = /\[Errno (\d+)\]|\(os error (\d+)\)|\berrno[ =:]+(\d+)/i.exec(text);
  const n = m ? (m[1] ?? m[2] ?? m[3])! : null;
  if (n !== null && n in PY_STORAGE_ERRNO) return PY_STORAGE_ERRNO[n]!;
  for (const [re, c] of STORAGE_WORDS) if (re.test(text)) return c;
  return null;
}

/**
 * A value short enough for a one-line message: a word (no spaces) longer than `max` characters keeps its start
 * and end with the count of what was left out, e.g. a 200,000-character path.
 */
export function shortenValue(text: string, max = 120): string {
  return text.replace(/\S+/g, (w) => (w.length <= max ? w : `${w.slice(0, Math.floor(max / 2))}...(${w.length - max + 20} more characters)...${w.slice(-(Math.ceil(max / 2) - 20))}`));
}

/** A write into the run folder failed (full disk, quota, read-only): exit 1, the last complete checkpoint named. */
export class StorageError extends DmdError {
  readonly errno: string;
  constructor(runDir: string, errno: string, lastCheckpoint: string | null, cause: unknown) {
    const what = STORAGE_CODES[errno] ?? errno;
    super(`cannot write to the run folder ${runDir}: ${what} (${errno})`, {
      code: "STORAGE",
      exitCode: 1,
      cause,
      hint:
        (lastCheckpoint ? `the last complete checkpoint ${lastCheckpoint} is intact; ` : "no checkpoint was completed; ") +
        (errno === "ENOSPC" || errno === "EDQUOT" ? "free some space" : "make the folder writable") +
        " and run the same command again to resume",
    });
    this.errno = errno;
  }
}
