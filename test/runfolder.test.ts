// The run folder is safe (issue 20), end to end with real workers on the tiny recipe (colocated, 12 steps): one
// writer at a time, nothing overwritten before it is checked, metrics.jsonl and TensorBoard without repeated
// steps on every restart path, output paths checked before any work.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { cliEntry, projectRoot, scratchDir } from "./helpers.js";
import { effectiveEvents, eventFiles } from "./tfevents.js";

const work = scratchDir("dmd2-runfolder-");
const cache = path.join(os.tmpdir(), "dmd2-test-cache"); // the built-in teacher, trained once for all tests
const tiny = path.join(projectRoot, "recipes", "tiny.yaml");

interface Run {
  exitCode: number;
  stdout: string;
  stderr: string;
  ms: number;
}

function start(args: string[], env: Record<string, string> = {}) {
  return execa("node", [cliEntry, ...args], { cwd: work, reject: false, env: { DMD2_CACHE: cache, NO_COLOR: "1", ...env }, timeout: 180_000 });
}

async function dmd2(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const t0 = performance.now();
  const r = await start(args, env);
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr, ms: performance.now() - t0 };
}

const small = (runDir: string, extra: string[] = []) => [
  "--set", `run_dir=${runDir}`,
  "--set", "placement=colocated",
  "--set", "train.steps=12",
  "--set", "train.checkpoint_every=6",
  "--set", "train.log_every=3",
  "--set", "train.sample_every=6",
  "--set", "sample.num=4",
  ...extra.flatMap((e) => ["--set", e]),
];

const steps = (runDir: string) =>
  readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").trim().split("\n").filter((l) => l !== "").map((l) => (JSON.parse(l) as { step: number }).step);
const oneToN = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
/** The steps TensorBoard shows a scalar at, in order (each once when the files are consistent). */
const tbSteps = (runDir: string) => effectiveEvents(path.join(runDir, "tb")).filter((e) => e.scalars.size > 0).map((e) => e.step);

