// Resolves `roles.<role>` (docs/recipe.md "Placement"): each role's devices (one per replica), precision, gradient
// checkpointing and process-group backend, from the role's keys and the top-level defaults. Pure; every misfit
// that can be seen without the workers is a Problem naming the key. What the workers' machines have is checked
// later, at hello (workers/placementCheck.ts).

import type { PlacedRole, Precision, RolePlacement } from "./types.js";
import { PLACED_ROLES } from "./types.js";
import type { Problem } from "./validate.js";

interface RawRole {
  device: string | string[] | null;
  precision: Precision | null;
  gradient_checkpointing?: boolean | null;
  replicas: number | null;
  backend: "auto" | "gloo" | "nccl";
  strategy?: "replicate" | "fsdp";
  join?: boolean;
}

export interface PlacementDefaults {
  device: string;
  precision: Precision;
  gradient_checkpointing: boolean;
  placement: "per_role" | "colocated";
  batchSize: number;
  transport?: "ipc" | "tcp";
}

export function resolveRolePlacement(role: PlacedRole, raw: RawRole, d: PlacementDefaults, problems: Problem[]): RolePlacement {
  const at = (key: string) => ["roles", role, key];
  let devices = raw.device === null ? [d.device] : typeof raw.device === "string" ? [raw.device] : [...raw.device];
  const replicas = raw.replicas ?? devices.length;
  if (devices.length === 1 && replicas > 1) {
    // "cuda" with N replicas: one GPU each, cuda:0..N-1; any other single device is shared by every replica
    devices = devices[0] === "cuda" ? Array.from({ length: replicas }, (_, i) => `cuda:${i}`) : Array<string>(replicas).fill(devices[0]!);
  }
  if (devices.length !== replicas) {
    problems.push({ path: at("device"), message: `lists ${devices.length} devices but roles.${role}.replicas is ${replicas} (give one device per replica, or one device for all)` });
  }
  const kinds = new Set(devices.map((x) => x.split(":")[0]));
  if (kinds.size > 1) problems.push({ path: at("device"), message: `mixes cpu and cuda devices [${devices.join(", ")}] (the replicas of a role must all be on cpu or all on cuda)` });
  const onCuda = kinds.has("cuda") && kinds.size === 1;
  let backend: "gloo" | "nccl" = raw.backend === "auto" ? (onCuda ? "nccl" : "gloo") : raw.backend;
  if (backend === "nccl" && !onCuda) {
    problems.push({ path: at("backend"), message: `nccl needs CUDA devices, but roles.${role}.device is [${devices.join(", ")}] (use backend: gloo, or auto)` });
    backend = "gloo";
  }
  if (backend === "nccl" && replicas > 1) {
    const seen = new Set<string>();
    const twice = devices.map((x) => (x === "cuda" ? "cuda:0" : x)).find((x) => (seen.has(x) ? true : (seen.add(x), false)));
    if (twice !== undefined) problems.push({ path: at("device"), message: `${twice} is given to two replicas, but NCCL needs one GPU per replica (list distinct devices, or use backend: gloo)` });
  }
  const strategy = raw.strategy ?? "replicate";
  if (strategy === "fsdp" && role === "teacher") {
    problems.push({ path: at("strategy"), message: "fsdp is for the trained roles (generator, fake_score); a frozen teacher too big for one device is not supported yet" });
  } else if (strategy === "fsdp" && replicas < 2) {
    problems.push({ path: at("strategy"), message: `fsdp shards over the role's replicas, but roles.${role}.replicas is ${replicas} (give 2 or more, or a list of devices)` });
  }
  if (role === "teacher" && raw.gradient_checkpointing === true) {
    problems.push({ path: at("gradient_checkpointing"), message: "the teacher is frozen (it runs no backward pass), so checkpointing saves nothing; drop the key" });
  }
  if (raw.join === true && d.transport !== undefined && d.transport !== "tcp") {
    problems.push({ path: at("join"), message: `workers on other hosts need transport: tcp (authenticated with CURVE), got ${d.transport}` });
  }
  if (replicas > 1 && d.placement === "colocated") {
    problems.push({ path: at("replicas"), message: `is ${replicas}, but placement is colocated (one process runs every role); use placement: per_role to replicate roles` });
  }
  if (replicas > 1 && d.batchSize % replicas !== 0) {
    problems.push({ path: at("replicas"), message: `${replicas} replicas cannot split train.batch_size ${d.batchSize} evenly (make the batch size a multiple of ${replicas})` });
  }
  return {
    device: devices,
    precision: raw.precision ?? d.precision,
    gradient_checkpointing: role === "teacher" ? false : (raw.gradient_checkpointing ?? d.gradient_checkpointing),
    replicas,
    backend,
    strategy,
    join: raw.join ?? false,
  };
}

export function resolvePlacement(raw: Record<PlacedRole, RawRole>, d: PlacementDefaults, problems: Problem[]): Record<PlacedRole, RolePlacement> {
  return Object.fromEntries(PLACED_ROLES.map((role) => [role, resolveRolePlacement(role, raw[role], d, problems)])) as Record<PlacedRole, RolePlacement>;
}
