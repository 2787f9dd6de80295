// The JSON-lines job protocol (docs/pipeline.md §3-4) and the two commands built on it, `dmd2 train-teacher` and
// `dmd2 eval`, against a stand-in interpreter (test/fixtures/jobs/fake-python.mjs): events, the error event,
// a job that dies, Ctrl-C, what the CLI writes into the spec and how it prints the result. No Python needed.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { WorkerDiedError } from "../src/errors.js";
import { checkpointName, sha256OfFile } from "../src/run/checkpoints.js";
import { PythonJobError, runPythonJob, type JobEvent } from "../src/run/pythonJob.js";
import { cliEntry, fakeTeacher, isAlive, projectRoot, scratchDir } from "./helpers.js";

const fake = path.join(projectRoot, "test", "fixtures", "jobs", "fake-python.mjs");
const work = scratchDir("dmd2-jobs-");
const teacherRecipe = path.join(work, "t-teacher.yaml");
writeFileSync(teacherRecipe, "data: { source: digits }\nmodel: { block_out_channels: [8, 16], norm_num_groups: 4 }\ntrain: { steps: 4 }\n");

function withEnv<T>(env: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const before = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  return fn().finally(() => {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
}

const job = (mode: string, extra: Partial<Parameters<typeof runPythonJob>[0]> = {}) =>
  withEnv({ FAKE_JOB: mode }, () => runPythonJob({ python: fake, module: "dmd2_worker.train_teacher", spec: { hello: 1 }, finalEvent: "done", ...extra }));

test("runPythonJob: events in order, text lines aside, the final event returned; HF_HUB_OFFLINE=1 set", async () => {
  const events: JobEvent[] = [];
  const text: string[] = [];
  const copy = path.join(work, "spec-copy.json");
  const out = await withEnv({ FAKE_SPEC_COPY: copy }, () => job("ok", { onEvent: (e) => events.push(e), onText: (l) => text.push(l) }));
  assert.deepEqual(events.map((e) => [e.event, e.step ?? null]), [["start", null], ["progress", 2], ["progress", 4]]);
  assert.deepEqual(text, ["a line that is not an event"]);
  assert.equal(out.interrupted, false);
  if (out.interrupted) return;
  assert.equal(out.final.event, "done");
  assert.equal(out.final.module, "dmd2_worker.train_teacher");
  assert.equal(out.final.hf_hub_offline, "1");
  assert.deepEqual(JSON.parse(readFileSync(copy, "utf8")), { hello: 1 });
});

test("runPythonJob: an error event is a PythonJobError naming the key, with the job's exit code 2", async () => {
  const e = await job("error2").then(() => assert.fail("expected an error"), (err: unknown) => err);
  assert.ok(e instanceof PythonJobError, String(e));
  assert.equal(e.message, "data.folder.path: /x holds no images (.png, .jpg, .jpeg, .bmp, .webp)");
  assert.equal(e.key, "data.folder.path");
  assert.equal(e.exitCode, 2);
});

test("runPythonJob: a job that dies without an error event, or ends without its final event, is a WorkerDiedError with stderr's last lines", async () => {
  const died = await job("die").then(() => assert.fail("expected an error"), (err: unknown) => err);
  assert.ok(died instanceof WorkerDiedError, String(died));
  assert.equal(died.workerExitCode, 3);
  assert.equal(died.message, 'worker "python -m dmd2_worker.train_teacher" exited with code 3; last stderr line: RuntimeError: boom');
  assert.deepEqual(died.stderrTail, ["Traceback (most recent call last):", '  File "x.py", line 1', "RuntimeError: boom"]);
  const silent = await job("silent").then(() => assert.fail("expected an error"), (err: unknown) => err);
  assert.ok(silent instanceof WorkerDiedError);
  assert.match(silent.message, /ended without a "done" event/);
  const missing = await runPythonJob({ python: path.join(work, "no-python"), module: "m", spec: {}, finalEvent: "done" }).then(() => assert.fail("expected an error"), (err: unknown) => err);
  assert.ok(missing instanceof WorkerDiedError);
  assert.match(missing.message, /could not be started/);
});

test("runPythonJob: aborting stops the job and reports an interruption", async () => {
  const pidFile = path.join(work, "hang.pid");
  const ac = new AbortController();
  let progress = 0;
  const out = await withEnv({ FAKE_PID_FILE: pidFile }, () =>
    job("hang", {
      signal: ac.signal,
      onEvent: (e) => {
        if (e.event === "progress" && ++progress === 3) ac.abort();
      },
    }),
  );
  assert.deepEqual(out, { interrupted: true });
  assert.ok(!isAlive(Number(readFileSync(pidFile, "utf8"))), "the job was stopped");
});

interface Cli {
  exitCode: number;
  stdout: string;
  stderr: string;
}
async function dmd2(args: string[], env: Record<string, string> = {}): Promise<Cli> {
  const r = await execa("node", [cliEntry, ...args], { cwd: work, reject: false, env: { NO_COLOR: "1", ...env }, timeout: 60_000 });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}
const withFake = ["--set", `python=${fake}`];

test("train-teacher: the resolved recipe goes to the job (force when --force), plain progress lines, how to use the teacher", async () => {
  const copy = path.join(work, "teacher-spec.json");
  const out = path.join(work, "teacher-out");
  const r = await dmd2(["train-teacher", teacherRecipe, ...withFake, "--out", out, "--force"], { FAKE_JOB: "ok", FAKE_SPEC_COPY: copy });
  assert.equal(r.exitCode, 0, r.stderr);
  const spec = JSON.parse(readFileSync(copy, "utf8"));
  assert.equal(spec.kind, "teacher");
  assert.equal(spec.version, 1);
  assert.equal(spec.out, out);
  assert.equal(spec.force, true);
  assert.deepEqual(spec.model.block_out_channels, [8, 16]);
  const lines = r.stderr.trim().split("\n");
  assert.ok(lines.every((l) => /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d /.test(l)), r.stderr);
  assert.ok(lines.some((l) => l.endsWith("1.2 k parameters, 10 training images, 4 steps")), r.stderr);
  assert.deepEqual(lines.filter((l) => / step \d\/4 /.test(l)).map((l) => l.slice(20)), ["step 2/4 loss 0.5000 lr 0.001000 (0 s)", "step 4/4 loss 0.2500 lr 0 (0 s)"]);
  assert.match(r.stderr, /done: teacher written to \/somewhere\/teacher in 0 s \(final loss 0\.2500\)/);
  assert.match(r.stdout, /teacher:\n {4}source: diffusers\n {4}path: \/somewhere\/teacher\n/);
  const noForce = await dmd2(["train-teacher", teacherRecipe, ...withFake, "--out", out], { FAKE_JOB: "ok", FAKE_SPEC_COPY: copy });
  assert.equal(JSON.parse(readFileSync(copy, "utf8")).force, undefined, "no force key without --force");
  assert.equal(noForce.exitCode, 0);
});

test("train-teacher: an existing folder without --force is refused before the job starts", async () => {
  const out = path.join(work, "taken");
  mkdirSync(out, { recursive: true });
  const pidFile = path.join(work, "never.pid");
  const r = await dmd2(["train-teacher", teacherRecipe, ...withFake, "--out", out], { FAKE_PID_FILE: pidFile });
  assert.equal(r.exitCode, 2);
  assert.equal(r.stderr.trim(), "error: taken already exists (pass --force to replace it, or write elsewhere with --out <dir>)");
  assert.ok(!existsSync(pidFile), "no job was started");
});

test("train-teacher: the job's error event is one line and its exit code; a dying job shows stderr's last lines", async () => {
  const bad = await dmd2(["train-teacher", teacherRecipe, ...withFake, "--out", path.join(work, "e2")], { FAKE_JOB: "error2" });
  assert.equal(bad.exitCode, 2);
  assert.equal(bad.stderr.split("\n").filter((l) => l.startsWith("error: ")).join("\n"), "error: data.folder.path: /x holds no images (.png, .jpg, .jpeg, .bmp, .webp)");
  const died = await dmd2(["train-teacher", teacherRecipe, ...withFake, "--out", path.join(work, "e3")], { FAKE_JOB: "die" });
  assert.equal(died.exitCode, 1);
  assert.match(died.stderr, /error: worker "python -m dmd2_worker.train_teacher" exited with code 3; last stderr line: RuntimeError: boom\n/);
  assert.match(died.stderr, /^ {2}RuntimeError: boom$/m);
  assert.ok(!/^\s+at /m.test(died.stderr), "no JavaScript stack trace");
});

test("train-teacher: Ctrl-C stops the job, exits 130 and leaves no process", async () => {
  const pidFile = path.join(work, "ctrl-c.pid");
  const child = execa("node", [cliEntry, "train-teacher", teacherRecipe, ...withFake, "--out", path.join(work, "ctrl-c")], {
    cwd: work,
    reject: false,
    env: { NO_COLOR: "1", FAKE_JOB: "hang", FAKE_PID_FILE: pidFile },
    timeout: 30_000,
  });
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => (stderr += c.toString()));
  const deadline = Date.now() + 20_000;
  while (!/step 3\//.test(stderr) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  child.kill("SIGINT");
  const r = await child;
  assert.equal(r.exitCode, 130, stderr);
  assert.match(stderr, /SIGINT: stopping training/);
  assert.match(stderr, /interrupted: no teacher written/);
  assert.ok(!isAlive(Number(readFileSync(pidFile, "utf8"))), "the job was stopped");
});

// --- dmd2 eval -----------------------------------------------------------------------------------------------

const digits = { source: "digits", gmm: { num_classes: 4, image_size: 8, std: 0.1 }, folder: { path: null, channels: 1 } };
const evalTeacher = fakeTeacher(path.join(work, "eval", "teacher"), {});
writeFileSync(path.join(evalTeacher, "dmd2_teacher.json"), JSON.stringify({ format: 1, num_classes: 10, null_class: 10, data: digits }));
const bareTeacher = fakeTeacher(path.join(work, "eval", "bare"), {});
const run = path.join(work, "eval", "run");
mkdirSync(run, { recursive: true });
writeFileSync(path.join(run, "recipe.resolved.json"), JSON.stringify({ data: digits }));
const gmmRun = path.join(work, "eval", "gmm-run");
mkdirSync(gmmRun, { recursive: true });
writeFileSync(path.join(gmmRun, "recipe.resolved.json"), JSON.stringify({ data: { source: "gmm", gmm: { num_classes: 4, image_size: 8, std: 0.1 } } }));
const evalEnv = (extra: Record<string, string> = {}) => ({ DMD2_PYTHON: fake, FAKE_JOB: "result", ...extra });

test("eval: the spec names each model, its steps, the data and the picture rows; the table has the speed-up over teacher 50", async () => {
  const copy = path.join(work, "eval-spec.json");
  const picture = path.join(work, "compare.png");
  const r = await dmd2(["eval", evalTeacher, run, "--n", "64", "--seed", "3", "--repeats", "2", "--torch-threads", "3", "--picture", picture], evalEnv({ FAKE_SPEC_COPY: copy }));
  assert.equal(r.exitCode, 0, r.stderr);
  const spec = JSON.parse(readFileSync(copy, "utf8"));
  assert.deepEqual(spec.models, [
    { label: "teacher", kind: "teacher", path: evalTeacher, steps: [1, 2, 4, 10, 25, 50], guidance_scale: 1 },
    { label: "student", kind: "student", run_dir: run, steps: [1, 2, 4], checkpoint: null, weights: "ema" },
  ]);
  // the data group as the worker parses it: keys added since (data.prompts) get their defaults
  assert.deepEqual(spec.data, { ...digits, prompts: { file: null, images: null } });
  assert.deepEqual([spec.n, spec.seed, spec.repeats, spec.batch_size, spec.device, spec.torch_threads, spec.features, spec.cache_dir], [64, 3, 2, 64, "cpu", 3, { kind: "classifier" }, null]);
  assert.deepEqual(spec.picture, { path: picture, rows: [["real"], ["teacher", 50], ["student", 1], ["student", 4]], classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] });
  assert.equal(
    r.stdout,
    [
      "model    steps     FD  FD to train split  class accuracy  images/s  speed-up over teacher 50 steps",
      "teacher     10  3.250              2.500           90.0%       500                            5.0x",
      "teacher     50  1.500             0.2500           95.0%       100                            1.0x",
      "student      1  2.125                  -           93.0%      4000                           40.0x",
      "Noise floor (train vs held-out images, classifier features): FD 0.8125; the classifier's accuracy on held-out images: 97.5%",
      "FD to train split: the same distance to the 901 training images (what the teacher and the GAN learnt from); a model much " +
        "closer to them than to the held-out images reproduces its training images' statistics, and its held-out FD then moves " +
        "with the direction of its remaining error more than with its quality",
    ].join("\n"),
  );
  assert.match(r.stderr, /sampling teacher, 50 steps/);
  const bad = await dmd2(["eval", evalTeacher, "--repeats", "0"], evalEnv());
  assert.equal(bad.exitCode, 2);
  assert.equal(bad.stderr.trim(), "error: --repeats 0: must be between 1 and 1000");
});

test("eval --checkpoint picks a checkpoint of each run, --raw-weights the raw weights; a missing or damaged one is a one-line error", async () => {
  const ckptRun = path.join(work, "eval", "ckpt-run");
  mkdirSync(ckptRun, { recursive: true });
  writeFileSync(path.join(ckptRun, "recipe.resolved.json"), JSON.stringify({ data: digits }));
  for (const step of [10, 20]) {
    const dir = path.join(ckptRun, "checkpoints", checkpointName(step));
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, "generator.safetensors"), `weights ${step}`);
    const files = [{ name: "generator.safetensors", bytes: `weights ${step}`.length, sha256: sha256OfFile(path.join(dir, "generator.safetensors")), worker: "w" }];
    writeFileSync(path.join(dir, "manifest.json"), JSON.stringify({ format: "dmd2-checkpoint", version: 1, step, created: "", recipe_sha256: "", files }));
  }
  const copy = path.join(work, "eval-spec-ckpt.json");
  const r = await dmd2(["eval", evalTeacher, ckptRun, "--checkpoint", "10", "--raw-weights"], evalEnv({ FAKE_SPEC_COPY: copy }));
  assert.equal(r.exitCode, 0, r.stderr);
  const student = JSON.parse(readFileSync(copy, "utf8")).models[1];
  assert.deepEqual([student.checkpoint, student.weights], [path.join(ckptRun, "checkpoints", "step-00000010"), "raw"]);
  assert.match(r.stderr, /checkpoint step-00000010, raw weights/);

  // several checkpoints: one row each, labelled with the step; "all": every complete one, oldest first
  for (const [flag, copyName] of [["10,step-00000020,20", "eval-spec-ckpts.json"], ["all", "eval-spec-all.json"]] as const) {
    const several = path.join(work, copyName);
    const rs = await dmd2(["eval", ckptRun, "--checkpoint", flag, "--steps", "1"], evalEnv({ FAKE_SPEC_COPY: several }));
    assert.equal(rs.exitCode, 0, rs.stderr);
    const models = JSON.parse(readFileSync(several, "utf8")).models;
    assert.deepEqual(models.map((m: { label: string; checkpoint: string }) => [m.label, m.checkpoint]), [
      ["student@10", path.join(ckptRun, "checkpoints", "step-00000010")],
      ["student@20", path.join(ckptRun, "checkpoints", "step-00000020")],
    ]);
  }
  const emptyName = await dmd2(["eval", ckptRun, "--checkpoint", "10,"], evalEnv());
  assert.equal(emptyName.exitCode, 2);
  assert.equal(emptyName.stderr.trim(), "error: --checkpoint 10,: an empty name in the list (give folder names or step numbers separated by commas, or all)");
  const missing = await dmd2(["eval", ckptRun, "--checkpoint", "30"], evalEnv());
  assert.equal(missing.exitCode, 2);
  assert.equal(missing.stderr.trim(), `error: --checkpoint 30: no such complete checkpoint in ${ckptRun} (available: step-00000010, step-00000020)`);
  writeFileSync(path.join(ckptRun, "checkpoints", "step-00000020", "generator.safetensors"), "truncated");
  const damaged = await dmd2(["eval", ckptRun, "--checkpoint", "step-00000020"], evalEnv());
  assert.equal(damaged.exitCode, 2);
  assert.equal(damaged.stderr.trim(), `error: --checkpoint step-00000020: ${path.join(ckptRun, "checkpoints", "step-00000020")} is damaged: generator.safetensors (checksum mismatch) (pick another)`);
  const allDamaged = await dmd2(["eval", ckptRun, "--checkpoint", "all"], evalEnv()); // the flag as typed, and a fix that works with it
  assert.equal(allDamaged.exitCode, 2);
  assert.equal(allDamaged.stderr.trim(), `error: --checkpoint all: ${path.join(ckptRun, "checkpoints", "step-00000020")} is damaged: generator.safetensors (checksum mismatch) (name the others as a comma list)`);
  const newestDamaged = await dmd2(["eval", ckptRun, "--raw-weights"], evalEnv()); // without --checkpoint: the newest is checked too
  assert.equal(newestDamaged.exitCode, 2);
  assert.equal(newestDamaged.stderr.trim(), `error: ${path.join(ckptRun, "checkpoints", "step-00000020")} is damaged: generator.safetensors (checksum mismatch) (pick another with --checkpoint)`);
  const teacherOnly = await dmd2(["eval", evalTeacher, "--raw-weights"], evalEnv());
  assert.equal(teacherOnly.exitCode, 2);
  assert.equal(teacherOnly.stderr.trim(), "error: --raw-weights: no distilled run among the paths (it scores a run's raw generator weights)");
});

