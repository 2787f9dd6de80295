// An estimate of each worker's memory for a recipe, from the networks' parameter counts and activation sizes
// (network.ts: the built-in TinyUNet, params.ts, or a diffusers teacher's UNet2DModel, unet2d.ts).
// Everything is float32. A trained network holds weights, gradients and AdamW's two moment buffers (4x its
// weights); a frozen one holds weights only. Activations: the values autograd keeps for a backward pass
// (unetActivationsPerSample) times the batch, times 2 for the gradients the backward pass makes alongside
// them. The roles' peaks are added as if they happened at once, so a worker's figure is an upper bound of
// what the networks need; the Python interpreter and torch themselves come on top (see RUNTIME_NOTE).

import type { Recipe, Role } from "../recipe/types.js";
import type { WorkerSpec } from "../schedule/placement.js";
import type { NetworkPlan } from "./network.js";

const FLOAT32 = 4;
/** The backward pass makes a gradient for each kept activation. */
const BACKWARD_FACTOR = 2;

export const RUNTIME_NOTE =
  "not included: the Python interpreter and torch themselves, about 0.25 GiB per worker process on CPU (more on CUDA: its context takes ~0.3-0.5 GiB of GPU memory)";

export interface RoleMemory {
  role: Role;
  params: number;
  trained: boolean;
  weightsBytes: number;
  gradsBytes: number;
  /** AdamW's exp_avg and exp_avg_sq */
  optimizerBytes: number;
  activationBytes: number;
  /** what the activation figure counts */
  activationBasis: string;
  totalBytes: number;
}

export interface WorkerMemory {
  worker: string;
  roles: RoleMemory[];
  totalBytes: number;
}

/** The sizes memory needs, or null when the network is not fully known. */
function sizes(n: NetworkPlan): { params: number; head: number; perSample: number; encoderPerSample: number } | null {
  if (n.params === null || n.discriminatorHeadParams === null || n.activationsPerSample === null || n.encoderActivationsPerSample === null) return null;
  return { params: n.params, head: n.discriminatorHeadParams, perSample: n.activationsPerSample, encoderPerSample: n.encoderActivationsPerSample };
}

function roleMemory(role: Role, r: Recipe, n: NetworkPlan, z: NonNullable<ReturnType<typeof sizes>>): RoleMemory {
  // one process: a replicated role's rank sees 1/N of the batch; with FSDP it holds 1/N of what it trains
  const placed = r.roles[role === "discriminator" ? "fake_score" : role];
  const B = r.train.batch_size / placed.replicas;
  const sharded = placed.strategy === "fsdp" ? placed.replicas : 1;
  const full = z.perSample * B * FLOAT32;
  const encoder = z.encoderPerSample * B * FLOAT32;
  let params = z.params;
  let trained = true;
  let activationBytes: number;
  let activationBasis: string;
  switch (role) {
    case "teacher": {
      // predict_x0 without a graph; classifier-free guidance runs the conditional and the null class together
      const cfg = r.dmd.real_guidance_scale !== 1 && n.numClasses !== null ? 2 : 1;
      trained = false;
      activationBytes = full * cfg;
      activationBasis = `one forward without a graph at batch ${B * cfg}${cfg === 2 ? " (guidance)" : ""}`;
      break;
    }
    case "generator": {
      // generate keeps the graph of its last forward until update back-propagates through it; with
      // backprop_through_chain the graph of every step before it too (at most all N)
      const forwards = r.generator.backprop_through_chain ? r.generator.steps : 1;
      activationBytes = forwards * full * BACKWARD_FACTOR;
      activationBasis = forwards === 1
        ? `one forward + backward at batch ${B}`
        : `${forwards} forwards + backward at batch ${B} (generator.backprop_through_chain: the whole chain's graph)`;
      break;
    }
    case "fake_score":
      activationBytes = full * BACKWARD_FACTOR;
      activationBasis = `one forward + backward at batch ${B} (denoising loss)`;
      break;
    case "discriminator": {
      // fake_score.update runs the backbone's encoder on the fake and the real batch for D's loss
      const ganOn = r.gan.enabled;
      params = z.head;
      trained = ganOn && r.gan.discriminator_weight > 0;
      activationBytes = ganOn ? 2 * encoder * BACKWARD_FACTOR : 0;
      activationBasis = ganOn ? `two encoder forwards + backward at batch ${B} (real and fake)` : "none (gan.enabled is false)";
      break;
    }
  }
  const weightsBytes = (params * FLOAT32) / sharded;
  const gradsBytes = trained ? weightsBytes : 0;
  const optimizerBytes = trained ? 2 * weightsBytes : 0;
  return {
    role,
    params,
    trained,
    weightsBytes,
    gradsBytes,
    optimizerBytes,
    activationBytes,
    activationBasis,
    totalBytes: weightsBytes + gradsBytes + optimizerBytes + activationBytes,
  };
}

/** Each worker's memory; null when the network's sizes are unknown (NetworkPlan.unknown says why). */
export function memoryEstimate(layout: WorkerSpec[], r: Recipe, network: NetworkPlan): WorkerMemory[] | null {
  const z = sizes(network);
  if (z === null) return null;
  return layout.map((w) => {
    const roles = w.roles.map((role) => roleMemory(role, r, network, z));
    return { worker: w.name, roles, totalBytes: roles.reduce((s, m) => s + m.totalBytes, 0) };
  });
}
