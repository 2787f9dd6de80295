// End to end with the real Python side: `dmd2 train-teacher` trains a tiny diffusers teacher on the digits, and
// `dmd2 eval` scores it; bad input to either is one line and exit code 2.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { cliEntry, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-teacher-e2e-");
const env = { DMD2_CACHE: path.join(work, "cache"), HF_HUB_OFFLINE: "1", NO_COLOR: "1" };
const recipe = path.join(work, "tiny-teacher.yaml");
writeFileSync(
  recipe,
  // one torch thread: on a busy 2-core machine two threads can be 20x slower (they wait on each other)
  ["name: tiny-teacher", "torch_threads: 1", "data: { source: digits }", "model: { block_out_channels: [8, 16], norm_num_groups: 4 }", "train: { steps: 20, batch_size: 32, warmup_steps: 5, log_every: 10 }", ""].join("\n"),
);
const teacher = path.join(work, "teacher");

async function dmd2(args: string[]) {
  const r = await execa("node", [cliEntry, ...args], { cwd: work, reject: false, env, timeout: 120_000 });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

async function ensureTeacher(): Promise<void> {
  if (existsSync(path.join(teacher, "model_index.json"))) return;
  const r = await dmd2(["train-teacher", recipe, "--out", teacher]);
  assert.equal(r.exitCode, 0, r.stderr);
}

test("train-teacher: a 20-step digits teacher is a diffusers folder that records its data", async () => {
  const r = await dmd2(["train-teacher", recipe, "--out", teacher]);
  assert.equal(r.exitCode, 0, r.stderr);
  for (const f of ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "dmd2_teacher.json"]) {
    assert.ok(existsSync(path.join(teacher, f)), `${f} missing`);
  }
  const meta = JSON.parse(readFileSync(path.join(teacher, "dmd2_teacher.json"), "utf8"));
  assert.equal(meta.data.source, "digits");
  assert.equal(meta.num_classes, 10);
  const scheduler = JSON.parse(readFileSync(path.join(teacher, "scheduler", "scheduler_config.json"), "utf8"));
  assert.equal(scheduler.beta_schedule, "scaled_linear");
  assert.deepEqual(r.stderr.split("\n").filter((l) => / step \d+\/20 /.test(l)).map((l) => / step (\d+)\/20 /.exec(l)![1]), ["10", "20"]);
  assert.match(r.stderr, /done: teacher written to teacher in \d+ s/);
  assert.match(r.stdout, new RegExp(`source: diffusers\\n {4}path: ${teacher}\\n`));
  const again = await dmd2(["train-teacher", recipe, "--out", teacher]);
  assert.equal(again.exitCode, 2);
  assert.match(again.stderr, /^error: teacher already exists \(pass --force/);
});

test("eval: the teacher at 1 and 2 DDIM steps, finite scores, and the picture", async () => {
  await ensureTeacher();
  const picture = path.join(work, "compare.png");
  const r = await dmd2(["eval", teacher, "--teacher-steps", "1,2", "--n", "64", "--torch-threads", "1", "--json", "--picture", picture]);
  assert.equal(r.exitCode, 0, r.stderr);
  const result = JSON.parse(r.stdout) as { noise_floor: number; heldout_accuracy: number; features: string; n: number; rows: Array<Record<string, unknown>> };
  assert.equal(result.features, "classifier");
  assert.equal(result.n, 64);
  assert.ok(Number.isFinite(result.noise_floor) && result.noise_floor >= 0, `noise floor ${result.noise_floor}`);
  assert.ok(result.heldout_accuracy > 0.5 && result.heldout_accuracy <= 1, `held-out accuracy ${result.heldout_accuracy}`);
  assert.deepEqual(result.rows.map((row) => [row.label, row.kind, row.steps]), [["teacher", "teacher", 1], ["teacher", "teacher", 2]]);
  for (const row of result.rows) {
    for (const k of ["fd", "fd_train", "accuracy", "images_per_s", "seconds"]) assert.ok(Number.isFinite(row[k]), `${k} = ${row[k]}`);
    assert.ok((row.fd as number) >= 0 && (row.images_per_s as number) > 0);
    assert.ok((row.accuracy as number) >= 0 && (row.accuracy as number) <= 1);
  }
  assert.deepEqual([...readFileSync(picture).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], "a PNG");
});

test("bad input is one line and exit code 2, with no stack trace: missing recipe, bad key, a rule, the job's own check", async () => {
  const missing = await dmd2(["train-teacher", path.join(work, "nope.yaml")]);
  assert.equal(missing.exitCode, 2);
  assert.equal(missing.stderr.trim(), "error: nope.yaml: no such file (check the path; recipes/ has examples)");
  const badKey = await dmd2(["train-teacher", recipe, "--set", "train.stpes=5"]);
  assert.equal(badKey.exitCode, 2);
  assert.equal(badKey.stderr.trim(), 'error: --set: train.stpes: unknown key (did you mean "steps"?)');
  const rule = await dmd2(["train-teacher", recipe, "--set", "model.norm_num_groups=3"]);
  assert.equal(rule.exitCode, 2);
  assert.equal(rule.stderr.trim(), "error: tiny-teacher.yaml:4: model.block_out_channels: every width must be a multiple of model.norm_num_groups (3), got [8, 16]");
  mkdirSync(path.join(work, "empty"), { recursive: true });
  const empty = await dmd2(["train-teacher", recipe, "--set", "data.source=folder", "--set", `data.folder.path=${path.join(work, "empty")}`, "--out", path.join(work, "never")]);
  assert.equal(empty.exitCode, 2, empty.stderr);
  const errors = empty.stderr.split("\n").filter((l) => l.startsWith("error: "));
  assert.equal(errors.length, 1, empty.stderr);
  assert.match(errors[0]!, /^error: data\.folder\.path: .*empty holds no images/);
  for (const r of [missing, badKey, rule, empty]) assert.ok(!/^\s+at /m.test(r.stderr), "no JavaScript stack trace");
  assert.ok(!existsSync(path.join(work, "never")), "no teacher folder after an error");
});
