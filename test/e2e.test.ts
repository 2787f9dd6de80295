// End to end: the CLI as a user runs it, with real Python worker processes, on the tiny recipe.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { loadRecipe } from "../src/recipe/load.js";
import { cliEntry, fakeTeacher, isAlive, maxAbsDiff, projectRoot, readSafetensors, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-e2e-");
const cache = path.join(os.tmpdir(), "dmd2-test-cache"); // the built-in teacher, trained once for all tests
const tiny = path.join(projectRoot, "recipes", "tiny.yaml");

interface Run {
  exitCode: number;
  stdout: string;
  stderr: string;
  events: Array<Record<string, unknown>>;
}

async function dmd2(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const r = await execa("node", [cliEntry, ...args], {
    cwd: work,
    reject: false,
    env: { DMD2_CACHE: cache, NO_COLOR: "1", ...env },
    timeout: 240_000,
  });
  const events = r.stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr, events };
}

const small = (name: string, extra: string[] = []) => [
  "--set", `run_dir=${path.join(work, name)}`,
  "--set", "train.steps=12",
  "--set", "train.checkpoint_every=6",
  "--set", "train.log_every=3",
  "--set", "sample.num=8",
  ...extra.flatMap((e) => ["--set", e]),
];
const finalWeights = (runDir: string, step: number, role: string) =>
  readSafetensors(path.join(runDir, "checkpoints", `step-${String(step).padStart(8, "0")}`, `${role}.safetensors`));

