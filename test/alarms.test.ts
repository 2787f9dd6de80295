// Issue 23, item 3: collapse alarms. Each alarm on metric sequences made to collapse, none on a normal tiny run's
// metrics; and end to end: a run made to collapse on purpose warns in one line naming the step, the metric and a
// fix (metrics.jsonl and TensorBoard get alarm_<kind> = 1), and with train.on_collapse: stop ends with exit 1,
// one line, and a checkpoint at that step; the tiny recipe's normal run raises none.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { ALARM_BOUNDS, CollapseWatch, type Alarm } from "../src/run/alarms.js";
import { metricFamily } from "../src/run/metrics.js";
import { cliEntry, projectRoot, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-alarms-");
const cache = path.join(os.tmpdir(), "dmd2-test-cache"); // the built-in teacher, shared with e2e.test.ts
const tinyFile = path.join(projectRoot, "recipes", "tiny.yaml");

/** A plausible healthy step's metrics (the ranges of a tiny run), with `over` replacing some. */
const healthy = (step: number, over: Record<string, number | null | undefined> = {}): Record<string, number | null | undefined> => ({
  loss_fake: 0.02 + 0.02 * Math.abs(Math.sin(step)), loss_gan_d: 1.38, d_real: 0.05, d_fake: -0.03, x_gen_std: 0.5 + 0.01 * Math.cos(step),
  ...(step % 5 === 0 ? { dmd_grad_norm: 50 + 10 * Math.sin(step), loss_dmd: 0.1 } : {}),
  ...over,
});
const run = (steps: number, from: number, over: (s: number) => Record<string, number | null | undefined>): Alarm[] => {
  const w = new CollapseWatch();
  const out: Alarm[] = [];
  for (let s = 0; s < steps; s++) out.push(...w.observe(s, healthy(s, s >= from ? over(s) : {})));
  return out;
};

test("alarms: none on healthy metrics", () => {
  assert.deepEqual(run(500, Infinity, () => ({})), []);
});

test("alarms: the discriminator wins outright (loss near 0, or d_fake saturated), after patience steps, once", () => {
  const a = run(100, 40, () => ({ loss_gan_d: 1e-4, d_fake: -3 }));
  assert.deepEqual(a.map((x) => [x.kind, x.step, x.metric]), [["discriminator_wins", 40 + ALARM_BOUNDS.patience - 1, "loss_gan_d"]]);
  assert.match(a[0]!.message, /^step 45: loss_gan_d 1\.00e-4: the discriminator's loss is near 0 .*; lower gan\.discriminator_weight/);
  const b = run(100, 40, () => ({ loss_gan_d: 0.5, d_fake: -14 }));
  assert.deepEqual(b.map((x) => [x.kind, x.metric]), [["discriminator_wins", "d_fake"]]);
  assert.deepEqual(run(100, 40, (s) => (s % 3 === 0 ? { loss_gan_d: 1e-4 } : {})), [], "not held for patience steps");
  assert.deepEqual(run(100, 0, () => ({ loss_gan_d: 0, d_fake: 0, d_real: 0 })), [], "the GAN off: no discriminator metrics to judge");
});

test("alarms: the fake score's loss diverges or oscillates beyond the bound", () => {
  const a = run(200, 100, (s) => ({ loss_fake: 0.03 * 1.1 ** (s - 100) }));
  assert.deepEqual(a.map((x) => [x.kind, x.metric]), [["fake_score_diverges", "loss_fake"]]);
  assert.match(a[0]!.message, /its mean over 5 steps is \S+x its lowest median .*; lower fake_score\.lr/);
  assert.deepEqual(run(200, 100, (s) => ({ loss_fake: s % 2 ? 0.001 : 2 })).map((x) => x.kind), ["fake_score_diverges"], "wild oscillation");
  assert.deepEqual(run(200, 100, (s) => ({ loss_fake: s % 2 ? 0.01 : 0.1 })), [], "the usual noise of random t");
  assert.deepEqual(run(50, 30, () => ({ loss_fake: null })).map((x) => x.kind), ["fake_score_diverges"], "not finite");
});

test("alarms: the generator's output collapses (per-batch spread near zero)", () => {
  const a = run(100, 50, () => ({ x_gen_std: 1e-4 }));
  assert.deepEqual(a.map((x) => [x.kind, x.step, x.metric]), [["generator_collapse", 50 + ALARM_BOUNDS.patience - 1, "x_gen_std"]]);
  assert.match(a[0]!.message, /it has collapsed to one image; lower generator\.lr/);
  assert.deepEqual(run(100, 50, () => ({ x_gen_std: 0.2 })), [], "a narrower spread is not a collapse");
});

test("alarms: the DMD gradient norm explodes", () => {
  const a = run(300, 200, (s) => (s % 5 === 0 ? { dmd_grad_norm: 1e5 } : {}));
  assert.deepEqual(a.map((x) => [x.kind, x.step, x.metric]), [["dmd_grad_explodes", 200, "dmd_grad_norm"]]);
  assert.match(a[0]!.message, /^step 201: dmd_grad_norm 1\.00e\+5: \S+x its early median/);
  assert.deepEqual(run(300, 200, (s) => (s % 5 === 0 ? { dmd_grad_norm: 400 } : {})), [], "8x is within the bound");
  assert.equal(metricFamily("alarm_dmd_grad_explodes"), "alarm");
});

const dmd2 = (args: string[]) =>
  execa("node", [cliEntry, ...args], { cwd: work, reject: false, env: { DMD2_CACHE: cache, NO_COLOR: "1" }, timeout: 240_000 });
const rowsOf = (dir: string) => readFileSync(path.join(dir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, number>);

test("alarms: the tiny recipe's normal run raises none, and reports the generator's output spread", async () => {
  const dir = path.join(work, "normal");
  const r = await dmd2(["distill", tinyFile, "--set", `run_dir=${dir}`, "--set", "sample.num=4", "-q"]);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.doesNotMatch(r.stdout + r.stderr, /warning:/);
  const rows = rowsOf(dir);
  assert.ok(rows.every((row) => row.x_gen_std! > 0 && Object.keys(row).every((k) => !k.startsWith("alarm_"))));
});

test("alarms: a run made to collapse on purpose warns, and with on_collapse: stop ends at a checkpoint with exit 1", async () => {
  // absurd learning rates and discriminator weight: the generator's outputs and the fake score blow up in a few steps
  const absurd = ["--set", "generator.lr=0.5", "--set", "gan.discriminator_weight=1000", "--set", "fake_score.lr=0.05", "--set", "optim.warmup_steps=0", "--set", "train.steps=30", "--set", "sample.num=4"];
  const warnDir = path.join(work, "collapse-warn");
  const w = await dmd2(["distill", tinyFile, "--set", `run_dir=${warnDir}`, ...absurd, "-q"]);
  assert.equal(w.exitCode, 0, w.stderr);
  const warnings = (w.stdout + w.stderr).split("\n").filter((l) => /warning: step \d+: /.test(l));
  assert.ok(warnings.length >= 1, w.stdout + w.stderr);
  assert.match(warnings[0]!, /warning: step \d+: \w+ \S+: .*; (lower|raise) /);
  const flagged = rowsOf(warnDir).filter((row) => Object.keys(row).some((k) => k.startsWith("alarm_")));
  assert.equal(flagged.length, warnings.length, "one alarm_<kind> = 1 row per warning");
  const stopDir = path.join(work, "collapse-stop");
  const s = await dmd2(["distill", tinyFile, "--set", `run_dir=${stopDir}`, ...absurd, "--set", "train.on_collapse=stop", "-q"]);
  assert.equal(s.exitCode, 1, s.stdout + s.stderr);
  const at = flagged[0]!.step;
  assert.match(s.stderr, new RegExp(`stopped \\(train\\.on_collapse: stop\\) at step ${at}: .*; checkpoint .*step-${String(at).padStart(8, "0")} kept`));
  assert.equal((s.stdout + s.stderr).split("\n").filter((l) => /stopped \(train\.on_collapse: stop\)/.test(l)).length, 1, s.stdout + s.stderr);
  assert.ok(existsSync(path.join(stopDir, "checkpoints", `step-${String(at).padStart(8, "0")}`)));
});
