// One training step as a list of phases of op calls (docs/protocol.md §4, "op sequence"). Calls within a phase
// touch different roles and may run concurrently; phases run in order. routeTensors() then decides, for a
// given placement, which tensors must travel between processes: a tensor produced in one worker and consumed
// in another is returned by its producer and attached, untouched, to the consumer's request. Roles sharing a
// process exchange nothing through the coordinator. planStep reads the resolved recipe and nothing else: what
// the step needs from the disk (the conditioning tensors) was resolved into it (src/recipe/conditioning.ts).

import type { Recipe, Role } from "../recipe/types.js";
import {
  ganDiscriminatorWeight,
  ganGeneratorWeight,
  isGeneratorStep,
  opSeed,
  SEED_SALT,
  warmupIndex,
  warmupLr,
} from "./schedule.js";
import { recipeAt } from "./stages.js";

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

/** One training step `step` of the resolved recipe `r`: a pure function of the two (test/step-plan.test.ts and
 * python-worker/dmd2_worker/step_plan.py's port are pinned to it by python-worker/tests/fixtures/step-plan.json). */
export function planStep(step: number, recipe: Recipe): OpCall[][] {
  const r = recipeAt(step, recipe); // the keys of the training stage in force at this step (stages.ts)
  const cond = r.teacher.conditioning; // cond, none, or the family's text tensors (src/recipe/conditioning.ts)
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
    phases.push([
      {
        role: "generator",
        op: "update",
        args: { lr: warmupLr(r.generator.lr, warmupIndex(step, "generator", r), r.optim.warmup_steps), dmd_weight: r.dmd.weight },
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
        lr: warmupLr(r.fake_score.lr, warmupIndex(step, "fake_score", r), r.optim.warmup_steps),
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
