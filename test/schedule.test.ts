// The coordinator's schedule: TTUR, warm-ups, seeds, checkpoints, and which tensors cross processes.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadRecipe } from "../src/recipe/load.js";
import type { Recipe } from "../src/recipe/types.js";
import { roleHome, workerLayout } from "../src/recipe/workerLayout.js";
import { ganGeneratorWeight, generatorUpdatesBefore, isCheckpointStep, isGeneratorStep, opSeed, warmupLr } from "../src/schedule/schedule.js";
import { planStep, routeTensors } from "../src/schedule/stepPlan.js";
import { fakeTeacher, projectRoot, scratchDir } from "./helpers.js";

function tiny(overrides: string[] = []): Recipe {
  return loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), { cwd: "/tmp", cpuCount: 2, overrides });
}
const opsOf = (step: number, r: Recipe) => planStep(step, r).flat().map((c) => `${c.role}.${c.op}`);

test("TTUR: the generator updates exactly every `ratio` steps, the fake score every step", () => {
  for (const ratio of [1, 3, 5, 10]) {
    const r = tiny([`ttur.ratio=${ratio}`]);
    let genUpdates = 0;
    for (let s = 0; s < 50; s++) {
      const ops = opsOf(s, r);
      assert.ok(ops.includes("fake_score.update"), `step ${s}: fake score must update`);
      const g = ops.includes("generator.update");
      assert.equal(g, s % ratio === 0, `ratio ${ratio} step ${s}`);
      assert.equal(g, isGeneratorStep(s, ratio));
      assert.equal(generatorUpdatesBefore(s, ratio), genUpdates, `updates before step ${s}`);
      if (g) genUpdates++;
    }
    assert.equal(genUpdates, Math.ceil(50 / ratio));
  }
});

test("a generator step runs generate, teacher and fake score x0, GAN grad, G update, then fake score update", () => {
  const r = tiny();
  assert.deepEqual(
    planStep(0, r).map((ph) => ph.map((c) => `${c.role}.${c.op}`)),
    [["generator.generate"], ["teacher.predict_x0", "fake_score.predict_x0"], ["discriminator.generator_gan_grad"], ["generator.update"], ["fake_score.update"]],
  );
  assert.deepEqual(opsOf(1, r), ["generator.generate", "fake_score.update"]);
  const noGan = tiny(["gan.enabled=false"]);
  assert.deepEqual(opsOf(0, noGan), ["generator.generate", "teacher.predict_x0", "fake_score.predict_x0", "generator.update", "fake_score.update"]);
  assert.equal(planStep(0, noGan).flat().at(-1)!.args.gan_weight, 0);
  const gen = planStep(0, r)[0]![0]!;
  assert.deepEqual(gen.args, { seed: opSeed(0, 0, 1), batch_size: 32, grad: true, dmd: true });
  assert.deepEqual(planStep(1, r)[0]![0]!.args, { seed: opSeed(0, 1, 1), batch_size: 32, grad: false, dmd: false });
});

test("GAN weight warm-up and learning-rate warm-up ramp linearly", () => {
  const r = tiny(["gan.warmup_steps=10", "gan.generator_weight=0.01"]);
  assert.equal(ganGeneratorWeight(0, r), 0);
  assert.ok(Math.abs(ganGeneratorWeight(5, r) - 0.005) < 1e-15);
  assert.equal(ganGeneratorWeight(10, r), 0.01);
  assert.equal(ganGeneratorWeight(100, r), 0.01);
  // at step 0 the G GAN weight is 0, so no discriminator op is planned
  assert.ok(!opsOf(0, r).includes("discriminator.generator_gan_grad"));
  assert.ok(opsOf(5, tiny(["gan.warmup_steps=10", "ttur.ratio=5"])).includes("discriminator.generator_gan_grad"));
  assert.equal(warmupLr(1e-4, 0, 20), 1e-4 / 20);
  assert.equal(warmupLr(1e-4, 19, 20), 1e-4);
  assert.equal(warmupLr(1e-4, 500, 20), 1e-4);
  assert.equal(warmupLr(1e-4, 0, 0), 1e-4);
  // with optim.warmup_unit updates, the generator's warm-up counts its own updates, not steps
  const r5 = tiny(["ttur.ratio=5", "optim.warmup_steps=20", "generator.lr=0.001", "optim.warmup_unit=updates"]);
  const g = planStep(10, r5).flat().find((c) => c.op === "update" && c.role === "generator")!;
  assert.equal(g.args.lr, warmupLr(0.001, 2, 20));
});

test("op seeds are the documented formula, distinct per op and step", () => {
  assert.equal(opSeed(0, 0, 1), 1);
  assert.equal(opSeed(3, 5, 2), (3 * 1000003 + 5 * 7919 + 2) % 2 ** 31);
  assert.equal(opSeed(2 ** 31 - 1, 10 ** 6, 3), Number((BigInt(2 ** 31 - 1) * 1000003n + 7919000000n + 3n) % 2147483648n));
  const seen = new Set<number>();
  for (let s = 0; s < 100; s++) for (const salt of [1, 2, 3]) seen.add(opSeed(42, s, salt));
  assert.equal(seen.size, 300);
});

test("checkpoints every checkpoint_every steps and at the end", () => {
  const r = tiny(["train.steps=250", "train.checkpoint_every=100"]);
  const at = Array.from({ length: 250 }, (_, s) => s).filter((s) => isCheckpointStep(s, r));
  assert.deepEqual(at, [99, 199, 249]);
});

