// One training step as a list of phases of op calls (docs/protocol.md §4, "op sequence"). Calls within a phase
// touch different roles and may run concurrently; phases run in order. routeTensors() then decides, for a
// given placement, which tensors must travel between processes: a tensor produced in one worker and consumed
// in another is returned by its producer and attached, untouched, to the consumer's request. Roles sharing a
// process exchange nothing through the coordinator.

import { readdirSync } from "node:fs";
import { textFamily } from "../recipe/teacherFolder.js";
import type { Recipe, Role } from "../recipe/types.js";
import {
  ganDiscriminatorWeight,
  ganGeneratorWeight,
  generatorUpdatesBefore,
  isGeneratorStep,
  opSeed,
  SEED_SALT,
  warmupLr,
} from "./schedule.js";

export interface OpCall {
  role: Role;
  op: string;
  args: Record<string, unknown>;
  inputs: string[];
  outputs: string[];
}

export interface RoutedCall extends OpCall {
  /** outputs this call must send back (consumed in another process) */
  returns: string[];
  /** inputs the coordinator attaches (produced in another process) */
  attach: string[];
}

/** Text step tensors of each text-to-image family (docs/protocol.md §4): SDXL adds the pooled embedding and time ids;
 * SD3 and Flux have the pooled embedding (their pooled_projections) and no time ids; Sana sends its text attention
 * mask (B, 300) as cond_pooled (adapters/sana.py). */
export const TEXT_TENSORS = { sd15: ["cond_hidden"], sdxl: ["cond_hidden", "cond_pooled", "cond_time_ids"], sd3: ["cond_hidden", "cond_pooled"], flux: ["cond_hidden", "cond_pooled"], sana: ["cond_hidden", "cond_pooled"] } as const;

const familyOf = new Map<string, ReturnType<typeof textFamily>>();

/**
 * The conditioning step tensors `generator.generate` makes and the other ops read: the class labels `cond`, or
 * with `data.source: prompts` the text tensors of the teacher's family (model_index.json's _class_name, read once
 * per folder; the recipe check made sure it is a text-to-image pipeline).
 */
export function conditioningTensors(r: Recipe): string[] {
  if (r.data.source === "folder") return folderHasClasses(r.data.folder.path) ? ["cond"] : [];
  if (r.data.source !== "prompts") return ["cond"];
  const dir = r.teacher.path;
  if (dir === null) throw new Error("step plan: data.source prompts without teacher.path");
  if (!familyOf.has(dir)) familyOf.set(dir, textFamily(dir));
  const family = familyOf.get(dir);
  if (family === null || family === undefined) throw new Error(`step plan: ${dir} is not a text-to-image pipeline folder (model_index.json)`);
  return [...TEXT_TENSORS[family]];
}

const classesOf = new Map<string, boolean>();

/**
 * Whether an image folder is class-conditional: class subfolders (the rule of dmd2_worker/data/folder.py; hidden
 * entries skipped) make labels, images directly in it make an unconditional model, which has no `cond` to route.
 * Read once per folder; an unreadable folder counts as conditional and the worker reports the problem.
 */
function folderHasClasses(dir: string | null): boolean {
  if (dir === null) return true;
  if (!classesOf.has(dir)) {
    let found = true;
    try {
      found = readdirSync(dir, { withFileTypes: true }).some((e) => e.isDirectory() && !e.name.startsWith("."));
    } catch {
      found = true;
    }
    classesOf.set(dir, found);
  }
  return classesOf.get(dir)!;
}

export function planStep(step: number, r: Recipe, cond: string[] = conditioningTensors(r)): OpCall[][] {
  const genStep = isGeneratorStep(step, r.ttur.ratio);
  const phases: OpCall[][] = [];
  phases.push([
    {
      role: "generator",
      op: "generate",
      args: { seed: opSeed(r.seed, step, SEED_SALT.generate), batch_size: r.train.batch_size, grad: genStep, dmd: genStep },
      inputs: [],
      outputs: [...cond, "x_gen", ...(genStep ? ["t_dmd", "x_t_dmd"] : [])],
    },
  ]);
  if (genStep) {
    const dmdInputs = ["x_t_dmd", "t_dmd", ...cond];
    phases.push([
      { role: "teacher", op: "predict_x0", args: { guidance_scale: r.dmd.real_guidance_scale }, inputs: dmdInputs, outputs: ["x0_real"] },
      { role: "fake_score", op: "predict_x0", args: {}, inputs: dmdInputs, outputs: ["x0_fake"] },
    ]);
    const ganWeight = ganGeneratorWeight(step, r);
    if (ganWeight > 0) {
      phases.push([
        {
          role: "discriminator",
          op: "generator_gan_grad",
          args: { seed: opSeed(r.seed, step, SEED_SALT.generatorGanGrad), weight: ganWeight },
          inputs: ["x_gen", ...cond],
          outputs: ["gan_grad"],
        },
      ]);
    }
    const u = generatorUpdatesBefore(step, r.ttur.ratio);
    phases.push([
      {
        role: "generator",
        op: "update",
        args: { lr: warmupLr(r.generator.lr, u, r.optim.warmup_steps), dmd_weight: r.dmd.weight },
        inputs: ["x0_real", "x0_fake", ...(ganWeight > 0 ? ["gan_grad"] : [])],
        outputs: [],
      },
    ]);
  }
  phases.push([
    {
      role: "fake_score",
      op: "update",
      args: {
        seed: opSeed(r.seed, step, SEED_SALT.fakeScoreUpdate),
        lr: warmupLr(r.fake_score.lr, step, r.optim.warmup_steps),
        gan_weight: ganDiscriminatorWeight(r),
      },
      inputs: ["x_gen", ...cond],
      outputs: [],
    },
  ]);
  return phases;
}

export function routeTensors(phases: OpCall[][], home: Map<Role, string>): RoutedCall[][] {
  const producer = new Map<string, RoutedCall>();
  const routed = phases.map((phase) => phase.map((c): RoutedCall => ({ ...c, returns: [], attach: [] })));
  for (const phase of routed) {
    for (const call of phase) {
      for (const name of call.inputs) {
        const from = producer.get(name);
        if (!from) throw new Error(`step plan: ${call.role}.${call.op} needs "${name}" but no earlier op produces it`);
        if (home.get(from.role) !== home.get(call.role)) {
          if (!from.returns.includes(name)) from.returns.push(name);
          call.attach.push(name);
        }
      }
    }
    for (const call of phase) for (const name of call.outputs) producer.set(name, call);
  }
  return routed;
}