test("eval --json prints the result object; --features torchscript: and --steps reach the spec", async () => {
  const copy = path.join(work, "eval-spec-2.json");
  const module = path.join(work, "features.pt");
  writeFileSync(module, "not really torchscript");
  const r = await dmd2(["eval", run, "--json", "--steps", "1,4", "--features", `torchscript:${module}`], evalEnv({ FAKE_SPEC_COPY: copy }));
  assert.equal(r.exitCode, 0, r.stderr);
  const result = JSON.parse(r.stdout);
  assert.equal(result.event, undefined);
  assert.equal(result.noise_floor, 0.8125);
  assert.equal(result.rows.length, 3);
  const spec = JSON.parse(readFileSync(copy, "utf8"));
  assert.deepEqual(spec.features, { kind: "torchscript", path: module });
  assert.deepEqual(spec.models[0].steps, [1, 4]);
  assert.equal(spec.picture, null);
});

test("eval: where the data comes from, and the inputs it refuses with exit 2", async () => {
  const copy = path.join(work, "eval-spec-3.json");
  const noData = await dmd2(["eval", bareTeacher], evalEnv());
  assert.equal(noData.exitCode, 2);
  assert.match(noData.stderr, /^error: .*bare: no dmd2_teacher.json says which data the model learnt: name it with --data-from <recipe>$/m);
  const recipe = path.join(work, "data-only.yaml");
  writeFileSync(recipe, "name: x\ndata:\n  source: gmm\n  gmm: { num_classes: 3 }\n");
  const fromRecipe = await dmd2(["eval", bareTeacher, "--data-from", recipe], evalEnv({ FAKE_SPEC_COPY: copy }));
  assert.equal(fromRecipe.exitCode, 0, fromRecipe.stderr);
  assert.equal(JSON.parse(readFileSync(copy, "utf8")).data.gmm.num_classes, 3);
  const differ = await dmd2(["eval", evalTeacher, gmmRun], evalEnv());
  assert.equal(differ.exitCode, 2);
  assert.match(differ.stderr, /error: the models learnt different data \(.*teacher: digits; .*gmm-run: gmm \(4 classes, 8x8, std 0.1\)\): choose one with --data-from <recipe>/);
  const notModel = await dmd2(["eval", work], evalEnv());
  assert.equal(notModel.exitCode, 2);
  assert.match(notModel.stderr, /is neither a teacher folder \(model_index.json or unet\/\) nor a dmd2 run folder \(recipe.resolved.json\)/);
  const badSteps = await dmd2(["eval", run, "--steps", "1,8"], evalEnv());
  assert.equal(badSteps.exitCode, 2);
  assert.match(badSteps.stderr, /--steps takes comma-separated step counts from 1 to 4, like 1,2,4 — got "1,8"/);
  const badFeatures = await dmd2(["eval", run, "--features", "inception"], evalEnv());
  assert.equal(badFeatures.exitCode, 2);
  assert.match(badFeatures.stderr, /expected classifier, torchscript:<file.pt> or inception:<inception-2015-12-05.pt>, got "inception"/);
  const noInception = await dmd2(["eval", run, "--features", `inception:${path.join(work, "nope.pt")}`], evalEnv());
  assert.equal(noInception.exitCode, 2);
  assert.match(noInception.stderr, /--features: .*nope.pt does not exist \(give a local copy of the TorchScript Inception FID detector, inception-2015-12-05.pt\)/);
  const inception = path.join(work, "inception-2015-12-05.pt");
  writeFileSync(inception, "stands in for the detector: the fake worker does not load it");
  const withInception = await dmd2(["eval", run, "--json", "--features", `inception:${inception}`], evalEnv({ FAKE_SPEC_COPY: copy }));
  assert.equal(withInception.exitCode, 0, withInception.stderr);
  assert.deepEqual(JSON.parse(readFileSync(copy, "utf8")).features, { kind: "inception", path: inception });
  for (const r of [noData, differ, notModel, noInception]) assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
});
