/**
 * All workers of a run: starts them in parallel (one bound request channel each, one shared heartbeat
 * channel), says `hello` to each, routes roles to clients, and shuts everything down (shutdown request, then
 * SIGTERM, then SIGKILL). `failure` rejects on the first unexpected worker death or heartbeat timeout, so the
 * coordinator can race it against each step.
 */
import path from "node:path";
import { DmdError, ProtocolError, UsageError } from "../errors.js";
import { ROLES, isRole, type HelloReplyBody, type Role } from "../protocol/messages.js";
import { WorkerClient, type HelloParams } from "./client.js";
import { createEndpoints, curveEnv, type RunEndpoints, type Transport } from "./endpoints.js";
import { HeartbeatMonitor } from "./heartbeat.js";
import { JoinServer, portOf } from "./join.js";
import { spawnWorker, type WorkerExit, type WorkerProcess } from "./process.js";

export interface WorkerSpec {
  name: string;
  roles: readonly Role[];
  /** Replicas of one role group (docs/protocol.md §1): workers with the same `group` may host the same roles. */
  group?: string;
  /** Extra environment variables for this worker only (a replica's RANK, WORLD_SIZE, MASTER_ADDR/PORT). */
  env?: Record<string, string>;
  /** Started on another host by `dmd2 worker --join` (join.ts) instead of spawned here. */
  join?: boolean;
}

/** Where workers of other hosts join (recipe `join`), and who is told how. */
export interface JoinOptions {
  bind: string;
  port: number;
  timeoutS: number;
  /** Called once the join channel listens, before waiting: its address, the key joiners need, the workers. */
  onWaiting?: (info: { address: string; key: string; workers: string[] }) => void;
  /** Called as each worker joins. */
  onJoined?: (info: { worker: string; hostname: string; pid: number }) => void;
}

export interface WorkerPoolOptions {
  python: string;
  /** hello's body less worker and roles (run_dir, recipe, torch_threads), or a function of the worker. */
  hello: HelloParams | ((spec: WorkerSpec) => HelloParams);
  transport?: Transport;
  /** recipe heartbeat.interval_s; default 0.5. */
  heartbeatIntervalS?: number;
  /** recipe heartbeat.timeout_s; default 30. */
  heartbeatTimeoutS?: number;
  /** Time for a worker's first heartbeat (start-up, imports); default max(heartbeatTimeoutS, 60). */
  firstHeartbeatTimeoutS?: number;
  /** Time limit for hello replies in ms (start-up included); default 300000; null: none. */
  helloTimeoutMs?: number | null;
  /** Default time limit of every other request in ms; default null. */
  requestTimeoutMs?: number | null;
  /** Worker logs go to `<logDir>/<worker>.log` (stdout and stderr, appended); null: no log files. */
  logDir?: string | null;
  /** Extra environment variables for the workers. */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** What runs after the interpreter instead of `-m dmd2_worker` (tests: fixture scripts). */
  entry?: readonly string[] | ((spec: WorkerSpec) => readonly string[]);
  /** One line for dropped messages and other things worth a debug line. */
  onWarning?: (line: string) => void;
  /** Needed when a spec has `join`. */
  join?: JoinOptions;
}

export interface ShutdownOptions {
  /** After SIGTERM, how long before SIGKILL; default 5000 ms. */
  graceMs?: number;
  /** How long to wait for the reply to `shutdown`; default 2000 ms. */
  shutdownTimeoutMs?: number;
}

export interface WorkerShutdown {
  worker: string;
  /** The worker answered the shutdown request. */
  replied: boolean;
  /** How it exited (null: it was never started). */
  exit: WorkerExit | null;
  /** It had to be SIGKILLed. */
  forced: boolean;
}

