// Issue 23, item 1: the learning-rate warm-up counts training steps by default (as the authors' runs do), so every
// optimizer reaches its full rate at step warmup_steps - 1 whatever the TTUR ratio; optim.warmup_unit: updates
// keeps the older count (each optimizer's own updates). dmd2 plan says when each optimizer reaches its full rate.
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { formatPlan } from "../src/plan/format.js";
import { buildPlan } from "../src/plan/plan.js";
import { loadRecipe } from "../src/recipe/load.js";
import type { Recipe } from "../src/recipe/types.js";
import { mayChange, recipeChanges } from "../src/run/resumeCheck.js";
import { planStep } from "../src/schedule/stepPlan.js";
import { projectRoot, scratchDir } from "./helpers.js";

const tmp = scratchDir("dmd2-warmup-");
const tinyFile = path.join(projectRoot, "recipes", "tiny.yaml");
const tiny = (overrides: string[] = []): Recipe => loadRecipe(tinyFile, { cwd: tmp, cpuCount: 2, overrides });
const lrOf = (step: number, r: Recipe, role: "generator" | "fake_score") =>
  planStep(step, r).flat().find((c) => c.role === role && c.op === "update")?.args.lr as number | undefined;

test("warm-up: the default counts training steps, for both optimizers, whatever the TTUR ratio", () => {
  const r = tiny(["ttur.ratio=10", "optim.warmup_steps=50", "generator.lr=0.001", "fake_score.lr=0.002", "train.steps=1000"]);
  assert.equal(r.optim.warmup_unit, "steps");
  for (let s = 0; s < 1000; s++) {
    const curve = (lr: number) => lr * Math.min(1, (s + 1) / 50);
    assert.equal(lrOf(s, r, "fake_score"), curve(0.002), `fake score lr at step ${s}`);
    assert.equal(lrOf(s, r, "generator"), s % 10 === 0 ? curve(0.001) : undefined, `generator lr at step ${s}`);
  }
  assert.equal(lrOf(40, r, "generator"), 0.001 * 41 / 50);
  assert.equal(lrOf(50, r, "generator"), 0.001, "full rate at the first generator step after step 49");
});

test("warm-up: optim.warmup_unit updates counts the generator's own updates (ratio times longer)", () => {
  const r = tiny(["ttur.ratio=10", "optim.warmup_steps=50", "generator.lr=0.001", "train.steps=1000", "optim.warmup_unit=updates"]);
  assert.equal(lrOf(50, r, "generator"), 0.001 * 6 / 50, "step 50 is its 6th update");
  assert.ok(lrOf(480, r, "generator")! < 0.001);
  assert.equal(lrOf(490, r, "generator"), 0.001, "its 50th update, at step 49 * 10");
  assert.equal(lrOf(7, r, "fake_score"), lrOf(7, tiny(["ttur.ratio=10", "optim.warmup_steps=50", "train.steps=1000"]), "fake_score"), "the fake score updates every step: both units agree");
});

test("warm-up: dmd2 plan says when each optimizer reaches its full rate", () => {
  const plan = (o: string[]) => buildPlan(tiny(o), tinyFile, { cpuCount: 2 });
  const steps = plan(["ttur.ratio=10", "optim.warmup_steps=500", "train.steps=20000"]);
  assert.equal(steps.schedule.generatorLr.fullFromStep, 500);
  assert.equal(steps.schedule.fakeScoreLr.fullFromStep, 499);
  assert.match(formatPlan(steps), /generator lr: .*linear warm-up over the first 500 steps: .* from step 500 on/);
  const updates = plan(["ttur.ratio=10", "optim.warmup_steps=500", "train.steps=20000", "optim.warmup_unit=updates"]);
  assert.equal(updates.schedule.generatorLr.fullFromStep, 4990);
  assert.match(formatPlan(updates), /generator lr: .*linear warm-up over its first 500 updates: .* from step 4990 on/);
  // a warm-up longer than the run: the rate it ends at
  assert.match(formatPlan(plan(["optim.warmup_steps=5000", "train.steps=100"])), /generator lr: .*not reached within 100 steps/);
});

test("warm-up: a run resolved before optim.warmup_unit was trained counting updates, and resumes only so", () => {
  const before = { optim: { warmup_steps: 20 }, train: { steps: 10 } };
  assert.deepEqual(recipeChanges(before, { optim: { warmup_steps: 20, warmup_unit: "steps" }, train: { steps: 20 } }), [
    { key: "train.steps", from: 10, to: 20 },
    { key: "optim.warmup_unit", from: "updates", to: "steps" },
  ]);
  assert.ok(!mayChange("optim.warmup_unit"));
  assert.deepEqual(recipeChanges(before, { optim: { warmup_steps: 20, warmup_unit: "updates" }, train: { steps: 10 } }), []);
});
