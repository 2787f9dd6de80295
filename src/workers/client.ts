/**
 * The coordinator's end of one worker's request channel (docs/protocol.md §1, §3): a bound DEALER socket, one
 * receive loop, replies matched to requests by `reply_to`. A request settles exactly once: with the reply,
 * with a WorkerError (error reply), a WorkerDiedError (the process exited), a WorkerTimeoutError (heartbeats
 * stopped, or the request's own time limit), or a ProtocolError (a reply that breaks the protocol).
 */
import { EventEmitter } from "node:events";
import { Dealer } from "zeromq";
import { DmdError, ProtocolError, WorkerError, WorkerTimeoutError, type RequestInfo } from "../errors.js";
import { decodeMessage, encodeMessage, peekHeader } from "../protocol/codec.js";
import {
  PROTOCOL_VERSION,
  replyTypeOf,
  type ErrorBody,
  type HelloBody,
  type HelloReplyBody,
  type Message,
  type OkReplyMessage,
  type OpReplyBody,
  type ReplyBodies,
  type RequestBodies,
  type RequestType,
  type Role,
  type SaveReplyBody,
  type SetupReplyBody,
  type TensorFrame,
} from "../protocol/messages.js";
import { applyCurveServer, bindWithFallback, type CurveKeys } from "./endpoints.js";
import type { HeartbeatMonitor } from "./heartbeat.js";
import type { WorkerProcess } from "./process.js";

/** Request ids are unique for the life of the coordinator process: `c-<n>` (docs/protocol.md §2). */
let lastId = 0;
export function nextRequestId(): string {
  lastId += 1;
  return `c-${lastId}`;
}

export const COORDINATOR = "coordinator";
/** After the process exits, how long replies it sent just before may still be read. */
const LATE_REPLY_MS = 20;

export interface RequestOptions {
  /** Time limit for the reply in ms; null: none. Default: the client's requestTimeoutMs. */
  timeoutMs?: number | null;
}

export interface WorkerClientOptions {
  name: string;
  roles: readonly string[];
  /** Default time limit of each request in ms; null (default): none, heartbeats tell a hung worker. */
  requestTimeoutMs?: number | null;
  /** When given, a heartbeat timeout of this worker fails the client (WorkerTimeoutError). */
  heartbeat?: HeartbeatMonitor;
  /** One line for things that are dropped: late replies, stray messages. */
  onWarning?: (line: string) => void;
}

/** The result of an `op` request. */
export interface OpResult {
  metrics: Record<string, number | null>;
  /** Exactly the tensors named in `return`, untouched. */
  tensors: TensorFrame[];
  reply: Message<OpReplyBody>;
}

export type HelloParams = Omit<HelloBody, "worker" | "roles">;

interface Pending {
  info: RequestInfo;
  resolve: (message: Message) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout | null;
}

export interface WorkerClientEvents {
  /** The first failure that made the worker unusable (death, heartbeat timeout), unless it was expected. */
  failed: [error: DmdError];
}

export class WorkerClient extends EventEmitter<WorkerClientEvents> {
  readonly name: string;
  readonly roles: readonly string[];
  private readonly socket = new Dealer({ linger: 0 });
  private readonly pending = new Map<string, Pending>();
  private readonly requestTimeoutMs: number | null;
  private readonly onWarning: (line: string) => void;
  private readonly heartbeat: HeartbeatMonitor | undefined;
  private readonly onHeartbeatTimeout = (error: WorkerTimeoutError): void => {
    if (error.worker === this.name) this.fail(error);
  };
  private sendChain: Promise<void> = Promise.resolve();
  private loop: Promise<void> | null = null;
  private failure: DmdError | null = null;
  private closed = false;
  private shutdownRequested = false;
  private proc: WorkerProcess | null = null;
  private boundAddress: string | null = null;

  constructor(options: WorkerClientOptions) {
    super();
    this.name = options.name;
    this.roles = [...options.roles];
    this.requestTimeoutMs = options.requestTimeoutMs ?? null;
    this.onWarning = options.onWarning ?? (() => {});
    this.heartbeat = options.heartbeat;
    this.heartbeat?.on("timeout", this.onHeartbeatTimeout);
  }

  /** Binds the request channel and starts the receive loop. Returns the address bound (for tcp, the port). */
  async bind(address: string, curve: CurveKeys | null = null): Promise<string> {
    if (this.closed) throw this.closedError();
    applyCurveServer(this.socket, curve);
    this.boundAddress = await bindWithFallback(this.socket, address);
    this.loop = this.receiveLoop();
    return this.boundAddress;
  }

  get address(): string | null {
    return this.boundAddress;
  }

  get process(): WorkerProcess | null {
    return this.proc;
  }

