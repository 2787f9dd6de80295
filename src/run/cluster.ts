// The workers of one command, seen by role: starts the pool for a placement with the recipe's settings,
// reports who runs where, and runs every request raced against the first worker death or timeout.

import { mkdirSync } from "node:fs";
import path from "node:path";
import type { Role } from "../protocol/messages.js";
import type { SetupReplyBody, TensorFrame } from "../protocol/messages.js";
import type { Recipe } from "../recipe/types.js";
import type { WorkerSpec } from "../schedule/placement.js";
import { resolvePython } from "../workers/python.js";
import { WorkerPool } from "../workers/pool.js";
import type { OpResult } from "../workers/client.js";
import type { ManifestFile } from "./checkpoints.js";
import type { Reporter } from "./reporter.js";

export class Cluster {
  private constructor(
    readonly pool: WorkerPool,
    readonly layout: WorkerSpec[],
  ) {}

  static async start(recipe: Recipe, layout: WorkerSpec[], reporter: Reporter, opts: { logTag?: string } = {}): Promise<Cluster> {
    const python = resolvePython(recipe.python);
    const logDir = path.join(recipe.run_dir, "logs", ...(opts.logTag ? [opts.logTag] : []));
    mkdirSync(logDir, { recursive: true });
    const pool = await WorkerPool.start(layout, {
      python,
      hello: { run_dir: recipe.run_dir, recipe: recipe as unknown as Record<string, unknown>, torch_threads: recipe.torch_threads },
      transport: recipe.transport,
      heartbeatIntervalS: recipe.heartbeat.interval_s,
      heartbeatTimeoutS: recipe.heartbeat.timeout_s,
      logDir,
      env: { PYTHONUNBUFFERED: "1", OMP_NUM_THREADS: String(recipe.torch_threads) },
      onWarning: (line) => reporter.debug(line),
    });
    const workers = layout.map((w) => ({ name: w.name, roles: w.roles, pid: pool.helloReplies.get(w.name)?.pid ?? pool.pids()[w.name] }));
    const first = pool.helloReplies.values().next().value;
    reporter.event(
      "workers",
      { workers, python, torch: first?.torch ?? null },
      `  ${workers.map((w) => `${w.name} pid ${w.pid}`).join(", ")} (torch ${first?.torch ?? "?"}, ${recipe.torch_threads} thread(s) each)`,
    );
    return new Cluster(pool, layout);
  }

  /** Runs `fn`; if a worker dies or stops sending heartbeats first, that error wins. */
  guard<T>(fn: () => Promise<T>): Promise<T> {
    return this.pool.race(fn());
  }

  setup(role: Role, body: { teacher_dir: string | null }): Promise<SetupReplyBody> {
    return this.pool.race(this.pool.clientFor(role).setup(role, body.teacher_dir));
  }

  op(role: Role, op: string, step: number, args: Record<string, unknown>, inputs: readonly TensorFrame[], returns: readonly string[]): Promise<OpResult> {
    return this.pool.race(this.pool.clientFor(role).op(role, op, step, args, inputs, returns));
  }

  /** Every worker writes its roles' state into `dir`; returns the files with the worker that wrote each. */
  async saveAll(dir: string, step: number): Promise<ManifestFile[]> {
    const replies = await this.pool.race(Promise.all(this.layout.map(async (w) => ({ w, rep: await this.pool.client(w.name).save(dir, step) }))));
    return replies.flatMap(({ w, rep }) => rep.files.map((f) => ({ ...f, worker: w.name })));
  }

  async restoreAll(dir: string): Promise<void> {
    await this.pool.race(Promise.all(this.layout.map((w) => this.pool.client(w.name).restore(dir))));
  }

  pids(): Record<string, number> {
    return this.pool.pids();
  }

  async close(): Promise<void> {
    await this.pool.shutdownAll({ graceMs: 3000, shutdownTimeoutMs: 2000 });
  }
}
