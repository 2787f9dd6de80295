// An estimate of each worker's memory for a recipe, from the networks' parameter counts and activation sizes
// (network.ts: the built-in TinyUNet, params.ts, a diffusers teacher's UNet2DModel, unet2d.ts, or a text-to-image
// pipeline's safetensors headers, textPipeline.ts). Everything is float32 (roles/common.py keeps every network in
// float32; bf16 is autocast). A trained network holds weights, gradients and AdamW's two moment buffers (4x its
// weights), and the generator an average of them (generator.ema_decay); a frozen one holds weights only; with LoRA
// only the adapters train. The generator's worker of a text-to-image run also holds the text encoder(s) and VAE.
// Activations: the values autograd keeps for a backward pass (unetActivationsPerSample) times the batch, times 2
// for the gradients the backward pass makes alongside them (unknown for a UNet2DConditionModel). The roles' peaks
// are added as if they happened at once, so a worker's figure is an upper bound of what the networks need; the
// Python interpreter and torch themselves come on top (see RUNTIME_NOTE).

import type { Recipe, Role } from "../recipe/types.js";
import type { WorkerSpec } from "../recipe/workerLayout.js";
import type { NetworkPlan } from "./network.js";

const FLOAT32 = 4;
/** The backward pass makes a gradient for each kept activation. */
const BACKWARD_FACTOR = 2;

export const RUNTIME_NOTE =
  "not included: the Python interpreter and torch themselves, about 0.25 GiB per worker process on CPU (more on CUDA: its context takes ~0.3-0.5 GiB of GPU memory)";

export interface RoleMemory {
  role: Role;
  /** the role's network (with LoRA adapters when it has them) */
  params: number;
  /** what AdamW trains: all of params, the LoRA adapters, or 0 */
  trainedParams: number;
  trained: boolean;
  /** frozen networks the worker holds for this role beside its own (a pipeline's text encoders and VAE) */
  frozenParams: number;
  /** what frozenParams counts ("" when nothing) */
  frozenBasis: string;
  /** the network's and the frozen networks' weights */
  weightsBytes: number;
  gradsBytes: number;
  /** AdamW's exp_avg and exp_avg_sq */
  optimizerBytes: number;
  /** generator.ema_decay > 0: the average of the trained weights */
  emaBytes: number;
  /** null: not modelled for this network (see activationBasis) */
  activationBytes: number | null;
  /** what the activation figure counts */
  activationBasis: string;
  /** everything above; without the activations when they are null (a lower bound then) */
  totalBytes: number;
}

export interface WorkerMemory {
  worker: string;
  roles: RoleMemory[];
  totalBytes: number;
  /** false when some role's activations are unknown: totalBytes is a lower bound */
  complete: boolean;
}

interface Sizes {
  params: number;
  head: number;
  perSample: number | null;
  encoderPerSample: number | null;
}

/** The sizes memory needs, or null when the parameter counts are not known. */
function sizes(n: NetworkPlan): Sizes | null {
  if (n.params === null || n.discriminatorHeadParams === null) return null;
  return { params: n.params, head: n.discriminatorHeadParams, perSample: n.activationsPerSample, encoderPerSample: n.encoderActivationsPerSample };
}

function roleMemory(role: Role, r: Recipe, n: NetworkPlan, z: Sizes): RoleMemory {
  // one process: a replicated role's rank sees 1/N of the batch; with FSDP it holds 1/N of what it trains
  const placed = r.roles[role === "discriminator" ? "fake_score" : role];
  const B = r.train.batch_size / placed.replicas;
  const sharded = placed.strategy === "fsdp" ? placed.replicas : 1;
  const full = z.perSample === null ? null : z.perSample * B * FLOAT32;
  const encoder = z.encoderPerSample === null ? null : z.encoderPerSample * B * FLOAT32;
  const times = (k: number, v: number | null) => (v === null ? null : k * v);
  let params = z.params;
  let trainedParams = z.params;
  let frozenParams = 0;
  let frozenBasis = "";
  let ema = false;
  let activationBytes: number | null;
  let activationBasis: string;
  switch (role) {
    case "teacher": {
      // predict_x0 without a graph; classifier-free guidance runs the conditional and the unconditional input together
      const cfg = r.dmd.real_guidance_scale !== 1 && (n.nullClass || n.kind === "text-to-image") ? 2 : 1;
      trainedParams = 0;
      activationBytes = times(cfg, full);
      activationBasis = `one forward without a graph at batch ${B * cfg}${cfg === 2 ? " (guidance)" : ""}`;
      break;
    }
    case "generator": {
      // generate keeps the graph of its last forward until update back-propagates through it; with
      // backprop_through_chain the graph of every step before it too (at most all N)
      const forwards = r.generator.backprop_through_chain ? r.generator.steps : 1;
      if (n.lora !== null) {
        params = z.params + n.lora.params;
        trainedParams = n.lora.params;
      }
      frozenParams = n.frozen.reduce((s, f) => s + f.params, 0);
      frozenBasis = n.frozen.map((f) => f.name).join(" + ");
      ema = r.generator.ema_decay > 0;
      activationBytes = times(forwards * BACKWARD_FACTOR, full);
      activationBasis = forwards === 1
        ? `one forward + backward at batch ${B}`
        : `${forwards} forwards + backward at batch ${B} (generator.backprop_through_chain: the whole chain's graph)`;
      break;
    }
    case "fake_score":
      activationBytes = times(BACKWARD_FACTOR, full);
      activationBasis = `one forward + backward at batch ${B} (denoising loss)`;
      break;
    case "discriminator": {
      // fake_score.update runs the backbone's encoder on the fake and the real batch for D's loss
      const ganOn = r.gan.enabled;
      params = z.head;
      trainedParams = ganOn && r.gan.discriminator_weight > 0 ? z.head : 0;
      activationBytes = ganOn ? times(2 * BACKWARD_FACTOR, encoder) : 0;
      activationBasis = ganOn ? `two encoder forwards + backward at batch ${B} (real and fake)` : "none (gan.enabled is false)";
      break;
    }
  }
  if (activationBytes === null) activationBasis = `unknown: ${n.activationsUnknown ?? "not modelled"}`;
  const trained = trainedParams > 0;
  // LoRA: the frozen base is whole on every rank; what trains is sharded like a whole network would be
  const trainedBytes = (trainedParams * FLOAT32) / sharded;
  const weightsBytes = ((params - trainedParams) * FLOAT32) + trainedBytes + frozenParams * FLOAT32;
  const gradsBytes = trainedBytes;
  const optimizerBytes = 2 * trainedBytes;
  const emaBytes = ema ? trainedBytes : 0;
  return {
    role,
    params,
    trainedParams,
    trained,
    frozenParams,
    frozenBasis,
    weightsBytes,
    gradsBytes,
    optimizerBytes,
    emaBytes,
    activationBytes,
    activationBasis,
    totalBytes: weightsBytes + gradsBytes + optimizerBytes + emaBytes + (activationBytes ?? 0),
  };
}

/** Each worker's memory; null when the parameter counts are unknown (NetworkPlan.unknown says why). */
export function memoryEstimate(layout: WorkerSpec[], r: Recipe, network: NetworkPlan): WorkerMemory[] | null {
  const z = sizes(network);
  if (z === null) return null;
  return layout.map((w) => {
    const roles = w.roles.map((role) => roleMemory(role, r, network, z));
    return { worker: w.name, roles, totalBytes: roles.reduce((s, m) => s + m.totalBytes, 0), complete: roles.every((m) => m.activationBytes !== null) };
  });
}
