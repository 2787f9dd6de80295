// Issue 23, item 2: training stages. `stages:` sets keys that are safe to change mid-run from a step on; the step
// plan reads the stage in force at each step; dmd2 plan shows them; a key that cannot change mid-run is refused in
// one line; a run stopped and resumed across a stage boundary ends with the weights of an uninterrupted one; and
// the resume check lets stages from the checkpoint's step on change, not earlier ones.
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { formatPlan } from "../src/plan/format.js";
import { buildPlan } from "../src/plan/plan.js";
import { loadRecipe } from "../src/recipe/load.js";
import type { Recipe } from "../src/recipe/types.js";
import { stagesAgreeBefore } from "../src/run/resumeCheck.js";
import { warmupLr } from "../src/schedule/schedule.js";
import { recipeAt } from "../src/schedule/stages.js";
import { planStep } from "../src/schedule/stepPlan.js";
import { cliEntry, fakeTextPipeline, issuesOf, projectRoot, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-stages-");
const cache = path.join(os.tmpdir(), "dmd2-test-cache"); // the built-in teacher, shared with e2e.test.ts
const tinyFile = path.join(projectRoot, "recipes", "tiny.yaml");
const tiny = (overrides: string[] = []): Recipe => loadRecipe(tinyFile, { cwd: work, cpuCount: 2, overrides });
const TWO = "stages=[{from_step: 0, set: {gan.enabled: false}}, {from_step: 8, set: {gan.enabled: true, generator.lr: 1.0e-5, fake_score.lr: 5.0e-4}}]";
const call = (step: number, r: Recipe, role: string, op: string) => planStep(step, r).flat().find((c) => c.role === role && c.op === op);

test("stages: the step plan reads the stage in force at each step", () => {
  const r = tiny([TWO, "optim.warmup_steps=0"]);
  assert.equal(r.gan.enabled, true, "the top-level keys are kept; the stages apply by step");
  assert.equal(recipeAt(7, r).gan.enabled, false);
  assert.deepEqual([recipeAt(8, r).gan.enabled, recipeAt(8, r).generator.lr, recipeAt(100, r).fake_score.lr], [true, 1e-5, 5e-4]);
  for (let s = 0; s < 20; s++) {
    const on = s >= 8;
    assert.equal(call(s, r, "fake_score", "update")!.args.gan_weight, on ? r.gan.discriminator_weight : 0, `step ${s}: D's weight`);
    assert.equal(call(s, r, "fake_score", "update")!.args.lr, on ? 5e-4 : r.fake_score.lr, `step ${s}: fake score lr`);
    if (s % r.ttur.ratio === 0) {
      assert.equal(call(s, r, "discriminator", "generator_gan_grad") !== undefined, on, `step ${s}: G's GAN term`);
      assert.equal(call(s, r, "generator", "update")!.args.lr, on ? 1e-5 : r.generator.lr, `step ${s}: generator lr`);
    }
  }
  // the warm-up counts from step 0 of the run and multiplies the stage's rate
  const w = tiny([TWO, "optim.warmup_steps=20"]);
  assert.equal(call(10, w, "generator", "update")!.args.lr, warmupLr(1e-5, 10, 20));
});

test("stages: a key that cannot change mid-run, an unknown key, a bad value or order are refused in one line each", () => {
  const file = path.join(work, "bad-stages.yaml");
  writeFileSync(file, readFileSync(tinyFile, "utf8") + [
    "stages:",
    "  - from_step: 10",
    "    set: { ttur.ratio: 2, generator.lr: 0 }",
    "  - from_step: 5",
    "    set: { gan.enabeld: true }",
    "",
  ].join("\n"));
  const lines = issuesOf(() => loadRecipe(file, { cwd: work, cpuCount: 2 }));
  assert.deepEqual(lines.filter((l) => /stages/.test(l)).length, 3, lines.join("\n"));
  assert.ok(lines.some((l) => /stages\.0\.set\.ttur\.ratio: cannot change mid-run .*a stage may set generator\.lr, fake_score\.lr, dmd\.weight/.test(l)), lines.join("\n"));
  assert.ok(lines.some((l) => /stages\.0\.set\.generator\.lr: 0 is out of range/.test(l)), lines.join("\n"));
  assert.ok(lines.some((l) => /stages\.1\.set\.gan\.enabeld: unknown key \(did you mean "gan\.enabled"\?\)/.test(l)), lines.join("\n"));
  // the order, and the GAN switched on by a stage when the discriminator was never set up
  const order = issuesOf(() => tiny(["stages=[{from_step: 10, set: {dmd.weight: 2}}, {from_step: 10, set: {dmd.weight: 3}}]"]));
  assert.match(order.join("\n"), /stages\.1\.from_step: 10 must be greater than the stage before's from_step \(10\)/);
  const gan = issuesOf(() => tiny(["gan.enabled=false", "stages=[{from_step: 10, set: {gan.enabled: true}}]"]));
  assert.match(gan.join("\n"), /stages\.0\.set\.gan\.enabled: true needs the top-level gan\.enabled: true \(the discriminator is set up when the run starts\)/);
  const zero = issuesOf(() => tiny(["stages=[{from_step: 3, set: {gan.generator_weight: 0, gan.discriminator_weight: 0}}]"]));
  assert.match(zero.join("\n"), /stages\.0\.set: the GAN is on from step 3 but both gan weights are 0/);
  assert.equal(tiny(["stages=[{from_step: 3, set: {gan.enabled: false, gan.generator_weight: 0, gan.discriminator_weight: 0}}]"]).stages.length, 1);
});

test("stages: dmd2 plan shows them, and sd15-1step.yaml is the authors' two stages", () => {
  const r = tiny([TWO, "train.steps=6"]);
  const text = formatPlan(buildPlan(r, tinyFile, { cpuCount: 2 }));
  assert.match(text, /stages \(the values above until step 0; the lr warm-up still counts from step 0\):\n +from step 0: gan\.enabled false\n +from step 8: gan\.enabled true, generator\.lr 1(\.0)?e-5, fake_score\.lr 5(\.0)?e-4 \(after the last step, 5: in force once train\.steps is raised\)/);
  const sd15File = path.join(projectRoot, "recipes", "sd15-1step.yaml");
  const sd15 = loadRecipe(sd15File, { cwd: work, cpuCount: 2, overrides: fakeTextPipeline(path.join(work, "sd15"), "StableDiffusionPipeline") });
  assert.deepEqual(sd15.stages, [
    { from_step: 0, set: { "gan.enabled": false } },
    { from_step: 39000, set: { "gan.enabled": true, "generator.lr": 5e-7, "fake_score.lr": 5e-7 } },
  ]);
  assert.equal(sd15.train.steps, 41000);
  const at = (s: number) => recipeAt(s, sd15);
  assert.deepEqual([at(38999).gan.enabled, at(38999).generator.lr, at(39000).gan.enabled, at(39000).generator.lr, at(39000).gan.generator_weight], [false, 1e-5, true, 5e-7, 1e-3]);
  assert.match(formatPlan(buildPlan(sd15, sd15File, { cpuCount: 2 })), /from step 39000: gan\.enabled true, generator\.lr 5(\.0)?e-7, fake_score\.lr 5(\.0)?e-7\n/);
});

test("stages: the resume check allows stages from the checkpoint's step on to change, not earlier ones", () => {
  const a = [{ from_step: 0, set: { "gan.enabled": false } }, { from_step: 8, set: { "generator.lr": 1e-5 } }];
  assert.ok(stagesAgreeBefore(a, a, 6));
  assert.ok(stagesAgreeBefore(a, [a[0], { from_step: 8, set: { "generator.lr": 2e-5 } }], 6), "a stage from step 8 changed at a step-6 checkpoint");
  assert.ok(stagesAgreeBefore(a, [...a, { from_step: 20, set: { "dmd.weight": 2 } }], 8), "a stage added after the checkpoint");
  assert.ok(stagesAgreeBefore([], [{ from_step: 12, set: { "dmd.weight": 2 } }], 12));
  assert.ok(!stagesAgreeBefore(a, [a[0]], 12), "the stage from step 8 was trained at a step-12 checkpoint");
  assert.ok(!stagesAgreeBefore(a, [{ from_step: 5, set: { "dmd.weight": 2 } }, ...a], 6), "a stage added before the checkpoint");
  assert.ok(!stagesAgreeBefore([], [{ from_step: 0, set: { "dmd.weight": 2 } }], 6));
});

const dmd2 = (args: string[]) =>
  execa("node", [cliEntry, ...args], { cwd: work, reject: false, env: { DMD2_CACHE: cache, NO_COLOR: "1" }, timeout: 240_000 });

test("stages: a run stopped before a stage boundary and resumed across it ends with the weights of an uninterrupted run", async () => {
  const common = ["--set", TWO, "--set", "train.checkpoint_every=6", "--set", "sample.num=4", "--set", "optim.warmup_steps=4", "-q"];
  const whole = path.join(work, "whole");
  const parted = path.join(work, "parted");
  const a = await dmd2(["distill", tinyFile, "--set", `run_dir=${whole}`, "--set", "train.steps=12", ...common]);
  assert.equal(a.exitCode, 0, a.stderr);
  const b1 = await dmd2(["distill", tinyFile, "--set", `run_dir=${parted}`, "--set", "train.steps=6", ...common]);
  assert.equal(b1.exitCode, 0, b1.stderr);
  // changing the stage from step 8 (not trained yet) is allowed; one before the checkpoint is not
  const earlier = "stages=[{from_step: 0, set: {gan.enabled: false}}, {from_step: 4, set: {dmd.weight: 2}}, {from_step: 8, set: {gan.enabled: true}}]";
  const refused = await dmd2(["distill", tinyFile, "--set", `run_dir=${parted}`, "--set", "train.steps=12", ...common, "--set", earlier]);
  assert.equal(refused.exitCode, 2);
  assert.match(refused.stderr, /cannot resume .*parted from step-00000006: the recipe changes the stages of the 6 steps it trained .*; stages from step 6 on may be added or changed, the earlier ones must stay as they were/);
  assert.equal(refused.stderr.trim().split("\n").length, 1, refused.stderr);
  // a stage added after the checkpoint (here: after the run's end, so the weights still match) is let through
  const added = TWO.replace(/\]$/, ", {from_step: 20, set: {dmd.weight: 2}}]");
  const b2 = await dmd2(["distill", tinyFile, "--set", `run_dir=${parted}`, "--set", "train.steps=12", ...common, "--set", added]);
  assert.equal(b2.exitCode, 0, b2.stderr);
  for (const role of ["generator", "fake_score", "discriminator"]) {
    const f = (dir: string) => readFileSync(path.join(dir, "checkpoints", "step-00000012", `${role}.safetensors`));
    assert.ok(f(whole).equals(f(parted)), `${role}: weights differ after resuming across the stage boundary`);
  }
  // and the GAN terms did run after the boundary only
  const rows = readFileSync(path.join(whole, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, number>);
  assert.ok(rows.filter((r) => r.step <= 8).every((r) => !("loss_gan_g" in r) && (r.loss_gan_d ?? 0) === 0), "no GAN before step 8");
  assert.ok(rows.some((r) => r.step > 8 && (r.loss_gan_d ?? 0) > 0), "the GAN after step 8");
});

test("stages: dmd2 plan counts the tensors of each stretch between stage boundaries", () => {
  const r = tiny(["stages=[{from_step: 0, set: {gan.enabled: false}}, {from_step: 100, set: {gan.enabled: true}}]"]);
  const kinds = buildPlan(r, tinyFile, { cpuCount: 2 }).traffic.kinds;
  const sends = (k: (typeof kinds)[number]) => k.transfers.some((t) => t.tensor === "gan_grad");
  assert.deepEqual(kinds.map((k) => [k.kind, k.example, k.count, sends(k)]), [
    ["generator step", 0, 20, false],
    ["generator step (as at step 100)", 100, 20, true],
    ["fake-score-only step", 1, 160, false],
  ]);
  assert.equal(kinds.reduce((s, k) => s + k.count, 0), r.train.steps);
});
