// The default `torch_threads` (docs/recipe.md): how many threads each worker process gives torch when the
// recipe leaves the key null. One worker (colocated) gets every core. Several workers (per_role) split the
// cores, max(1, floor(cores / workers)), unless the networks are big enough that compute dominates a step:
// then each worker gets every core too. The roles mostly take turns (the step's ops depend on each other), so
// a worker at work has the cores to itself; where two overlap (teacher and fake score), long ops lose little
// to the oversubscription, while small ops lose much to OpenMP threads spin-waiting for a core, which is why
// small networks keep the split.
//
// The size measure is the work of one forward pass at the training batch: multiply-accumulates per sample
// (params.ts unetMacsPerSample, unet2d.ts unet2dMacsPerSample) times train.batch_size, computed from the recipe
// and the teacher's unet/config.json alone. Pure given the recipe, the core count and the files it reads.

import type { Recipe } from "../recipe/types.js";
import { workerLayout } from "./workerLayout.js";
import { unetArch, unetMacsPerSample } from "../unet/params.js";
import { readTeacherNetwork, unet2dMacsPerSample } from "../unet/unet2d.js";

/**
 * Multiply-accumulates of one forward pass at the training batch from which per_role workers get every core
 * on a CPU: 2^27 (~134 million). Measured on 2 cores (per_role step time at 2 threads per worker / at 1):
 * 1.72 at 9M (recipes/tiny.yaml), 1.19 at 68M, 0.88-0.94 at 266M, 0.79 at 531M, 0.77 at 960M
 * (recipes/digits.yaml), ~0.6 at 4,173M (the bench's compute variant); the threshold is the geometric middle
 * of the last size where the split won and the first where all cores did.
 */
export const COMPUTE_BOUND_MACS = 2 ** 27;

export type ThreadsRule = "one worker" | "compute-bound" | "split";

export interface ThreadsDefault {
  threads: number;
  rule: ThreadsRule;
  /** multiply-accumulates of one forward pass at the training batch; null when unknown (or not needed) */
  forwardMacs: number | null;
  /** one line: why this many threads */
  reason: string;
}

/** The work of one forward pass of the recipe's networks at the training batch, or why it is unknown. */
export function forwardWork(r: Omit<Recipe, "torch_threads">): { macsPerSample: number; batch: number; macs: number } | { unknown: string } {
  const batch = r.train.batch_size;
  let perSample: number;
  if (r.teacher.source === "builtin") {
    perSample = unetMacsPerSample(unetArch(r));
  } else {
    if (r.teacher.path === null) return { unknown: "no teacher.path" };
    const t = readTeacherNetwork(r.teacher.path);
    if (t.arch === null) return { unknown: t.unknown ?? "the teacher's network cannot be sized" };
    // a config without sample_size: the data's image size, where the recipe tells it
    const size = t.arch.imageSize ?? (r.data.source === "digits" ? 8 : r.data.source === "gmm" ? r.data.gmm.image_size : null);
    if (size === null) return { unknown: `${t.configFile} has no sample_size` };
    perSample = unet2dMacsPerSample(t.arch, size);
  }
  return { macsPerSample: perSample, batch, macs: perSample * batch };
}

const millions = (n: number) => `${Math.round(n / 1e6).toLocaleString("en-US")}M`;

/** The default torch_threads per worker process for this recipe on `cores` cores (the rule in the file comment). */
export function defaultTorchThreads(r: Omit<Recipe, "torch_threads">, cores: number): ThreadsDefault {
  const all = Math.max(1, cores);
  // worker processes: a replicated role (roles.<role>.replicas, resolved before this) runs one per replica
  const workers = workerLayout(r.placement).reduce((n, w) => n + Math.max(1, ...w.roles.map((role) => r.roles?.[role === "discriminator" ? "fake_score" : role]?.replicas ?? 1)), 0);
  if (workers <= 1) return { threads: all, rule: "one worker", forwardMacs: null, reason: "one worker: all cores" };
  const split = Math.max(1, Math.floor(all / workers));
  const splitRule = (forwardMacs: number | null, why: string): ThreadsDefault => ({ threads: split, rule: "split", forwardMacs, reason: `split between the ${workers} workers: ${why}` });
  if (r.device !== "cpu") return splitRule(null, `device ${r.device} does the compute`);
  const work = forwardWork(r);
  if ("unknown" in work) return splitRule(null, `the networks' size is unknown: ${work.unknown}`);
  const size = `${millions(work.macs)} multiply-accumulates per forward at batch ${work.batch}`;
  if (work.macs < COMPUTE_BOUND_MACS) return splitRule(work.macs, `small networks, ${size} (all cores from ${millions(COMPUTE_BOUND_MACS)})`);
  return { threads: all, rule: "compute-bound", forwardMacs: work.macs, reason: `all cores: compute-bound networks, ${size}; the roles mostly take turns` };
}
