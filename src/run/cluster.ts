// The workers of one command, seen by role: starts the pool for a placement with the recipe's settings,
// reports who runs where, and runs every request raced against the first worker death or timeout.

import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Role } from "../protocol/messages.js";
import type { SetupReplyBody, TensorFrame } from "../protocol/messages.js";
import type { Recipe } from "../recipe/types.js";
import type { WorkerSpec } from "../recipe/workerLayout.js";
import { resolvePython } from "../workers/python.js";
import { WorkerPool } from "../workers/pool.js";
import type { OpResult, WorkerClient } from "../workers/client.js";
import { checkPlacement } from "./placementCheck.js";
import { expandReplicas, mergeResults, placementKey, splitRows, type WorkerGroup } from "./replicas.js";
import type { ManifestFile } from "./checkpoints.js";
import type { Reporter } from "./reporter.js";

export class Cluster {
  private readonly groupOf = new Map<Role, WorkerGroup>();

  private constructor(
    readonly pool: WorkerPool,
    readonly layout: WorkerSpec[],
    readonly groups: WorkerGroup[],
    private readonly recipe: Recipe,
  ) {
    for (const g of groups) for (const r of g.roles) this.groupOf.set(r, g);
  }

  /** Starts the workers of `layout` (each replicated role as its ranks, unless `replicas: false`), then checks
   * the recipe's devices against what each worker reported (checkPlacement) before anything is set up. */
  static async start(recipe: Recipe, layout: WorkerSpec[], reporter: Reporter, opts: { logTag?: string; recipeFile?: string | null; replicas?: boolean } = {}): Promise<Cluster> {
    const python = resolvePython(recipe.python);
    const logDir = path.join(recipe.run_dir, "logs", ...(opts.logTag ? [opts.logTag] : []));
    mkdirSync(logDir, { recursive: true });
    const groups = await expandReplicas(layout, recipe, { replicas: opts.replicas });
    const pool = await WorkerPool.start(groups.flatMap((g) => g.ranks), {
      python,
      hello: { run_dir: recipe.run_dir, recipe: recipe as unknown as Record<string, unknown>, torch_threads: recipe.torch_threads },
      transport: recipe.transport,
      heartbeatIntervalS: recipe.heartbeat.interval_s,
      heartbeatTimeoutS: recipe.heartbeat.timeout_s,
      logDir,
      env: { PYTHONUNBUFFERED: "1", OMP_NUM_THREADS: String(recipe.torch_threads) },
      onWarning: (line) => reporter.debug(line),
      join: {
        bind: recipe.join.bind,
        port: recipe.join.port,
        timeoutS: recipe.join.timeout_s,
        onWaiting: ({ address, key, workers }) => {
          const keyFile = path.join(recipe.run_dir, "join.key");
          writeFileSync(keyFile, key + "\n", { mode: 0o600 });
          const shown = address.replace("tcp://0.0.0.0:", "tcp://<this host>:");
          reporter.event(
            "join",
            { address, key_file: keyFile, workers, timeout_s: recipe.join.timeout_s },
            `  waiting up to ${recipe.join.timeout_s} s for ${workers.length} worker(s) from other hosts (${workers.join(", ")}); on each host run:\n` +
              `    DMD2_JOIN_KEY=${key} dmd2 worker --join ${shown}\n  (the key is also in ${keyFile})`,
          );
        },
        onJoined: ({ worker, hostname, pid }) => reporter.info(`  ${worker} joined from ${hostname} (pid ${pid})`),
      },
    });
    try {
      checkPlacement(recipe, groups, pool.helloReplies, opts.recipeFile ?? null);
    } catch (e) {
      await pool.shutdownAll({ graceMs: 2000, shutdownTimeoutMs: 1000 });
      throw e;
    }
    const workers = groups.flatMap((g) => g.ranks).map((w) => ({ name: w.name, roles: w.roles, pid: pool.helloReplies.get(w.name)?.pid ?? pool.pids()[w.name] }));
    const first = pool.helloReplies.values().next().value;
    reporter.event(
      "workers",
      { workers, python, torch: first?.torch ?? null },
      `  ${workers.map((w) => `${w.name} pid ${w.pid}`).join(", ")} (torch ${first?.torch ?? "?"}, ${recipe.torch_threads} thread(s) each)`,
    );
    return new Cluster(pool, layout, groups, recipe);
  }