test("per-role placement routes tensors between processes; colocated routes none", () => {
  const r = tiny();
  const per = routeTensors(planStep(0, r), roleHome(workerLayout("per_role")) as never).flat();
  const by = (role: string, op: string) => per.find((c) => c.role === role && c.op === op)!;
  assert.deepEqual(by("generator", "generate").returns.sort(), ["cond", "t_dmd", "x_gen", "x_t_dmd"]);
  assert.deepEqual(by("teacher", "predict_x0").attach, ["x_t_dmd", "t_dmd", "cond"]);
  assert.deepEqual(by("teacher", "predict_x0").returns, ["x0_real"]);
  assert.deepEqual(by("fake_score", "predict_x0").returns, ["x0_fake"]);
  // the discriminator shares fake_score's process, but x_gen comes from the generator's
  assert.deepEqual(by("discriminator", "generator_gan_grad").attach, ["x_gen", "cond"]);
  assert.deepEqual(by("generator", "update").attach, ["x0_real", "x0_fake", "gan_grad"]);
  assert.deepEqual(by("fake_score", "update").attach, ["x_gen", "cond"]);
  const col = routeTensors(planStep(0, r), roleHome(workerLayout("colocated")) as never).flat();
  for (const c of col) {
    assert.deepEqual(c.returns, [], `${c.role}.${c.op}`);
    assert.deepEqual(c.attach, [], `${c.role}.${c.op}`);
  }
  assert.deepEqual(workerLayout("per_role").map((w) => w.name), ["teacher", "generator", "fake_score"]);
});

test("text-to-image teachers: the text tensors take cond's place (SDXL: pooled embeddings and time ids too)", () => {
  const dir = scratchDir("dmd2-route-");
  const pipeline = (name: string, className: string) => {
    mkdirSync(path.join(dir, name, "unet"), { recursive: true });
    mkdirSync(path.join(dir, name, "scheduler"), { recursive: true });
    writeFileSync(path.join(dir, name, "model_index.json"), JSON.stringify({ _class_name: className }));
    writeFileSync(path.join(dir, name, "unet", "config.json"), JSON.stringify({ _class_name: "UNet2DConditionModel" }));
    writeFileSync(path.join(dir, name, "scheduler", "scheduler_config.json"), JSON.stringify({ beta_schedule: "scaled_linear", beta_start: 0.00085, beta_end: 0.012 }));
    return path.join(dir, name);
  };
  writeFileSync(path.join(dir, "p.txt"), "a cat\n");
  const text = (folder: string) => tiny(["data.source=prompts", `data.prompts.file=${path.join(dir, "p.txt")}`, "gan.enabled=false", "teacher.source=diffusers", `teacher.path=${folder}`]);
  const sd15 = text(pipeline("sd15", "StableDiffusionPipeline"));
  const sdxl = text(pipeline("sdxl", "StableDiffusionXLPipeline"));
  assert.deepEqual(tiny().teacher.conditioning, ["cond"]);
  assert.deepEqual(sd15.teacher.conditioning, ["cond_hidden"]);
  assert.deepEqual(sdxl.teacher.conditioning, ["cond_hidden", "cond_pooled", "cond_time_ids"]);
  for (const [r, cond] of [[sd15, ["cond_hidden"]], [sdxl, ["cond_hidden", "cond_pooled", "cond_time_ids"]]] as const) {
    const per = routeTensors(planStep(0, r), roleHome(workerLayout("per_role")) as never).flat();
    const by = (role: string, op: string) => per.find((c) => c.role === role && c.op === op)!;
    assert.deepEqual(by("generator", "generate").returns.sort(), [...cond, "t_dmd", "x_gen", "x_t_dmd"].sort());
    assert.deepEqual(by("teacher", "predict_x0").attach, ["x_t_dmd", "t_dmd", ...cond]);
    assert.deepEqual(by("fake_score", "predict_x0").attach, ["x_t_dmd", "t_dmd", ...cond]);
    assert.deepEqual(by("fake_score", "update").attach, ["x_gen", ...cond]);
    assert.ok(per.every((c) => !c.inputs.includes("cond") && !c.outputs.includes("cond")));
    const col = routeTensors(planStep(0, r), roleHome(workerLayout("colocated")) as never).flat();
    assert.ok(col.every((c) => c.returns.length === 0 && c.attach.length === 0));
  }
});

test("an image folder without class subfolders is unconditional: no cond is made or routed", () => {
  const dir = scratchDir("dmd2-flat-");
  mkdirSync(path.join(dir, "flat", ".cache"), { recursive: true }); // hidden entries do not make classes
  writeFileSync(path.join(dir, "flat", "0.png"), "");
  mkdirSync(path.join(dir, "classes", "zero"), { recursive: true });
  const teacher = fakeTeacher(path.join(dir, "teacher"), {});
  const folder = (name: string) => tiny(["data.source=folder", `data.folder.path=${path.join(dir, name)}`, "teacher.source=diffusers", `teacher.path=${teacher}`]);
  assert.deepEqual(folder("classes").teacher.conditioning, ["cond"]);
  assert.deepEqual(folder("flat").teacher.conditioning, []);
  const per = routeTensors(planStep(0, folder("flat")), roleHome(workerLayout("per_role")) as never).flat();
  assert.deepEqual(per.find((c) => c.role === "generator" && c.op === "generate")!.returns.sort(), ["t_dmd", "x_gen", "x_t_dmd"]);
  assert.ok(per.every((c) => !c.inputs.includes("cond") && !c.attach.includes("cond")));
});