interface Entry {
  spec: WorkerSpec;
  client: WorkerClient;
  proc: WorkerProcess | null;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Checks a placement: unique worker names, every role hosted at most once, discriminator with fake_score. */
export function checkSpecs(specs: readonly WorkerSpec[]): void {
  if (specs.length === 0) throw new UsageError("no workers to start");
  const names = new Set<string>();
  const hostOf = new Map<Role, WorkerSpec>();
  for (const spec of specs) {
    if (names.has(spec.name)) throw new UsageError(`worker name "${spec.name}" is used twice`);
    names.add(spec.name);
    if (spec.roles.length === 0) throw new UsageError(`worker "${spec.name}" hosts no role`);
    for (const role of spec.roles) {
      if (!isRole(role)) throw new UsageError(`worker "${spec.name}": unknown role "${String(role)}" (roles: ${ROLES.join(", ")})`);
      const other = hostOf.get(role);
      if (other !== undefined && (other.group === undefined || other.group !== spec.group)) {
        throw new UsageError(`role ${role} is placed in both "${other.name}" and "${spec.name}"`);
      }
      if (other === undefined) hostOf.set(role, spec);
    }
  }
  const group = (s: WorkerSpec | undefined) => (s === undefined ? undefined : (s.group ?? s.name));
  const disc = hostOf.get("discriminator");
  if (disc !== undefined && group(hostOf.get("fake_score")) !== group(disc)) {
    throw new UsageError(`role discriminator must live in the same worker as fake_score (docs/protocol.md §1)`);
  }
}

export class WorkerPool {
  readonly specs: readonly WorkerSpec[];
  readonly endpoints: RunEndpoints;
  readonly heartbeat: HeartbeatMonitor;
  /** Rejects with the first unexpected worker death (WorkerDiedError) or timeout (WorkerTimeoutError). */
  readonly failure: Promise<never>;
  private readonly entries = new Map<string, Entry>();
  private readonly byRole = new Map<Role, Entry>();
  private readonly hellos = new Map<string, HelloReplyBody>();
  private readonly options: WorkerPoolOptions;
  private rejectFailure!: (error: DmdError) => void;
  private firstFailure: DmdError | null = null;
  /** race() calls still waiting: each is told the first failure, and removes itself once its work settles. */
  private readonly racers = new Set<(error: DmdError) => void>();
  private stopping = false;
  private joinServer: JoinServer | null = null;
  private closing: Promise<WorkerShutdown[]> | null = null;

  private constructor(specs: readonly WorkerSpec[], options: WorkerPoolOptions, endpoints: RunEndpoints, monitor: HeartbeatMonitor) {
    this.specs = specs.map((s) => ({ ...s, roles: [...s.roles] }));
    this.options = options;
    this.endpoints = endpoints;
    this.heartbeat = monitor;
    this.failure = new Promise<never>((_, reject) => {
      this.rejectFailure = reject;
    });
    this.failure.catch(() => {}); // rejecting with nobody racing it is fine
  }

  /**
   * Starts every worker in parallel and says hello to each. On any failure, everything started is shut down
   * and the error is thrown (WorkerDiedError, WorkerTimeoutError, WorkerError, ProtocolError, UsageError).
   */
  static async start(specs: readonly WorkerSpec[], options: WorkerPoolOptions): Promise<WorkerPool> {
    checkSpecs(specs);
    const remote = new Set(specs.filter((s) => s.join === true).map((s) => s.name));
    if (remote.size > 0 && options.join === undefined) throw new UsageError("workers to be joined need join options");
    const endpoints = await createEndpoints(
      specs.map((s) => s.name),
      options.transport ?? "ipc",
      { remote, bindHost: options.join?.bind },
    );
    const monitor = new HeartbeatMonitor({
      timeoutS: options.heartbeatTimeoutS ?? 30,
      firstTimeoutS: options.firstHeartbeatTimeoutS,
      onWarning: options.onWarning,
    });
    const pool = new WorkerPool(specs, options, endpoints, monitor);
    try {
      await pool.launch();
      return pool;
    } catch (error) {
      await pool.shutdownAll({ graceMs: 2000, shutdownTimeoutMs: 500 });
      throw error;
    }
  }