  /** Runs `fn`; if a worker dies or stops sending heartbeats first, that error wins. */
  guard<T>(fn: () => Promise<T>): Promise<T> {
    return this.pool.race(fn());
  }

  private ranksOf(role: Role): WorkerClient[] {
    const g = this.groupOf.get(role);
    if (g === undefined) return [this.pool.clientFor(role)];
    return g.ranks.map((spec) => this.pool.client(spec.name));
  }

  /** Sets `role` up on every rank; rank 0's reply. The trained roles' ranks join their process group in setup,
   * so they are set up at once; a replicated teacher (no group) on rank 0 first, which installs the teacher
   * folder the other ranks then load. */
  async setup(role: Role, body: { teacher_dir: string | null }): Promise<SetupReplyBody> {
    const [first, ...rest] = this.ranksOf(role);
    if (role === "teacher") {
      const reply = await this.pool.race(first!.setup(role, body.teacher_dir));
      await this.pool.race(Promise.all(rest.map((c) => c.setup(role, body.teacher_dir))));
      return reply;
    }
    const replies = await this.pool.race(Promise.all([first!, ...rest].map((c) => c.setup(role, body.teacher_dir))));
    return replies[0]!;
  }

  /** One op on `role`: on a replicated role, each rank gets its rows of every input and the results are joined
   * (replicas.ts). */
  op(role: Role, op: string, step: number, args: Record<string, unknown>, inputs: readonly TensorFrame[], returns: readonly string[]): Promise<OpResult> {
    const ranks = this.ranksOf(role);
    if (ranks.length === 1) return this.pool.race(ranks[0]!.op(role, op, step, args, inputs, returns));
    const parts = inputs.map((t) => splitRows(t, ranks.length));
    return this.pool.race(Promise.all(ranks.map((c, r) => c.op(role, op, step, args, parts.map((p) => p[r]!), returns)))).then(mergeResults);
  }

  /** One op on `role`'s rank 0 only, with the whole inputs: ops outside the training step that write files
   * (generator.sample); a replicated role's ranks hold the same weights. */
  opOnce(role: Role, op: string, step: number, args: Record<string, unknown>, inputs: readonly TensorFrame[], returns: readonly string[]): Promise<OpResult> {
    const ranks = this.ranksOf(role);
    if (this.recipe.roles[placementKey(role)].strategy !== "fsdp" || ranks.length === 1) return this.pool.race(ranks[0]!.op(role, op, step, args, inputs, returns));
    // sharded: every rank takes part in the forward passes (parameter all-gathers), rank 0 writes; its result
    return this.pool.race(Promise.all(ranks.map((c) => c.op(role, op, step, args, inputs, returns)))).then((r) => r[0]!);
  }

  /** Every worker writes its roles' state into `dir`; a replicated role's ranks all take part (gathering sharded
   * state is a collective) and rank 0 writes. Returns the files with the worker that wrote each. */
  async saveAll(dir: string, step: number): Promise<ManifestFile[]> {
    const replies = await this.pool.race(
      Promise.all(this.groups.map(async (g) => ({ g, reps: await Promise.all(g.ranks.map((spec) => this.pool.client(spec.name).save(dir, step))) }))),
    );
    return replies.flatMap(({ g, reps }) => reps.flatMap((rep) => rep.files).map((f) => ({ ...f, worker: g.name })));
  }

  /** Every rank of every worker loads its roles' state from `dir`. */
  async restoreAll(dir: string): Promise<void> {
    await this.pool.race(Promise.all(this.groups.flatMap((g) => g.ranks).map((w) => this.pool.client(w.name).restore(dir))));
  }

  pids(): Record<string, number> {
    return this.pool.pids();
  }

  async close(): Promise<void> {
    await this.pool.shutdownAll({ graceMs: 3000, shutdownTimeoutMs: 2000 });
  }
}
