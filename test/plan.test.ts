// dmd2 plan: the plan of every shipped recipe agrees with the run loop's own functions, the parameter counts
// agree with the Python model classes, and the CLI prints JSON or fails on a bad --set exactly like distill.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { formatPlan } from "../src/plan/format.js";
import { headBlocks, headParams, unetArch, unetParams, type UNetArch } from "../src/plan/params.js";
import { buildPlan, scheduleRowSteps, type Plan } from "../src/plan/plan.js";
import { loadRecipe } from "../src/recipe/load.js";
import { ROLES, type Recipe } from "../src/recipe/types.js";
import { checkpointName } from "../src/run/checkpoints.js";
import { isCheckpointStep } from "../src/schedule/schedule.js";
import { planStep } from "../src/schedule/stepPlan.js";
import { cliEntry, projectPython, projectRoot } from "./helpers.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "dmd2-plan-"));
const recipesDir = path.join(projectRoot, "recipes");
const tinyFile = path.join(recipesDir, "tiny.yaml");
const load = (file: string, overrides: string[] = []): Recipe => loadRecipe(file, { cwd: tmp, cpuCount: 2, overrides });
const plan = (r: Recipe, file = tinyFile): Plan => buildPlan(r, file, { cpuCount: 2 });

function checkPlan(p: Plan, r: Recipe, label: string) {
  assert.deepEqual(JSON.parse(JSON.stringify(p)), p, `${label}: the plan is plain JSON`);
  const roles = p.placement.workers.flatMap((w) => w.roles).sort();
  assert.deepEqual(roles, [...ROLES].sort(), `${label}: every role in exactly one worker`);
  for (const row of p.schedule.rows) {
    const expected = planStep(row.step, r).map((ph) => ph.map((c) => `${c.role}.${c.op}`));
    assert.deepEqual(row.phases, expected, `${label}: step ${row.step} ops`);
    assert.equal(row.generatorStep, row.step % r.ttur.ratio === 0);
    assert.equal(row.generatorLr === null, !row.generatorStep);
  }
  assert.equal(p.schedule.generatorUpdates, Math.ceil(r.train.steps / r.ttur.ratio));
  assert.equal(p.traffic.kinds.reduce((s, k) => s + k.count, 0), r.train.steps, `${label}: every step has a traffic kind`);
  // checkpoints: against the run loop's rule, step by step
  const all: number[] = [];
  for (let s = 0; s < r.train.steps; s++) if (isCheckpointStep(s, r)) all.push(s + 1);
  assert.equal(p.checkpoints.count, all.length, `${label}: checkpoint count`);
  assert.deepEqual(p.checkpoints.keptAtEnd, all.slice(-r.train.keep_last).map(checkpointName));
  assert.deepEqual(p.checkpoints.first, all.slice(0, 3).map(checkpointName));
  // memory: trained roles hold weights, grads and two AdamW moments; the teacher only weights
  assert.equal(p.memory.params.unet, unetParams(unetArch(r)));
  for (const m of p.memory.workers.flatMap((w) => w.roles)) {
    assert.equal(m.weightsBytes, m.params * 4);
    assert.equal(m.gradsBytes, m.trained ? m.weightsBytes : 0);
    assert.equal(m.optimizerBytes, m.trained ? 2 * m.weightsBytes : 0);
    assert.equal(m.trained, m.role !== "teacher" && (m.role !== "discriminator" || r.gan.enabled));
  }
  assert.ok(formatPlan(p).includes("Memory per worker"), `${label}: text form`);
}

test("plan: every recipe in recipes/ plans, per_role and colocated, consistent with the run loop", () => {
  const files = readdirSync(recipesDir).filter((f) => f.endsWith(".yaml"));
  assert.ok(files.length >= 1);
  for (const f of files) {
    for (const placement of ["per_role", "colocated"]) {
      const r = load(path.join(recipesDir, f), [`placement=${placement}`]);
      const p = plan(r, path.join(recipesDir, f));
      checkPlan(p, r, `${f} ${placement}`);
      const moved = p.traffic.kinds.flatMap((k) => k.transfers);
      if (placement === "colocated") assert.equal(moved.length, 0, "one process: nothing travels");
      else assert.ok(moved.length > 0);
    }
  }
});

