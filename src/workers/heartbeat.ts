/**
 * The heartbeat channel (docs/protocol.md §1): one PULL socket the coordinator binds, every worker PUSHes a
 * `heartbeat` message every interval_s. A watched worker whose last heartbeat (or, before its first one, its
 * start) is older than the timeout is reported once, as a WorkerTimeoutError.
 */
import { EventEmitter } from "node:events";
import { Pull } from "zeromq";
import { ProtocolError, WorkerTimeoutError } from "../errors.js";
import { decodeMessage } from "../protocol/codec.js";
import type { HeartbeatBody } from "../protocol/messages.js";
import { applyCurveServer, bindWithFallback, type CurveKeys } from "./endpoints.js";

export interface HeartbeatState {
  worker: string;
  /** When the last heartbeat arrived (performance.now() ms), null before the first one. */
  lastSeen: number | null;
  /** When watching started (performance.now() ms). */
  since: number;
  busy: boolean | null;
  pid: number | null;
  /** The worker's clock (unix seconds) in its last heartbeat. */
  workerTime: number | null;
  count: number;
  timedOut: boolean;
}

export interface HeartbeatMonitorOptions {
  /** No heartbeat for this long: the worker is considered dead (recipe heartbeat.timeout_s). */
  timeoutS: number;
  /**
   * How long a worker may take to send its first heartbeat (Python start-up, imports); default
   * max(timeoutS, 60).
   */
  firstTimeoutS?: number;
  /** How often ages are checked; default 4 times a second (more often for very short timeouts). */
  checkIntervalMs?: number;
  /** Called with one line for messages that were dropped (malformed, other version, unknown worker). */
  onWarning?: (line: string) => void;
  /** Called (besides the `timeout` event) when a watched worker's heartbeat is overdue. */
  onTimeout?: (error: WorkerTimeoutError, state: HeartbeatState) => void;
}

export interface HeartbeatMonitorEvents {
  timeout: [error: WorkerTimeoutError, state: HeartbeatState];
  heartbeat: [state: HeartbeatState];
}

export class HeartbeatMonitor extends EventEmitter<HeartbeatMonitorEvents> {
  readonly timeoutS: number;
  readonly firstTimeoutS: number;
  private readonly socket = new Pull({ linger: 0 });
  private readonly states = new Map<string, HeartbeatState>();
  private readonly checkIntervalMs: number;
  private readonly onWarning: (line: string) => void;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private loop: Promise<void> | null = null;
  private endpoint: string | null = null;

  constructor(options: HeartbeatMonitorOptions) {
    super();
    if (!(options.timeoutS > 0)) throw new RangeError(`heartbeat timeout must be > 0 s, got ${options.timeoutS}`);
    this.timeoutS = options.timeoutS;
    this.firstTimeoutS = options.firstTimeoutS ?? Math.max(options.timeoutS, 60);
    this.checkIntervalMs = options.checkIntervalMs ?? Math.max(20, Math.min(250, (options.timeoutS * 1000) / 4));
    this.onWarning = options.onWarning ?? (() => {});
    if (options.onTimeout !== undefined) this.on("timeout", options.onTimeout);
  }

  /** Binds the PULL socket and starts receiving and checking. Returns the address bound. */
  async bind(address: string, curve: CurveKeys | null = null): Promise<string> {
    if (this.stopped) throw new Error("HeartbeatMonitor is stopped");
    applyCurveServer(this.socket, curve);
    this.endpoint = await bindWithFallback(this.socket, address);
    this.loop = this.receiveLoop();
    this.timer = setInterval(() => this.check(), this.checkIntervalMs);
    this.timer.unref();
    return this.endpoint;
  }

  get address(): string | null {
    return this.endpoint;
  }

  /** Starts watching a worker from now: it must send its first heartbeat within firstTimeoutS. */
  watch(worker: string): void {
    const existing = this.states.get(worker);
    if (existing !== undefined) {
      existing.since = performance.now();
      existing.timedOut = false;
      return;
    }
    this.states.set(worker, {
      worker,
      lastSeen: null,
      since: performance.now(),
      busy: null,
      pid: null,
      workerTime: null,
      count: 0,
      timedOut: false,
    });
  }

  /** Stops watching a worker (e.g. when it is being shut down). */
  unwatch(worker: string): void {
    this.states.delete(worker);
  }

  /** The latest state of a watched worker. */
  state(worker: string): HeartbeatState | undefined {
    const state = this.states.get(worker);
    return state === undefined ? undefined : { ...state };
  }

  /** Seconds since the worker's last heartbeat (or since watching started), undefined if not watched. */
  ageS(worker: string): number | undefined {
    const state = this.states.get(worker);
    if (state === undefined) return undefined;
    return (performance.now() - (state.lastSeen ?? state.since)) / 1000;
  }

  private async receiveLoop(): Promise<void> {
    try {
      for await (const frames of this.socket) {
        if (this.stopped) break;
        this.handle(frames);
      }
    } catch (error) {
      if (!this.stopped) this.onWarning(`heartbeat channel stopped receiving: ${(error as Error).message}`);
    }
  }

  private handle(frames: Buffer[]): void {
    let body: HeartbeatBody;
    try {
      const message = decodeMessage(frames);
      if (message.type !== "heartbeat") {
        this.onWarning(`heartbeat channel: dropped a ${message.type} message from "${message.sender}"`);
        return;
      }
      body = message.body as HeartbeatBody;
    } catch (error) {
      const reason = error instanceof ProtocolError ? error.message : String(error);
      this.onWarning(`heartbeat channel: dropped a malformed message: ${reason}`);
      return;
    }
    const state = this.states.get(body.worker);
    if (state === undefined) return; // not (or no longer) watched
    state.lastSeen = performance.now();
    state.busy = body.busy;
    state.pid = body.pid;
    state.workerTime = body.time;
    state.count += 1;
    this.emit("heartbeat", { ...state });
  }

  /** Reports every watched worker whose heartbeat is overdue (once per worker). Runs on a timer. */
  check(now: number = performance.now()): void {
    for (const state of this.states.values()) {
      if (state.timedOut) continue;
      const limitS = state.lastSeen === null ? this.firstTimeoutS : this.timeoutS;
      const ageMs = now - (state.lastSeen ?? state.since);
      if (ageMs > limitS * 1000) {
        state.timedOut = true;
        const error = new WorkerTimeoutError({
          worker: state.worker,
          kind: "heartbeat",
          timeoutS: limitS,
          everSeen: state.lastSeen !== null,
          lastBusy: state.busy,
        });
        this.emit("timeout", error, { ...state });
      }
    }
  }

  /** Stops checking and closes the socket. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.states.clear();
    this.socket.close();
    await this.loop;
  }
}