  private async launch(): Promise<void> {
    const options = this.options;
    const heartbeatEndpoint = await this.heartbeat.bind(this.endpoints.heartbeat, this.endpoints.curve);
    const remote = this.specs.filter((s) => s.join === true).map((s) => s.name);
    if (remote.length > 0) {
      const join = options.join!;
      this.joinServer = await JoinServer.start(join.bind, join.port, this.endpoints.curve!);
      join.onWaiting?.({ address: this.joinServer.address, key: this.joinServer.key, workers: remote });
    }
    for (const spec of this.specs) {
      const client = new WorkerClient({
        name: spec.name,
        roles: spec.roles,
        requestTimeoutMs: options.requestTimeoutMs ?? null,
        heartbeat: this.heartbeat,
        onWarning: options.onWarning,
      });
      client.on("failed", (error) => this.onClientFailed(error));
      const entry: Entry = { spec, client, proc: null };
      this.entries.set(spec.name, entry);
      for (const role of spec.roles) if (!this.byRole.has(role)) this.byRole.set(role, entry); // a group's first rank
    }

    const started = await Promise.allSettled(
      [...this.entries.values()].map(async (entry) => {
        const requestEndpoint = await entry.client.bind(this.endpoints.endpointFor(entry.spec.name), this.endpoints.curve);
        if (this.stopping) return;
        if (entry.spec.join === true) {
          const join = options.join!;
          const server = this.joinServer!;
          const joiner = await server.offer(
            { worker: entry.spec.name, roles: [...entry.spec.roles], requestPort: portOf(requestEndpoint), heartbeatPort: portOf(heartbeatEndpoint), heartbeatInterval: options.heartbeatIntervalS ?? 0.5 },
            join.timeoutS,
            `DMD2_JOIN_KEY=<the run's key> dmd2 worker --join ${server.address.replace("0.0.0.0", "<this host>")} --worker ${entry.spec.name}`,
          );
          entry.client.attachRemote();
          join.onJoined?.({ worker: entry.spec.name, ...joiner });
          return;
        }
        const entryArgs = typeof options.entry === "function" ? options.entry(entry.spec) : options.entry;
        entry.proc = await spawnWorker({
          python: options.python,
          name: entry.spec.name,
          roles: entry.spec.roles,
          requestEndpoint,
          heartbeatEndpoint,
          heartbeatInterval: options.heartbeatIntervalS ?? 0.5,
          logFile: options.logDir == null ? null : path.join(options.logDir, `${entry.spec.name}.log`),
          env: { ...options.env, ...entry.spec.env, ...curveEnv(this.endpoints.curve) },
          cwd: options.cwd,
          entry: entryArgs,
        });
        entry.client.attachProcess(entry.proc);
      }),
    );
    const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed !== undefined) throw failed.reason;

    await Promise.all(
      [...this.entries.values()].map(async (entry) => {
        const params = typeof options.hello === "function" ? options.hello(entry.spec) : options.hello;
        const reply = await entry.client.hello(params, { timeoutMs: options.helloTimeoutMs === undefined ? 300_000 : options.helloTimeoutMs });
        const want = [...entry.spec.roles].sort().join(",");
        const got = [...reply.roles].sort().join(",");
        if (want !== got) {
          throw new ProtocolError(`hello reply names roles [${got}], expected [${want}]`, {
            code: "PROTOCOL_UNEXPECTED_REPLY",
            worker: entry.spec.name,
          });
        }
        this.hellos.set(entry.spec.name, reply);
      }),
    );
  }

  private onClientFailed(error: DmdError): void {
    if (this.stopping || this.firstFailure !== null) return;
    this.firstFailure = error;
    this.rejectFailure(error);
    const racers = [...this.racers];
    this.racers.clear();
    for (const fail of racers) fail(error);
  }