test("plan: odd schedules (GAN warm-up, ratio 1, steps not a multiple of checkpoint_every)", () => {
  const cases = [
    ["gan.warmup_steps=50", "train.steps=1003", "train.keep_last=3"],
    ["ttur.ratio=1", "train.steps=7", "train.checkpoint_every=3"],
    ["ttur.ratio=100", "train.steps=150", "gan.enabled=false", "optim.warmup_steps=0"],
    ["train.steps=1", "train.checkpoint_every=1000"],
  ];
  for (const c of cases) {
    const r = load(tinyFile, c);
    checkPlan(plan(r), r, c.join(" "));
  }
  // with G's GAN weight at 0 on step 0, step 0 sends no gan_grad but later generator steps do
  const p = plan(load(tinyFile, ["gan.warmup_steps=50"]));
  const names = (k: Plan["traffic"]["kinds"][number]) => k.transfers.map((t) => t.tensor);
  assert.deepEqual(p.traffic.kinds.map((k) => [k.kind, k.count]), [["first generator step", 1], ["generator step", 39], ["fake-score-only step", 160]]);
  assert.ok(!names(p.traffic.kinds[0]!).includes("gan_grad"));
  assert.ok(names(p.traffic.kinds[1]!).includes("gan_grad"));
  assert.equal(p.schedule.ganGeneratorWeight.fullFromStep, 50);
  assert.equal(p.schedule.generatorLr.fullFromStep, 95); // its 20th update, at step 19 * 5
});

