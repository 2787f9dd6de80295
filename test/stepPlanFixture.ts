// The step-plan fixture shared by both languages (python-worker/tests/fixtures/step-plan.json): planStep's phases
// for steps of several resolved recipes, and routeTensors' attach lists for the per_role placement at a few of
// them. scripts/regen-step-fixture.mjs writes it; test/step-plan.test.ts checks the file is what this module
// gives now (a TypeScript-only change fails there) and python-worker/tests/test_step_plan.py that the Python port
// gives exactly the file (a Python-only change fails there).

import path from "node:path";
import { conditioningFor } from "../src/recipe/conditioning.js";
import { loadRecipe } from "../src/recipe/load.js";
import type { DataSource, Recipe } from "../src/recipe/types.js";
import { roleHome, workerLayout } from "../src/recipe/workerLayout.js";
import { ganGeneratorWeight, generatorUpdatesBefore, isGeneratorStep, opSeed, SEED_SALT, warmupLr } from "../src/schedule/schedule.js";
import { planStep, routeTensors, type OpCall } from "../src/schedule/stepPlan.js";
import { projectRoot } from "./helpers.js";

export const STEP_FIXTURE = path.join(projectRoot, "python-worker", "tests", "fixtures", "step-plan.json");

export interface StepFixture {
  about: string;
  /** the schedule helpers on grids of arguments: each row is the arguments, then the value */
  helpers: Record<string, number[][]>;
  seed_salt: Record<string, number>;
  cases: {
    name: string;
    recipe: Recipe;
    plans: { step: number; phases: OpCall[][] }[];
    /** per_role placement: for each call of the step (in plan order), the inputs routed from another process */
    routes: { step: number; attach: string[][] }[];
  }[];
}

const tiny = (overrides: string[] = []): Recipe => loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), { cwd: "/abs", cpuCount: 2, overrides });

/**
 * A recipe resolved against folders this fixture does not create: the tiny recipe with the values resolve.ts
 * gives such a teacher and data (teacher.family as the folder would say, teacher.conditioning by conditioning.ts).
 */
function withFolders(base: Recipe, source: DataSource, family: string, hasClasses: boolean, data: Partial<Recipe["data"]>): Recipe {
  const conditioning = conditioningFor(source, family, hasClasses);
  if (conditioning === null) throw new Error(`step fixture: ${source} data does not go with a ${family} teacher`);
  return {
    ...base,
    data: { ...base.data, ...data, source },
    teacher: { ...base.teacher, source: "diffusers", path: `/abs/teachers/${family}`, family, conditioning },
  };
}

const STEPS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 19, 20, 21, 25, 99, 100, 199];
const ROUTED_STEPS = [0, 1];

