// Replicated roles (docs/protocol.md §1 "Replicas", docs/recipe.md "Placement"): a role with `replicas: N` runs
// as N worker processes, ranks of one torch.distributed process group that this module sets up the way torchrun
// would (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK). The coordinator addresses the group as one
// role: every rank gets the same op and arguments with its rows of every attached tensor (all step tensors are
// batch-major), and the ranks' returned tensors are joined in rank order.

import type { OpReplyBody, TensorFrame, Message } from "../protocol/messages.js";
import type { PlacedRole, Recipe, Role } from "../recipe/types.js";
import type { WorkerSpec } from "../workers/pool.js";
import { freePort } from "../workers/endpoints.js";
import type { OpResult } from "../workers/client.js";
import { DmdError } from "../errors.js";

/** One logical worker of the layout and the processes that run it (one, or one per replica). */
export interface WorkerGroup {
  name: string;
  roles: Role[];
  ranks: WorkerSpec[];
}

/** The `roles.<key>` placement a role follows (the discriminator is a head on the fake score's network). */
export const placementKey = (role: Role): PlacedRole => (role === "discriminator" ? "fake_score" : role);

/** Expands each logical worker with `replicas > 1` into ranks named `<worker>-r<i>`. */
export async function expandReplicas(layout: readonly { name: string; roles: readonly Role[] }[], recipe: Recipe, opts: { replicas?: boolean } = {}): Promise<WorkerGroup[]> {
  const groups: WorkerGroup[] = [];
  for (const w of layout) {
    const world = opts.replicas === false ? 1 : Math.max(...w.roles.map((r) => recipe.roles[placementKey(r)].replicas));
    // started on another host by `dmd2 worker --join` (never for `dmd2 sample`, which runs here)
    const join = opts.replicas !== false && w.roles.some((r) => recipe.roles[placementKey(r)].join);
    if (world === 1) {
      groups.push({ name: w.name, roles: [...w.roles], ranks: [{ name: w.name, roles: [...w.roles], ...(join ? { join } : {}) }] });
      continue;
    }
    const port = await freePort();
    const ranks = Array.from({ length: world }, (_, rank): WorkerSpec => ({
      name: `${w.name}-r${rank}`,
      roles: [...w.roles],
      group: w.name,
      ...(join ? { join } : {}),
      env: {
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: String(port),
        RANK: String(rank),
        LOCAL_RANK: String(rank),
        WORLD_SIZE: String(world),
      },
    }));
    groups.push({ name: w.name, roles: [...w.roles], ranks });
  }
  return groups;
}

/** `frame`'s rows for each of `world` ranks (views of its bytes, no copy). */
export function splitRows(frame: TensorFrame, world: number): TensorFrame[] {
  const rows = frame.shape[0];
  if (frame.shape.length === 0 || rows === undefined || rows % world !== 0) {
    throw new DmdError(`internal: tensor "${frame.name}" of shape [${frame.shape.join(", ")}] does not split over ${world} replicas`, { code: "INTERNAL" });
  }
  const per = rows / world;
  const rowBytes = rows === 0 ? 0 : frame.data.length / rows;
  return Array.from({ length: world }, (_, r) => ({
    name: frame.name,
    dtype: frame.dtype,
    shape: [per, ...frame.shape.slice(1)],
    data: frame.data.subarray(r * per * rowBytes, (r + 1) * per * rowBytes),
  }));
}

/** The ranks' parts of one tensor joined along rows, in rank order. */
export function concatRows(parts: readonly TensorFrame[]): TensorFrame {
  const first = parts[0]!;
  for (const p of parts) {
    if (p.dtype !== first.dtype || p.shape.slice(1).join(",") !== first.shape.slice(1).join(",")) {
      throw new DmdError(`internal: replicas returned "${first.name}" with different dtypes or shapes`, { code: "INTERNAL" });
    }
  }
  return {
    name: first.name,
    dtype: first.dtype,
    shape: [parts.reduce((n, p) => n + (p.shape[0] ?? 0), 0), ...first.shape.slice(1)],
    data: Buffer.concat(parts.map((p) => p.data)),
  };
}

/** The group's result: tensors joined, metrics averaged over ranks (each rank's losses are means over equal
 * shares of the batch, so their mean is the whole batch's; gradient norms are equal after the all-reduce;
 * `cuda_peak_mb_<worker>` keeps each rank's own key), op time from the first start to the last end. */
export function mergeResults(results: readonly OpResult[]): OpResult {
  if (results.length === 1) return results[0]!;
  const metrics: Record<string, number | null> = {};
  const keys = new Set(results.flatMap((r) => Object.keys(r.metrics)));
  for (const k of keys) {
    const vals = results.map((r) => r.metrics[k]).filter((v) => v !== undefined);
    metrics[k] = vals.some((v) => v === null) ? null : (vals as number[]).reduce((a, b) => a + b, 0) / vals.length;
  }
  const names = results[0]!.tensors.map((t) => t.name);
  const tensors = names.map((name) => concatRows(results.map((r) => r.tensors.find((t) => t.name === name)!)));
  const times = results.map((r) => r.reply.body.time).filter((t): t is [number, number] => Array.isArray(t) && t.length === 2);
  const body: OpReplyBody = { metrics, ...(times.length ? { time: [Math.min(...times.map((t) => t[0])), Math.max(...times.map((t) => t[1]))] as [number, number] } : {}) };
  const reply: Message<OpReplyBody> = { ...results[0]!.reply, body };
  return { metrics, tensors, reply };
}