  // --- lookups -----------------------------------------------------------------------------------------------

  /** The client of a worker by name. */
  client(worker: string): WorkerClient {
    const entry = this.entries.get(worker);
    if (entry === undefined) throw new UsageError(`no worker named "${worker}"`);
    return entry.client;
  }

  /** The client of the worker hosting a role. */
  clientFor(role: Role): WorkerClient {
    const entry = this.byRole.get(role);
    if (entry === undefined) throw new UsageError(`no worker hosts role ${role}`);
    return entry.client;
  }

  /** The name of the worker hosting a role. */
  workerFor(role: Role): string {
    return this.clientFor(role).name;
  }

  clients(): WorkerClient[] {
    return [...this.entries.values()].map((e) => e.client);
  }

  process(worker: string): WorkerProcess | null {
    return this.entries.get(worker)?.proc ?? null;
  }

  /** hello reply bodies by worker name. */
  get helloReplies(): ReadonlyMap<string, HelloReplyBody> {
    return this.hellos;
  }

  /** Process ids by worker name (as spawned). */
  pids(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, entry] of this.entries) if (entry.proc !== null) out[name] = entry.proc.pid;
    return out;
  }

  /** The first failure so far, or null. */
  get failed(): DmdError | null {
    return this.firstFailure;
  }

  /**
   * `work`, unless a worker dies or times out first (then that error). Not `Promise.race([work, this.failure])`:
   * that leaves a reaction on `failure`, which never settles in a healthy run, for every call, and through it the
   * settled result (an op's reply with its tensor buffers) stays reachable for the life of the pool.
   */
  race<T>(work: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const fail = (error: DmdError) => reject(error);
      work.then(
        (value) => {
          this.racers.delete(fail);
          resolve(value);
        },
        (error: unknown) => {
          this.racers.delete(fail);
          reject(error);
        },
      );
      // As Promise.race would: an already settled `work` wins over a failure that is already known.
      if (this.firstFailure !== null) this.failure.catch(fail);
      else this.racers.add(fail);
    });
  }

  // --- shutdown ----------------------------------------------------------------------------------------------

  /**
   * Stops every worker: a `shutdown` request (short time limit), then SIGTERM to any still running, then
   * SIGKILL after graceMs. Closes the sockets and removes the ipc directory. Idempotent: later calls return
   * the first call's result.
   */
  shutdownAll(options: ShutdownOptions = {}): Promise<WorkerShutdown[]> {
    if (this.closing !== null) return this.closing;
    this.stopping = true;
    const graceMs = options.graceMs ?? 5000;
    const shutdownTimeoutMs = options.shutdownTimeoutMs ?? 2000;
    this.closing = (async () => {
      const results = await Promise.all(
        [...this.entries.values()].map(async (entry): Promise<WorkerShutdown> => {
          const { client, proc } = entry;
          this.heartbeat.unwatch(entry.spec.name);
          let replied = false;
          const joined = entry.spec.join === true && client.process === null && client.remoteAttached;
          if (((proc !== null && proc.running) || joined) && client.failed === null) {
            replied = await client.shutdown({ timeoutMs: shutdownTimeoutMs });
            if (replied && proc !== null) await Promise.race([proc.exited, delay(Math.min(graceMs, 2000))]);
          }
          const exit = proc === null ? null : await proc.stop({ graceMs });
          await client.close();
          return { worker: entry.spec.name, replied, exit, forced: proc?.forced ?? false };
        }),
      );
      this.joinServer?.close();
      await this.heartbeat.stop();
      await this.endpoints.cleanup();
      return results;
    })();
    return this.closing;
  }

  /** Same as shutdownAll() with default options. */
  close(options?: ShutdownOptions): Promise<WorkerShutdown[]> {
    return this.shutdownAll(options);
  }
}