export function stepFixture(): StepFixture {
  const text = (family: string, overrides: string[]) =>
    withFolders(tiny(overrides), "prompts", family, true, { prompts: { file: "/abs/prompts.txt", images: "/abs/real-images" } });
  const cases: [string, Recipe, number[]][] = [
    ["tiny: GAN on, TTUR 5, lr warm-up 20, 2-step generator", tiny(), STEPS],
    ["GAN off", tiny(["gan.enabled=false"]), STEPS],
    ["GAN warm-up over 10 steps", tiny(["gan.warmup_steps=10", "gan.generator_weight=0.01", "ttur.ratio=2"]), STEPS],
    ["1-step generator, TTUR 1", tiny(["generator.steps=1", "generator.timesteps=null", "ttur.ratio=1"]), STEPS],
    ["4-step generator, TTUR 3, lr warm-up 3", tiny(["generator.steps=4", "generator.timesteps=null", "ttur.ratio=3", "optim.warmup_steps=3"]), STEPS],
    ["no lr warm-up, guidance 3, dmd weight 2", tiny(["optim.warmup_steps=0", "dmd.real_guidance_scale=3", "dmd.weight=2", "seed=7"]), STEPS],
    ["warm-up counted in steps, TTUR 5, lr warm-up 12", tiny(["optim.warmup_steps=12"]), [...STEPS, 30, 40]],
    ["warm-up counted in updates, TTUR 5, lr warm-up 12", tiny(["optim.warmup_steps=12", "optim.warmup_unit=updates"]), [...STEPS, 30, 40, 50, 55, 60]],
    ["two stages: GAN off, then on at a lower lr from step 10", tiny(["stages=[{from_step: 0, set: {gan.enabled: false}}, {from_step: 10, set: {gan.enabled: true, generator.lr: 5.0e-7, fake_score.lr: 5.0e-7}}]"]), STEPS],
    ["stages: dmd weight and guidance from step 5, GAN weights from step 20, GAN warm-up 10", tiny(["gan.warmup_steps=10", "stages=[{from_step: 5, set: {dmd.weight: 0.5, dmd.real_guidance_scale: 2}}, {from_step: 20, set: {gan.generator_weight: 0.01, gan.discriminator_weight: 0}}]"]), STEPS],
    ["largest seed, late steps", tiny(["seed=2147483647"]), [999999, 1000000, 1000001, 12345678]],
    ["image folder with class subfolders", withFolders(tiny(), "folder", "unet2d", true, { folder: { path: "/abs/data/classes", channels: 3 } }), STEPS],
    ["image folder without classes (unconditional)", withFolders(tiny(), "folder", "unet2d", false, { folder: { path: "/abs/data/flat", channels: 3 } }), STEPS],
    ["sd15 prompts, GAN off, guidance 7.5", text("sd15", ["gan.enabled=false", "dmd.real_guidance_scale=7.5", "generator.steps=4", "generator.timesteps=null"]), STEPS],
    ["sdxl prompts, GAN on, TTUR 5", text("sdxl", ["dmd.real_guidance_scale=8"]), STEPS],
    ["sd3 (flow matching) prompts, GAN on, 2-step generator, guidance 4", text("sd3", ["dmd.real_guidance_scale=4", "ttur.ratio=2"]), STEPS],
  ];
  const home = roleHome(workerLayout("per_role"));
  const grid = (...axes: number[][]): number[][] => axes.reduce<number[][]>((rows, axis) => rows.flatMap((row) => axis.map((v) => [...row, v])), [[]]);
  const steps = Array.from({ length: 12 }, (_, s) => s);
  const gan = (weight: number, warmup: number) => ({ gan: { enabled: true, generator_weight: weight, warmup_steps: warmup } }) as unknown as Recipe;
  return {
    about: "planStep (src/schedule/stepPlan.ts) for steps of these resolved recipes, routeTensors' attach lists for per_role, and the schedule helpers (schedule.ts) on grids; written by scripts/regen-step-fixture.mjs, read by test/step-plan.test.ts and python-worker/tests/test_step_plan.py",
    helpers: {
      is_generator_step: grid(steps, [1, 3, 5]).map(([s, k]) => [s!, k!, Number(isGeneratorStep(s!, k!))]),
      generator_updates_before: grid(steps, [1, 3, 5]).map(([s, k]) => [s!, k!, generatorUpdatesBefore(s!, k!)]),
      warmup_lr: grid([1e-4, 3e-5], [0, 1, 5, 19, 20, 500], [0, 1, 3, 20]).map(([lr, u, w]) => [lr!, u!, w!, warmupLr(lr!, u!, w!)]),
      gan_generator_weight: grid([0, 1, 3, 5, 10, 11, 1000], [0.003, 0.01], [0, 3, 10]).map(([s, wt, w]) => [s!, wt!, w!, ganGeneratorWeight(s!, gan(wt!, w!))]),
      op_seed: grid([0, 7, 2147483647], [0, 1, 999999, 12345678], [1, 2, 3, 101]).map(([seed, s, salt]) => [seed!, s!, salt!, opSeed(seed!, s!, salt!)]),
    },
    seed_salt: { ...SEED_SALT },
    cases: cases.map(([name, recipe, steps]) => ({
      name,
      recipe,
      plans: steps.map((step) => ({ step, phases: planStep(step, recipe) })),
      routes: ROUTED_STEPS.map((step) => ({ step, attach: routeTensors(planStep(step, recipe), home).flat().map((c) => c.attach) })),
    })),
  };
}

/** The fixture as the file holds it: one line per recipe, plan and route. */
export function stepFixtureText(f: StepFixture = stepFixture()): string {
  const j = (v: unknown) => JSON.stringify(v);
  const caseText = (c: StepFixture["cases"][number]) =>
    [
      `  {"name": ${j(c.name)},`,
      `   "recipe": ${j(c.recipe)},`,
      `   "plans": [\n${c.plans.map((p) => `    ${j(p)}`).join(",\n")}\n   ],`,
      `   "routes": [\n${c.routes.map((r) => `    ${j(r)}`).join(",\n")}\n   ]}`,
    ].join("\n");
  const helpers = Object.entries(f.helpers).map(([k, rows]) => `  ${j(k)}: ${j(rows)}`).join(",\n");
  return `{"about": ${j(f.about)},\n "helpers": {\n${helpers}\n },\n "seed_salt": ${j(f.seed_salt)},\n "cases": [\n${f.cases.map(caseText).join(",\n")}\n ]\n}\n`;
}
