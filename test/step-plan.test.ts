// The training step is defined once: the TypeScript plan, pinned by python-worker/tests/fixtures/step-plan.json,
// which the Python port (dmd2_worker/step_plan.py, run by local_loop.py) must reproduce exactly
// (python-worker/tests/test_step_plan.py).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { STEP_FIXTURE, stepFixture, stepFixtureText, type StepFixture } from "./stepPlanFixture.js";

const REGEN = "the TypeScript step plan changed: run npm run build && node scripts/regen-step-fixture.mjs, and port the change to python-worker/dmd2_worker/step_plan.py";

test("the step-plan fixture is what the TypeScript plan gives now", () => {
  const file = readFileSync(STEP_FIXTURE, "utf8");
  const now = stepFixture();
  assert.deepEqual(JSON.parse(file), JSON.parse(JSON.stringify(now)), REGEN);
  assert.equal(file, stepFixtureText(now), "the fixture's layout: regenerate it with scripts/regen-step-fixture.mjs");
});

test("the fixture covers every op, the GAN on, off and warming up, and each kind of conditioning", () => {
  const f = JSON.parse(readFileSync(STEP_FIXTURE, "utf8")) as StepFixture;
  const calls = f.cases.flatMap((c) => c.plans.flatMap((p) => p.phases.flat()));
  const ops = new Set(calls.map((c) => `${c.role}.${c.op}`));
  assert.deepEqual([...ops].sort(), ["discriminator.generator_gan_grad", "fake_score.predict_x0", "fake_score.update", "generator.generate", "generator.update", "teacher.predict_x0"]);
  const ganWeights = calls.filter((c) => c.op === "generator_gan_grad").map((c) => c.args.weight as number);
  assert.ok(ganWeights.some((w) => w > 0 && w < 0.01), "a GAN weight mid warm-up");
  assert.ok(calls.some((c) => c.role === "fake_score" && c.op === "update" && c.args.gan_weight === 0), "a GAN-off fake score update");
  const conditioning = new Set(f.cases.map((c) => JSON.stringify(c.recipe.teacher.conditioning)));
  assert.deepEqual([...conditioning].sort(), ['["cond"]', '["cond_hidden","cond_pooled","cond_time_ids"]', '["cond_hidden","cond_pooled"]', '["cond_hidden"]', "[]"].sort());
  assert.deepEqual(new Set(f.cases.map((c) => c.recipe.teacher.family)), new Set(["builtin", "unet2d", "sd15", "sdxl", "sd3"]));
  assert.deepEqual(new Set(f.cases.map((c) => c.recipe.ttur.ratio)), new Set([1, 2, 3, 5]));
  assert.ok(f.cases.some((c) => c.routes.some((r) => r.attach.some((a) => a.length > 0))), "cross-process routes");
});