function oneErrorLine(r: Run): string {
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line expected, got:\n${r.stderr}`);
  assert.match(lines[0]!, /^error: /);
  assert.doesNotMatch(r.stderr, /internal error|please report|Traceback|at .*\.js:\d+/);
  return lines[0]!;
}

// One finished run, shared by the tests that change it (each leaves it as it found it, or says so).
const finished = path.join(work, "finished");

test("two distills on one run folder: one is refused naming the holder, the other finishes with one metrics row per step", async () => {
  const ca = start(["distill", tiny, ...small(finished)]);
  const cb = start(["distill", tiny, ...small(finished)]);
  const [a, b] = await Promise.all([ca, cb]);
  const runs = [a, b].sort((x, y) => (x.exitCode ?? 0) - (y.exitCode ?? 0));
  assert.equal(runs[0]!.exitCode, 0, `one finishes: ${runs[0]!.stderr}`);
  assert.equal(runs[1]!.exitCode, 2, `the other is refused: ${runs[1]!.stderr}`);
  const line = oneErrorLine({ exitCode: 2, stdout: runs[1]!.stdout, stderr: runs[1]!.stderr, ms: 0 });
  assert.match(line, new RegExp(`run_dir .*finished is in use by dmd2 distill \\(pid \\d+ on ${os.hostname()}, since \\d{4}-\\d\\d-\\d\\dT.*\\): wait for it to finish or stop it, or choose another run_dir`));
  const holder = Number(/pid (\d+)/.exec(line)![1]);
  const winner = runs[0] === a ? ca : cb;
  assert.equal(holder, winner.pid, `the holder named is the command that finished (${ca.pid}, ${cb.pid})`);
  assert.deepEqual(steps(finished), oneToN(12));
  assert.deepEqual(tbSteps(finished), oneToN(12));
  assert.ok(!existsSync(path.join(finished, "run.lock")), "the lock is released at the end");
});

test("a failed distill on a finished run leaves it sampleable: a key that changes what was trained refuses the resume in one line", async () => {
  const resolved = path.join(finished, "recipe.resolved.json");
  const before = readFileSync(resolved, "utf8");
  const r = await dmd2(["distill", tiny, ...small(finished, ["data.gmm.num_classes=6"])]);
  assert.equal(r.exitCode, 2, r.stderr);
  const line = oneErrorLine(r);
  assert.match(line, /cannot resume .*finished from step-00000012: the recipe changes what it was trained with: data\.gmm\.num_classes 4 -> 6; put that key back, add --fresh to start the folder over \(the old one is kept aside as .*finished\.old-<time>\), or choose another run_dir/);
  assert.equal(readFileSync(resolved, "utf8"), before, "recipe.resolved.json is left as it was");
  const two = await dmd2(["distill", tiny, ...small(finished, ["generator.lr=1e-3", "ttur.ratio=2"])]);
  assert.equal(two.exitCode, 2);
  assert.match(oneErrorLine(two), /trained with: generator\.lr 0\.00003 -> 0\.001, ttur\.ratio 5 -> 2; put those keys back/);
  const s = await dmd2(["sample", finished, "--num", "4", "--out", path.join(work, "after-refusal")]);
  assert.equal(s.exitCode, 0, `the run still samples: ${s.stderr}`);
  assert.ok(existsSync(path.join(work, "after-refusal", "grid.png")));
});

test("a resume with keys that may change lists them in one line and continues: one metrics row per step", async () => {
  const r = await dmd2(["distill", tiny, ...small(finished, ["train.steps=15", "sample.num=3"])]);
  assert.equal(r.exitCode, 0, r.stderr);
  const out = r.stdout + r.stderr;
  assert.match(out, /resuming with changed keys: train\.steps 12 -> 15, sample\.num 4 -> 3$/m);
  assert.match(out, /resuming from .*step-00000012 \(step 12\)/);
  assert.deepEqual(steps(finished), oneToN(15));
  assert.deepEqual(tbSteps(finished), oneToN(15));
  assert.equal((JSON.parse(readFileSync(path.join(finished, "recipe.resolved.json"), "utf8")) as { train: { steps: number } }).train.steps, 15, "the new recipe is the run's now");
});

test("--fresh starts the folder over and keeps the old one aside", async () => {
  const r = await dmd2(["distill", tiny, "--fresh", ...small(finished, ["generator.lr=1e-4"])]);
  assert.equal(r.exitCode, 0, r.stderr);
  const aside = readdirSync(work).filter((n) => n.startsWith("finished.old-"));
  assert.equal(aside.length, 1, `one old folder kept: ${readdirSync(work).join(", ")}`);
  assert.match(r.stdout + r.stderr, new RegExp(`--fresh: starting .*finished over; the old run folder is kept as .*${aside[0]!.replace(/[.]/g, "\\.")}`));
  assert.deepEqual(steps(path.join(work, aside[0]!)), oneToN(15), "the old run is untouched");
  assert.ok(existsSync(path.join(work, aside[0]!, "checkpoints", "step-00000015", "manifest.json")));
  assert.ok(!existsSync(path.join(work, aside[0]!, "run.lock")));
  assert.doesNotMatch(r.stdout + r.stderr, /resuming/);
  assert.deepEqual(steps(finished), oneToN(12));
  assert.equal((JSON.parse(readFileSync(path.join(finished, "recipe.resolved.json"), "utf8")) as { generator: { lr: number } }).generator.lr, 1e-4);
});

test("a kill before the first checkpoint: the rerun takes over the stale lock, starts over and logs every step once", async () => {
  const runDir = path.join(work, "killed");
  const args = ["distill", tiny, ...small(runDir, ["train.checkpoint_every=100", "train.sample_every=0"])];
  const child = start(args);
  const metrics = path.join(runDir, "metrics.jsonl");
  for (let i = 0; i < 1200 && !(existsSync(metrics) && steps(runDir).length >= 4); i++) await new Promise((r) => setTimeout(r, 50));
  child.kill("SIGKILL"); // the coordinator only: no clean-up, its lock stays behind
  await child;
  assert.ok(steps(runDir).length >= 4 && !existsSync(path.join(runDir, "checkpoints", "step-00000012")), "killed before the first checkpoint");
  const lock = JSON.parse(readFileSync(path.join(runDir, "run.lock"), "utf8")) as { pid: number };
  assert.equal(lock.pid, child.pid);
  await new Promise((r) => setTimeout(r, 1500)); // its workers notice and exit
  const r = await dmd2(args);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout + r.stderr, new RegExp(`took over the lock of .*killed from dmd2 distill \\(pid ${child.pid} on ${os.hostname()}, since .*\\), which is no longer running`));
  assert.deepEqual(steps(runDir), oneToN(12));
  assert.equal(eventFiles(path.join(runDir, "tb")).length, 1, "the killed run's TensorBoard file is gone with its rows");
  assert.deepEqual(tbSteps(runDir), oneToN(12));
});

test("a restart before the first checkpoint starts metrics.jsonl and TensorBoard afresh", async () => {
  const runDir = path.join(work, "restart-early");
  const marker = path.join(work, "restart-early-fired");
  const r = await dmd2(["distill", tiny, ...small(runDir, ["train.checkpoint_every=100", "train.sample_every=0", "restart.max=1"])], {
    DMD2_FAULT: "generator.generate:5:exit",
    DMD2_FAULT_ONCE: marker,
  });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.ok(existsSync(marker), "the fault fired");
  assert.match(r.stdout + r.stderr, /restarting the workers from the last checkpoint \(restart 1 of 1\)/);
  assert.deepEqual(steps(runDir), oneToN(12));
  assert.deepEqual(tbSteps(runDir), oneToN(12));
});

test("output paths are checked before any work: one line, exit 2, within a second", async () => {
  const file = path.join(work, "a-file");
  writeFileSync(file, "x");
  const proc = await dmd2(["distill", tiny, "--set", "run_dir=/proc/x"]);
  assert.equal(proc.exitCode, 2);
  assert.match(oneErrorLine(proc), /^error: run_dir \/proc\/x is not writable \(ENOENT\): choose another run_dir or fix its permissions \(the file system there cannot hold it\)$/);
  assert.ok(proc.ms < 5000, `distill with run_dir=/proc/x took ${proc.ms} ms`); // it used to hang for ever (node's start included here)
  const cases: Array<[string[], RegExp]> = [
    [["report", finished, "--out", "/proc/x/r.html"], /^error: --out \/proc\/x\/r\.html is not writable \(ENOENT\): give another --out file \(the file system there cannot hold it at \/proc\/x\)$/],
    [["train-teacher", path.join(projectRoot, "recipes", "digits-teacher.yaml"), "--out", "/proc/x/t"], /^error: the teacher folder \/proc\/x\/t is not writable \(ENOENT\): write elsewhere with --out <dir> \(the file system there cannot hold it at \/proc\/x\)$/],
    [["train-teacher", path.join(projectRoot, "recipes", "digits-teacher.yaml"), "--out", path.join(file, "t")], /^error: the teacher folder .*a-file\/t is not writable \(ENOTDIR\): write elsewhere with --out <dir> \(a file is in the way at .*a-file\)$/],
    [["sample", finished, "--out", path.join(file, "s")], /^error: --out .*a-file\/s is not writable \(ENOTDIR\): give another --out folder \(a file is in the way at .*a-file\)$/],
    [["eval", finished, "--picture", path.join(file, "p.png")], /^error: --picture .*a-file\/p\.png is not writable \(ENOTDIR\): give another --picture file \(a file is in the way at .*a-file\)$/],
    [["distill", tiny, "--set", `run_dir=${path.join(file, "run")}`], /^error: run_dir .*a-file\/run is not writable \(ENOTDIR\): choose another run_dir or fix its permissions \(a file is in the way at .*a-file\)$/],
  ];
  for (const [args, want] of cases) {
    const r = await dmd2(args);
    assert.equal(r.exitCode, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(oneErrorLine(r), want);
    assert.ok(r.ms < 5000, `${args[0]} took ${r.ms} ms`);
  }
});