test("distill per_role: separate processes, run folder complete, no process left", async () => {
  const r = await dmd2(["distill", tiny, "--json", ...small("per-role")]);
  assert.equal(r.exitCode, 0, r.stderr);
  const workers = r.events.find((e) => e.event === "workers") as { workers: Array<{ name: string; pid: number; roles: string[] }> };
  assert.ok(workers, "a workers event");
  const pids = workers.workers.map((w) => w.pid);
  assert.equal(new Set(pids).size, 3, `three distinct worker processes: ${JSON.stringify(workers.workers)}`);
  const home = Object.fromEntries(workers.workers.flatMap((w) => w.roles.map((role) => [role, w.pid])));
  assert.notEqual(home.teacher, home.generator);
  assert.notEqual(home.generator, home.fake_score);
  assert.notEqual(home.teacher, home.fake_score);
  assert.equal(home.discriminator, home.fake_score, "the discriminator head lives with the fake score");
  for (const pid of pids) assert.ok(!isAlive(pid), `worker ${pid} still running after exit`);

  const dir = path.join(work, "per-role");
  for (const f of ["recipe.resolved.json", "metrics.jsonl", "samples/final/grid.png", "teacher/config.json", "teacher/model.safetensors"]) {
    assert.ok(existsSync(path.join(dir, f)), `${f} missing`);
  }
  const ckpts = readdirSync(path.join(dir, "checkpoints")).sort();
  assert.deepEqual(ckpts, ["step-00000006", "step-00000012"]);
  const manifest = JSON.parse(readFileSync(path.join(dir, "checkpoints", "step-00000012", "manifest.json"), "utf8"));
  const names = manifest.files.map((f: { name: string }) => f.name).sort();
  for (const n of ["generator.safetensors", "generator.optim.safetensors", "fake_score.safetensors", "discriminator.safetensors"]) assert.ok(names.includes(n), `${n} in manifest`);
  const metrics = readFileSync(path.join(dir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(metrics.length, 12);
  assert.equal(metrics.filter((m) => m.generator_update).length, 3); // steps 0, 5, 10 with ratio 5
  for (const m of metrics.filter((x) => x.generator_update)) assert.ok(Number.isFinite(m.loss_dmd), "loss_dmd logged");
  for (const m of metrics) assert.ok(Number.isFinite(m.loss_fake), "loss_fake logged");
  assert.equal(readdirSync(path.join(dir, "logs")).filter((f) => f.endsWith(".log")).length, 3);
  const done = r.events.find((e) => e.event === "done");
  assert.ok(done, "done event");
});

test("colocated and per_role runs of the same recipe and seed end with the same weights", async () => {
  const r = await dmd2(["distill", tiny, "--json", ...small("colocated", ["placement=colocated"])]);
  assert.equal(r.exitCode, 0, r.stderr);
  const workers = r.events.find((e) => e.event === "workers") as { workers: Array<{ pid: number; roles: string[] }> };
  assert.equal(workers.workers.length, 1);
  assert.equal(workers.workers[0]!.roles.length, 4);
  if (!existsSync(path.join(work, "per-role", "checkpoints"))) {
    const p = await dmd2(["distill", tiny, "--json", ...small("per-role")]);
    assert.equal(p.exitCode, 0, p.stderr);
  }
  for (const role of ["generator", "fake_score", "discriminator"]) {
    const a = finalWeights(path.join(work, "colocated"), 12, role);
    const b = finalWeights(path.join(work, "per-role"), 12, role);
    const d = maxAbsDiff(a, b);
    assert.ok(d < 1e-4, `${role}: max |colocated - per_role| = ${d}`);
  }
});

test("a worker raising mid-step: exit 1, role and Python error in one message, no process left", async () => {
  const r = await dmd2(["distill", tiny, "--json", ...small("fault")], { DMD2_FAULT: "fake_score.update:3" });
  assert.equal(r.exitCode, 1, r.stderr);
  const errLine = r.stderr.split("\n").find((l) => l.startsWith("error: "));
  assert.ok(errLine, r.stderr);
  assert.match(errLine, /fake_score/);
  assert.match(errLine, /RuntimeError: injected fault/);
  assert.ok(!/^\s+at /m.test(r.stderr), "no JavaScript stack trace");
  const workers = r.events.find((e) => e.event === "workers") as { workers: Array<{ pid: number }> };
  for (const w of workers.workers) assert.ok(!isAlive(w.pid), `worker ${w.pid} left behind`);
});

test("a worker process dying: exit 1 naming the worker and its exit code", async () => {
  const r = await dmd2(["distill", tiny, "--json", ...small("died")], { DMD2_FAULT: "generator.generate:2:exit" });
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /worker "generator" exited with code 3/);
  const workers = r.events.find((e) => e.event === "workers") as { workers: Array<{ pid: number }> };
  for (const w of workers.workers) assert.ok(!isAlive(w.pid), `worker ${w.pid} left behind`);
});

test("resume: 6 steps then on to 12 ends with the weights of an uninterrupted 12-step run", async () => {
  const dir = path.join(work, "resumed");
  const a = await dmd2(["distill", tiny, "--json", ...small("resumed", ["train.steps=6"])]);
  assert.equal(a.exitCode, 0, a.stderr);
  const b = await dmd2(["distill", tiny, "--json", ...small("resumed")]);
  assert.equal(b.exitCode, 0, b.stderr);
  const result = b.events.find((e) => e.event === "result") as { resumed_from: number };
  assert.equal(result.resumed_from, 6);
  if (!existsSync(path.join(work, "per-role", "checkpoints"))) {
    const p = await dmd2(["distill", tiny, "--json", ...small("per-role")]);
    assert.equal(p.exitCode, 0, p.stderr);
  }
  for (const role of ["generator", "fake_score", "discriminator"]) {
    const d = maxAbsDiff(finalWeights(dir, 12, role), finalWeights(path.join(work, "per-role"), 12, role));
    assert.ok(d < 1e-5, `${role}: resumed vs uninterrupted differ by ${d}`);
  }
});

test("sample: N images and a grid from the latest checkpoint, 1 and 2 steps", async () => {
  const runDir = path.join(work, "per-role");
  if (!existsSync(path.join(runDir, "checkpoints"))) {
    const p = await dmd2(["distill", tiny, "--json", ...small("per-role")]);
    assert.equal(p.exitCode, 0, p.stderr);
  }
  for (const steps of [1, 2]) {
    const out = path.join(work, `samples-${steps}`);
    const r = await dmd2(["sample", runDir, "--steps", String(steps), "--num", "6", "--seed", "3", "--classes", "0,1,2", "--out", out]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.ok(existsSync(path.join(out, "grid.png")));
    assert.equal(readdirSync(path.join(out, "images")).filter((f) => f.endsWith(".png")).length, 6);
  }
  const withSet = await dmd2(["sample", runDir, "--num", "4", "--set", "torch_threads=1", "--set", "device=cpu", "--out", path.join(work, "samples-set")]);
  assert.equal(withSet.exitCode, 0, withSet.stderr);
  assert.equal(readdirSync(path.join(work, "samples-set", "images")).length, 4);
  const badSet = await dmd2(["sample", runDir, "--set", "devise=cuda"]);
  assert.equal(badSet.exitCode, 2);
  assert.match(badSet.stderr, /error: --set: devise: unknown key \(did you mean "device"\?\)/);
  const bad = await dmd2(["sample", path.join(work, "nope")]);
  assert.equal(bad.exitCode, 2);
  assert.match(bad.stderr, /does not exist/);
});

test("sample: --classes is checked against the run's classes: gmm's, digits' 10, a folder's from its teacher", async () => {
  // run folders with only recipe.resolved.json: the classes are checked before a checkpoint is looked for, so a
  // class the run has gets as far as "no complete checkpoint yet" and one it has not is refused; no worker starts
  const teacher = (name: string, meta: Record<string, unknown> | null) => {
    const dir = fakeTeacher(path.join(work, "sample-teachers", name), {});
    if (meta !== null) writeFileSync(path.join(dir, "dmd2_teacher.json"), JSON.stringify({ format: 1, ...meta }));
    return dir;
  };
  const images = path.join(work, "sample-images");
  mkdirSync(images, { recursive: true });
  const runFolder = (name: string, file: string, sets: string[]) => {
    const dir = path.join(work, "sample-classes", name);
    const r = loadRecipe(file, { cwd: work, cpuCount: 2, overrides: [`run_dir=${dir}`, ...sets] });
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, "recipe.resolved.json"), JSON.stringify(r));
    return dir;
  };
  const digits = path.join(projectRoot, "recipes", "digits.yaml");
  const folder = (t: string) => [`teacher.path=${t}`, "data.source=folder", `data.folder.path=${images}`];
  const cases: { name: string; dir: string; ok: string; bad: string; range: string }[] = [
    { name: "gmm", dir: runFolder("gmm", tiny, ["data.gmm.num_classes=6"]), ok: "5", bad: "6", range: "0..5" },
    { name: "digits", dir: runFolder("digits", digits, [`teacher.path=${teacher("digits", { num_classes: 10, null_class: 10 })}`]), ok: "0,9", bad: "10", range: "0..9" },
    { name: "folder", dir: runFolder("folder", digits, folder(teacher("three", { num_classes: 3, null_class: 3 }))), ok: "2", bad: "3", range: "0..2" },
  ];
  for (const c of cases) {
    const ok = await dmd2(["sample", c.dir, "--classes", c.ok]);
    assert.equal(ok.exitCode, 2, `${c.name}: ${ok.stderr}`);
    assert.match(ok.stderr, /has no complete checkpoint yet/, c.name);
    const bad = await dmd2(["sample", c.dir, "--classes", c.bad]);
    assert.equal(bad.exitCode, 2, c.name);
    assert.equal(bad.stderr.trim(), `error: --classes: ${c.bad} is not a class of this run (${c.range})`, c.name);
  }
  // a folder without class subfolders: an unconditional teacher (num_classes null), so no --classes at all
  const flat = runFolder("flat", digits, folder(teacher("flat", { num_classes: null, null_class: null })));
  const none = await dmd2(["sample", flat, "--classes", "0"]);
  assert.equal(none.exitCode, 2);
  assert.match(none.stderr, /--classes: this run's generator is unconditional/);
  assert.match((await dmd2(["sample", flat])).stderr, /has no complete checkpoint yet/);
  // the teacher folder of a diffusers run must still be there: the generator is built from it
  const gone = runFolder("gone", digits, folder(teacher("gone", { num_classes: 3, null_class: 3 })));
  const moved = path.join(work, "sample-teachers", "gone");
  renameSync(moved, moved + "-moved");
  const lost = await dmd2(["sample", gone]);
  assert.equal(lost.exitCode, 2);
  assert.match(lost.stderr, /the run's teacher folder \S+ does not exist/);
});

test("bad recipe: exit 2, every problem on its own line, no stack trace", async () => {
  const r = await dmd2(["distill", tiny, "--set", "train.steps=0", "--set", "ttur.ratio=abc"]);
  assert.equal(r.exitCode, 2);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 2, r.stderr);
  assert.ok(lines.every((l) => l.startsWith("error: --set: ")), r.stderr);
  assert.ok(!/at .*\.js:\d+/.test(r.stderr));
});

test("non-finite loss: stops by default naming step and op; train.on_nonfinite=skip skips that update", async () => {
  const stop = await dmd2(["distill", tiny, ...small("nan-stop")], { DMD2_FAULT: "generator.update:5:nan" });
  assert.equal(stop.exitCode, 1, stop.stderr);
  assert.match(stop.stderr, /error: generator\.update at step 5 \(worker "generator"\) raised NonFiniteError: non-finite loss_dmd = nan/);
  assert.match(stop.stderr, /train\.on_nonfinite: skip/);
  const skip = await dmd2(["distill", tiny, ...small("nan-skip", ["train.on_nonfinite=skip"])], { DMD2_FAULT: "generator.update:5:nan" });
  assert.equal(skip.exitCode, 0, skip.stderr);
  const rows = readFileSync(path.join(work, "nan-skip", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(rows[5].skipped_nonfinite, 1);
  assert.equal(rows[0].skipped_nonfinite, 0);
  assert.equal(rows[10].skipped_nonfinite, 0);
});

test("device: cuda on a machine without CUDA is refused before setup with the fix, exit 2, no worker left", async () => {
  const r = await dmd2(["distill", tiny, "--json", ...small("cuda", ["device=cuda"])]);
  if (r.exitCode === 0) return assert.ok(/cuda/.test(r.stdout + r.stderr)); // a CUDA machine: it simply runs
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /roles\.teacher\.device: cuda is not available to worker "teacher" on \S+ \(torch \S+ there has no CUDA\); set device: cpu, or point DMD2_PYTHON \(or the recipe's python\) at a CUDA build of torch/);
  assert.equal(existsSync(path.join(work, "cuda", "metrics.jsonl")), false);
  const workers = r.events.find((e) => e.event === "workers") as { workers: Array<{ pid: number }> } | undefined;
  for (const w of workers?.workers ?? []) assert.equal(isAlive(w.pid), false, `worker ${w.pid} left running`);
});

async function ensurePerRoleReference(): Promise<string> {
  const dir = path.join(work, "per-role");
  if (!existsSync(path.join(dir, "checkpoints", "step-00000012"))) {
    const p = await dmd2(["distill", tiny, "--json", ...small("per-role")]);
    assert.equal(p.exitCode, 0, p.stderr);
  }
  return dir;
}

test("restart.max: a worker killed mid-run is replaced, the run resumes and ends with the uninterrupted weights", async () => {
  const marker = path.join(work, "restart-fault-fired");
  const r = await dmd2(["distill", tiny, "--json", ...small("restart", ["restart.max=2"])], {
    DMD2_FAULT: "generator.generate:8:exit",
    DMD2_FAULT_ONCE: marker,
  });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.ok(existsSync(marker), "the fault fired");
  const restart = r.events.find((e) => e.event === "restart") as { attempt: number; reason: string };
  assert.ok(restart, "a restart event");
  assert.equal(restart.attempt, 1);
  assert.match(restart.reason, /worker "generator" exited with code 3/);
  const result = r.events.find((e) => e.event === "result") as { restarts: number; resumed_from: number };
  assert.equal(result.restarts, 1);
  assert.equal(result.resumed_from, 6);
  const rows = readFileSync(path.join(work, "restart", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { step: number });
  assert.deepEqual(rows.map((x) => x.step), Array.from({ length: 12 }, (_, i) => i + 1), "one metrics row per step, none repeated");
  const ref = await ensurePerRoleReference();
  for (const role of ["generator", "fake_score", "discriminator"]) {
    const d = maxAbsDiff(finalWeights(path.join(work, "restart"), 12, role), finalWeights(ref, 12, role));
    assert.ok(d < 1e-5, `${role}: restarted vs uninterrupted differ by ${d}`);
  }
});

test("Ctrl-C: finishes the step, writes a checkpoint, exits 130, leaves no worker; the next run resumes", async () => {
  const runDir = path.join(work, "sigint");
  const child = execa("node", [cliEntry, "distill", tiny, "--json", ...small("sigint", ["train.steps=100000"])], {
    cwd: work,
    reject: false,
    env: { DMD2_CACHE: cache, NO_COLOR: "1" },
    timeout: 120_000,
  });
  const metrics = path.join(runDir, "metrics.jsonl");
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    if (existsSync(metrics) && readFileSync(metrics, "utf8").split("\n").length > 8) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  child.kill("SIGINT");
  const r = await child;
  assert.equal(r.exitCode, 130, String(r.stderr));
  const events = String(r.stdout).split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
  const workers = events.find((e) => e.event === "workers") as { workers: Array<{ pid: number }> };
  for (const w of workers.workers) assert.ok(!isAlive(w.pid), `worker ${w.pid} left behind`);
  const result = events.find((e) => e.event === "result") as { steps: number; interrupted: boolean; checkpoint: string };
  assert.equal(result.interrupted, true);
  const rows = readFileSync(metrics, "utf8").trim().split("\n");
  assert.equal(rows.length, result.steps, "the checkpoint holds every step that ran");
  assert.ok(existsSync(path.join(result.checkpoint, "manifest.json")));
  const again = await dmd2(["distill", tiny, "--json", ...small("sigint", [`train.steps=${result.steps + 2}`])]);
  assert.equal(again.exitCode, 0, again.stderr);
  const res2 = again.events.find((e) => e.event === "result") as { resumed_from: number; steps: number };
  assert.equal(res2.resumed_from, result.steps);
  assert.equal(res2.steps, result.steps + 2);
});

test("an unusable run folder is one clear line and exit 2, before any worker starts", async () => {
  const blocker = path.join(work, "a-file");
  writeFileSync(blocker, "not a folder\n");
  const r = await dmd2(["distill", tiny, "--json", "--set", `run_dir=${path.join(blocker, "run")}`]);
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /error: run_dir .*a-file\/run is not writable \(ENOTDIR\): choose another run_dir or fix its permissions/);
  assert.ok(!r.events.some((e) => e.event === "workers"), "no worker was started");
});

test("output when not a terminal: timestamped plain lines, a line per phase and per log_every steps, no colours", async () => {
  const r = await dmd2(["distill", tiny, ...small("plain")]);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout, "", "plain mode writes progress to stderr only");
  const lines = r.stderr.trim().split("\n");
  const stamp = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} /;
  assert.ok(lines.every((l) => stamp.test(l)), r.stderr);
  for (const phase of ["starting workers", "setting up teacher", "setting up generator and fake score", "sampling", "done: 12 steps"]) {
    assert.ok(lines.some((l) => l.includes(phase)), `no line for "${phase}"`);
  }
  assert.deepEqual(lines.filter((l) => / step \d+\/12 /.test(l)).map((l) => / step (\d+)\/12 /.exec(l)![1]), ["3", "6", "9", "12"]);
  assert.ok(!r.stderr.includes("\u001b["), "no ANSI colour codes with NO_COLOR");
});