test("plan: the schedule table shows through the third generator step, or excerpts of long ratios", () => {
  assert.deepEqual(scheduleRowSteps(200, 5), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(scheduleRowSteps(200, 1), [0, 1, 2]);
  assert.deepEqual(scheduleRowSteps(1000, 100), [0, 1, 2, 99, 100, 101, 200]);
  assert.deepEqual(scheduleRowSteps(4, 5), [0, 1, 2, 3]);
});

test("plan: tiny's tensors, sizes and memory", () => {
  const p = plan(load(tinyFile));
  const gen = p.traffic.kinds.find((k) => k.kind === "generator step")!;
  assert.equal(gen.count, 40);
  const x = gen.transfers.find((t) => t.tensor === "x_gen")!;
  assert.deepEqual([x.dtype, x.shape, x.bytes], ["float32", [32, 1, 8, 8], 32 * 64 * 4]);
  assert.deepEqual(x.from, { worker: "generator", call: "generator.generate" });
  assert.deepEqual(x.to.map((t) => t.call), ["discriminator.generator_gan_grad", "fake_score.update"]);
  assert.deepEqual(p.memory.params, { unet: 45733, discriminatorHead: 16513 });
  assert.deepEqual(p.memory.workers.map((w) => w.worker), ["teacher", "generator", "fake_score"]);
  assert.equal(p.memory.estimate, true);
});

test("plan: a missing interpreter is a problem line, not a failure; an image size the UNet refuses is a recipe error", () => {
  assert.throws(() => load(tinyFile, ["data.gmm.image_size=6"]), /data\.gmm\.image_size: must be a multiple of 4/);
  const r = load(tinyFile, []);
  const p = buildPlan(r, tinyFile, { env: { DMD2_PYTHON: path.join(tmp, "no-python") } });
  assert.equal(p.placement.python.path, null);
  assert.equal(p.placement.python.source, "DMD2_PYTHON");
  assert.deepEqual(p.problems.map((x) => x.subject), ["python"]);
  assert.ok(p.problems.every((x) => x.fix !== undefined));
  const text = formatPlan(p);
  assert.match(text, /problem python: DMD2_PYTHON=\S+ is not an executable file/);
});

test("plan: a run folder with checkpoints is where distill would resume", () => {
  const runDir = path.join(tmp, "resumable");
  for (const step of [100, 200]) {
    mkdirSync(path.join(runDir, "checkpoints", checkpointName(step)), { recursive: true });
    writeFileSync(path.join(runDir, "checkpoints", checkpointName(step), "manifest.json"), "{}");
  }
  mkdirSync(path.join(runDir, "checkpoints", checkpointName(300) + ".tmp")); // incomplete: not counted
  const p = plan(load(tinyFile, [`run_dir=${runDir}`, "train.steps=400"]));
  assert.deepEqual(p.checkpoints.existing, ["step-00000100", "step-00000200"]);
  assert.equal(p.checkpoints.resumeFrom, 200);
  assert.match(formatPlan(p), /existing +step-00000100, step-00000200: distill resumes from step 200\n/);
  assert.equal(plan(load(tinyFile, [`run_dir=${path.join(tmp, "fresh")}`])).checkpoints.resumeFrom, null);
});

test("plan: the TinyUNet and head parameter formulas equal what the Python classes count", () => {
  const archs: UNetArch[] = [];
  for (const channels of [8, 16, 24, 33])
    for (const numClasses of [2, 4, 10, null])
      for (const imageSize of [4, 8, 16, 32])
        for (const channelMult of [[1, 2], [1, 2, 2], [1]])
          if (imageSize % 2 ** channelMult.length === 0) archs.push({ inChannels: channels === 24 ? 3 : 1, imageSize, channels, channelMult, numClasses });
  const script = `
import json, sys
from dmd2_worker.models.tiny_unet import TinyUNet
from dmd2_worker.models.discriminator_head import DiscriminatorHead
out = []
for a in json.loads(sys.argv[1]):
    net = TinyUNet({"in_channels": a["inChannels"], "image_size": a["imageSize"], "channels": a["channels"],
                    "channel_mult": a["channelMult"], "num_classes": a["numClasses"]})
    head = DiscriminatorHead(net.feature_channels, net.feature_size)
    out.append([sum(p.numel() for p in net.parameters()), sum(p.numel() for p in head.parameters())])
print(json.dumps(out))
`;
  const counts = JSON.parse(execFileSync(projectPython, ["-c", script, JSON.stringify(archs)], { encoding: "utf8" })) as [number, number][];
  archs.forEach((a, i) => {
    const L = a.channelMult.length;
    const [unet, head] = counts[i]!;
    assert.equal(unetParams(a), unet, `unet ${JSON.stringify(a)}`);
    assert.equal(headParams(a.channels * a.channelMult[L - 1]!, Math.floor(a.imageSize / 2 ** L)), head, `head ${JSON.stringify(a)}`);
  });
  // the closed form in params.ts's comment, for the default arch
  for (const c of [8, 16, 64]) for (const K of [2, 4, 10]) assert.equal(unetParams({ inChannels: 1, imageSize: 8, channels: c, channelMult: [1, 2], numClasses: K }), 170 * c * c + 118 * c + 4 * c * (K + 1) + 5);
  assert.deepEqual([1, 2, 3, 4, 8].map(headBlocks), [0, 1, 1, 2, 3]);
});

async function cli(args: string[]) {
  const r = await execa("node", [cliEntry, ...args], { cwd: projectRoot, reject: false, env: { NO_COLOR: "1" }, timeout: 30_000 });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}

test("plan CLI: --json prints one JSON object; nothing is started", async () => {
  const r = await cli(["plan", "recipes/tiny.yaml", "--json"]);
  assert.equal(r.exitCode, 0, r.stderr);
  const p = JSON.parse(r.stdout) as Plan;
  assert.equal(p.recipe.name, "tiny");
  assert.equal(p.recipe.resolved.train.steps, 200);
  assert.deepEqual(p.schedule.rows[0]!.phases.flat(), ["generator.generate", "teacher.predict_x0", "fake_score.predict_x0", "discriminator.generator_gan_grad", "generator.update", "fake_score.update"]);
  assert.equal(p.memory.params.unet, 45733);
  assert.equal(r.stderr, "");
});

test("plan CLI: a bad --set exits 2 with distill's one-line message", async () => {
  const r = await cli(["plan", "recipes/tiny.yaml", "--set", "train.stepz=5"]);
  assert.equal(r.exitCode, 2);
  assert.equal(r.stdout, "");
  assert.deepEqual(r.stderr.trim().split("\n"), ['error: --set: --set train.stepz: unknown key (did you mean "steps"?)']);
  const range = await cli(["plan", "recipes/tiny.yaml", "--set", "train.steps=0"]);
  assert.equal(range.exitCode, 2);
  assert.deepEqual(range.stderr.trim().split("\n"), ["error: --set: train.steps: 0 is out of range (must be >= 1)"]);
});
