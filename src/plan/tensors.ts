// Which tensors cross process boundaries in a step, with their dtype, shape and size. The routing is
// stepPlan.ts's routeTensors; the shapes are what the roles write into their tensor stores
// (python-worker/dmd2_worker/roles/: generator.generate, teacher/fake_score.predict_x0,
// discriminator.generator_gan_grad).

import { DTYPE_ITEMSIZE, type DType } from "../protocol/messages.js";
import { textFamilies } from "../families.js";
import type { Recipe, Role } from "../recipe/types.js";
import type { RoutedCall } from "../schedule/stepPlan.js";

/** The text step tensors' sizes (a text-to-image teacher, plan/textPipeline.ts): the values of the registry dims
 * seq_len, hidden and pooled (src/families.ts), e.g. cond_hidden (B, seqLen, hiddenDim). */
export interface TextTensorSizes {
  seqLen: number;
  hiddenDim: number;
  /** null: no pooled embedding (a family without one) */
  pooledDim: number | null;
}

export interface TensorInfo {
  dtype: DType;
  shape: number[];
  bytes: number;
}

/**
 * dtype and shape of each tensor an op produces, for this recipe's batch and the images' (C, H, W) (network.ts;
 * null when not known before the workers read the data); null if unknown.
 */
export function tensorInfo(name: string, r: Recipe, imageShape: readonly [number, number, number] | null, text: TextTensorSizes | null = null): TensorInfo | null {
  const B = r.train.batch_size;
  const floats = (...dims: number[]): TensorInfo => ({ dtype: "float32", shape: [B, ...dims], bytes: B * dims.reduce((a, b) => a * b, 1) * DTYPE_ITEMSIZE.float32 });
  const image = (): TensorInfo | null => (imageShape === null ? null : floats(...imageShape));
  const perSample = (): TensorInfo => ({ dtype: "int64", shape: [B], bytes: B * DTYPE_ITEMSIZE.int64 });
  switch (name) {
    case "x_gen":
    case "x_t_dmd":
    case "x0_real":
    case "x0_fake":
    case "gan_grad":
      return image();
    case "cond": // class labels
    case "t_dmd": // the DMD gradient's timesteps
      return perSample();
    default:
      return textTensorInfo(name, B, text);
  }
}

/** A text family's conditioning step tensor (roles/text.py store_conditioning), shaped by its registry entry
 * (src/families.ts): `B`, numbers, and the dims the plan reads (seq_len, hidden, pooled); null when unknown. */
function textTensorInfo(name: string, B: number, text: TextTensorSizes | null): TensorInfo | null {
  if (text === null) return null;
  const spec = textFamilies().flatMap((f) => f.stepTensors).find((t) => t.name === name);
  if (spec === undefined) return null;
  const dims: Record<string, number | null> = { seq_len: text.seqLen, hidden: text.hiddenDim, pooled: text.pooledDim };
  const shape = spec.shape.map((d) => (d === "B" ? B : typeof d === "number" ? d : (dims[d] ?? null)));
  if (shape.some((d) => d === null)) return null;
  const size = shape.reduce<number>((a, b) => a * (b as number), 1);
  return { dtype: spec.dtype, shape: shape as number[], bytes: size * DTYPE_ITEMSIZE[spec.dtype] };
}

export interface Transfer {
  tensor: string;
  dtype: DType | null;
  shape: number[] | null;
  bytes: number | null;
  /** the op that returns it to the coordinator, and its worker */
  from: { worker: string; call: string };
  /** the ops it is attached to, each with its worker */
  to: { worker: string; call: string }[];
}

export interface StepTraffic {
  transfers: Transfer[];
  /** bytes the workers send to the coordinator (each tensor once); null when a tensor's size is unknown */
  returnedBytes: number | null;
  /** bytes the coordinator sends on (each tensor once per consuming call); null when a tensor's size is unknown */
  attachedBytes: number | null;
}

/** Summarises a routed step: one entry per tensor that leaves its worker. */
export function stepTraffic(phases: RoutedCall[][], home: Map<Role, string>, r: Recipe, imageShape: readonly [number, number, number] | null, text: TextTensorSizes | null = null): StepTraffic {
  const transfers = new Map<string, Transfer>();
  const name = (c: RoutedCall) => `${c.role}.${c.op}`;
  const worker = (c: RoutedCall) => home.get(c.role) ?? c.role;
  for (const call of phases.flat()) {
    for (const t of call.outputs.filter((o) => call.returns.includes(o))) {
      const info = tensorInfo(t, r, imageShape, text);
      transfers.set(t, {
        tensor: t,
        dtype: info?.dtype ?? null,
        shape: info?.shape ?? null,
        bytes: info?.bytes ?? null,
        from: { worker: worker(call), call: name(call) },
        to: [],
      });
    }
    for (const t of call.attach) transfers.get(t)?.to.push({ worker: worker(call), call: name(call) });
  }
  const list = [...transfers.values()];
  const known = list.every((t) => t.bytes !== null);
  return {
    transfers: list,
    returnedBytes: known ? list.reduce((sum, t) => sum + t.bytes!, 0) : null,
    attachedBytes: known ? list.reduce((sum, t) => sum + t.bytes! * t.to.length, 0) : null,
  };
}