  /** The error that made this client unusable, or null. */
  get failed(): DmdError | null {
    return this.failure;
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  /** True once a worker on another host joined for this client (attachRemote). */
  remoteAttached = false;

  /** A worker started on another host (`dmd2 worker --join`): no process here to watch, only its heartbeats. */
  attachRemote(): void {
    this.remoteAttached = true;
    this.heartbeat?.watch(this.name);
  }

  /**
   * Ties the client to its worker process: when the process exits, pending and later requests reject with
   * WorkerDiedError (exit code, signal, stderr tail). If a heartbeat monitor was given, starts watching.
   */
  attachProcess(proc: WorkerProcess): void {
    this.proc = proc;
    this.heartbeat?.watch(this.name);
    void proc.exited.then(async () => {
      await new Promise((resolve) => setTimeout(resolve, LATE_REPLY_MS));
      if (this.closed) return;
      const error = proc.diedError();
      const expected = proc.stopRequested || (this.shutdownRequested && proc.exit?.code === 0);
      this.heartbeat?.unwatch(this.name);
      this.fail(error, { silent: expected });
    });
  }

  /**
   * Makes the client unusable: rejects every pending request and every later one with `error`, and emits
   * `failed` (unless silent). Only the first failure counts.
   */
  fail(error: DmdError, options: { silent?: boolean } = {}): void {
    if (this.failure !== null || this.closed) return;
    this.failure = error;
    this.rejectAll(error);
    if (!options.silent) this.emit("failed", error);
  }

  /**
   * Sends a request and resolves with its ok reply. Rejects with WorkerError for an error reply, and with
   * WorkerDiedError / WorkerTimeoutError / ProtocolError as described above.
   */
  request<T extends RequestType>(
    type: T,
    body: RequestBodies[T],
    tensors: readonly TensorFrame[] = [],
    options: RequestOptions = {},
  ): Promise<OkReplyMessage<T>> {
    if (this.closed) return Promise.reject(this.closedError());
    if (this.failure !== null) return Promise.reject(this.failure);
    if (this.loop === null) return Promise.reject(new Error(`WorkerClient "${this.name}": bind() first`));

    const id = nextRequestId();
    const message: Message = {
      version: PROTOCOL_VERSION,
      id,
      type,
      reply_to: null,
      status: null,
      sender: COORDINATOR,
      body,
      tensors: [...tensors],
    };
    let frames: Buffer[];
    try {
      frames = encodeMessage(message);
    } catch (error) {
      return Promise.reject(error instanceof ProtocolError ? error.withWorker(this.name) : error);
    }
    const info = requestInfo(type, id, body);
    if (type === "shutdown") this.shutdownRequested = true;

    return new Promise<OkReplyMessage<T>>((resolve, reject) => {
      const timeoutMs = options.timeoutMs === undefined ? this.requestTimeoutMs : options.timeoutMs;
      const entry: Pending = {
        info,
        resolve: resolve as (message: Message) => void,
        reject,
        timer: null,
      };
      if (timeoutMs !== null) {
        entry.timer = setTimeout(() => {
          if (this.pending.get(id) !== entry) return;
          this.pending.delete(id);
          reject(new WorkerTimeoutError({ worker: this.name, kind: "request", timeoutS: timeoutMs / 1000, request: info }));
        }, timeoutMs);
      }
      this.pending.set(id, entry);
      this.sendChain = this.sendChain
        .then(() => {
          if (this.pending.get(id) !== entry) return; // already settled (failed, timed out, closed)
          return this.socket.send(frames);
        })
        .catch((error: unknown) => {
          if (this.pending.get(id) !== entry) return;
          this.settle(id)?.reject(
            this.closed ? this.closedError() : new DmdError(`worker "${this.name}": could not send ${type}: ${(error as Error).message}`, { code: "WORKER_SEND" }),
          );
        });
    });
  }

  /** `hello`: resolves with the reply body (pid, hostname, python, torch, cuda, devices, roles). */
  async hello(params: HelloParams, options?: RequestOptions): Promise<HelloReplyBody> {
    const body: HelloBody = { worker: this.name, roles: [...this.roles] as Role[], ...params };
    return (await this.request("hello", body, [], options)).body;
  }

  async setup(role: Role, teacherDir: string | null, options?: RequestOptions): Promise<SetupReplyBody> {
    return (await this.request("setup", { role, teacher_dir: teacherDir }, [], options)).body;
  }

  /**
   * Runs an op (docs/protocol.md §4). `inputs` are attached untouched; the reply must carry exactly the
   * tensors named in `returnNames` (else ProtocolError).
   */
  async op(
    role: Role,
    op: string,
    step: number,
    args: Record<string, unknown>,
    inputs: readonly TensorFrame[],
    returnNames: readonly string[],
    options?: RequestOptions,
  ): Promise<OpResult> {
    const reply = await this.request(
      "op",
      { role, op, step, args, return: [...returnNames] },
      inputs,
      options,
    );
    const got = reply.tensors.map((t) => t.name).sort();
    const want = [...returnNames].sort();
    if (got.length !== want.length || got.some((name, i) => name !== want[i])) {
      throw new ProtocolError(
        `${role}.${op} (step ${step}) returned tensors [${got.join(", ")}], expected [${want.join(", ")}]`,
        { code: "PROTOCOL_UNEXPECTED_REPLY", worker: this.name },
      );
    }
    return { metrics: reply.body.metrics, tensors: reply.tensors, reply };
  }

  async save(dir: string, step: number, options?: RequestOptions): Promise<SaveReplyBody> {
    return (await this.request("save", { dir, step }, [], options)).body;
  }

  async restore(dir: string, options?: RequestOptions): Promise<ReplyBodies["restore"]> {
    return (await this.request("restore", { dir }, [], options)).body;
  }

  /**
   * Asks the worker to exit. Resolves true when it replied (or exited with code 0 right away), false when it
   * did not answer in `timeoutMs` (default 2000) or is already dead. Never rejects.
   */
  async shutdown(options: RequestOptions = {}): Promise<boolean> {
    if (this.closed || this.failure !== null) return false;
    try {
      await this.request("shutdown", {}, [], { timeoutMs: options.timeoutMs === undefined ? 2000 : options.timeoutMs });
      return true;
    } catch {
      return this.proc?.exit?.code === 0;
    }
  }

  /** Closes the socket; pending requests reject. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.rejectAll(this.closedError());
    this.closed = true;
    this.heartbeat?.off("timeout", this.onHeartbeatTimeout);
    this.socket.close();
    await this.loop;
  }

  // --- internals -------------------------------------------------------------------------------------------

  private closedError(): DmdError {
    return new DmdError(`worker "${this.name}": the connection was closed`, { code: "WORKER_CLOSED" });
  }

  private settle(id: string): Pending | undefined {
    const entry = this.pending.get(id);
    if (entry === undefined) return undefined;
    this.pending.delete(id);
    if (entry.timer !== null) clearTimeout(entry.timer);
    return entry;
  }

  private rejectAll(error: Error): void {
    for (const id of [...this.pending.keys()]) this.settle(id)?.reject(error);
  }

  private async receiveLoop(): Promise<void> {
    try {
      for await (const frames of this.socket) {
        if (this.closed) break;
        this.handle(frames);
      }
    } catch (error) {
      if (!this.closed) this.fail(new DmdError(`worker "${this.name}": request channel failed: ${(error as Error).message}`, { code: "WORKER_CHANNEL" }));
    }
  }

  private handle(frames: Buffer[]): void {
    let message: Message;
    try {
      message = decodeMessage(frames);
    } catch (error) {
      const protocolError =
        error instanceof ProtocolError
          ? error.withWorker(this.name)
          : new ProtocolError(String(error), { worker: this.name });
      // Attribute it to the request it answers: by reply_to if readable, else the oldest pending one (a
      // worker answers in arrival order).
      const peek = peekHeader(frames);
      const target =
        peek.reply_to !== undefined && this.pending.has(peek.reply_to)
          ? peek.reply_to
          : this.pending.keys().next().value;
      if (target === undefined) {
        this.onWarning(`dropped a message from worker "${this.name}": ${protocolError.message}`);
        return;
      }
      this.settle(target)?.reject(protocolError);
      return;
    }

    if (message.reply_to === null) {
      this.onWarning(`worker "${this.name}" sent a ${message.type} message on its request channel; dropped`);
      return;
    }
    const entry = this.settle(message.reply_to);
    if (entry === undefined) {
      this.onWarning(`worker "${this.name}": dropped a reply to ${message.reply_to} (no request waiting; timed out?)`);
      return;
    }
    const expectedType = replyTypeOf(entry.info.type as RequestType);
    if (message.type !== expectedType) {
      entry.reject(
        new ProtocolError(`request ${entry.info.id} (${entry.info.type}) was answered with a ${message.type}`, {
          code: "PROTOCOL_UNEXPECTED_REPLY",
          worker: this.name,
        }),
      );
      return;
    }
    if (message.status === "error") {
      entry.reject(this.errorFromReply(message.body as ErrorBody, entry.info));
      return;
    }
    entry.resolve(message);
  }

  private errorFromReply(body: ErrorBody, info: RequestInfo): DmdError {
    if (body.ename === "ProtocolVersionError") {
      return new ProtocolError(`refused the request: ${body.evalue}`, {
        code: "PROTOCOL_VERSION",
        worker: this.name,
        hint: "the coordinator and the worker package come from different dmd2 versions: run npm install",
      });
    }
    return new WorkerError({
      worker: this.name,
      roles: this.roles,
      role: info.role ?? null,
      ename: body.ename,
      evalue: body.evalue,
      traceback: body.traceback,
      request: info,
    });
  }
}

function requestInfo(type: RequestType, id: string, body: unknown): RequestInfo {
  const info: RequestInfo = { type, id };
  const b = body as { role?: unknown; op?: unknown; step?: unknown };
  if ((type === "setup" || type === "op") && typeof b.role === "string") info.role = b.role;
  if (type === "op") {
    if (typeof b.op === "string") info.op = b.op;
    if (typeof b.step === "number") info.step = b.step;
  }
  return info;
}
