// The run folder is safe (issue 20), in-process parts: the lock, the output-path checker, the resume check's key
// classes, storage faults from every layer's words, and the recipe's edges (size, aliases, name, a group's problems).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { storageFaultCode, UsageError, WorkerError } from "../src/errors.js";
import { loadRecipe } from "../src/recipe/load.js";
import { acquireRunLock, LOCK_FILE } from "../src/run/lock.js";
import { ensureOutputDir, ensureOutputFile, ensureOutputParent } from "../src/run/outputPath.js";
import { mayChange, recipeChanges } from "../src/run/resumeCheck.js";
import { cliEntry, issuesOf, projectRoot, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-rf-units-");
const tiny = path.join(projectRoot, "recipes", "tiny.yaml");
const label = { what: "run_dir", fix: "choose another run_dir or fix its permissions" };

function usageError(fn: () => unknown): UsageError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof UsageError, `expected a UsageError, got ${e}`);
    assert.equal(e.exitCode, 2);
    assert.ok(!e.message.includes("\n"), "one line");
    return e;
  }
  assert.fail("expected a UsageError");
}

test("lock: a second writer is refused naming the holder; a stale lock is taken over with a note; another host's is not", async () => {
  const dir = path.join(work, "lock");
  mkdirSync(dir);
  const notes: string[] = [];
  const held = acquireRunLock(dir, (l) => notes.push(l));
  const info = JSON.parse(readFileSync(path.join(dir, LOCK_FILE), "utf8")) as { pid: number; host: string; started: string };
  assert.equal(info.pid, process.pid);
  assert.equal(info.host, os.hostname());
  assert.ok(!Number.isNaN(Date.parse(info.started)));
  held.release();
  assert.ok(!existsSync(path.join(dir, LOCK_FILE)));

  // a live holder (another process on this host)
  const sleeper = execa("sleep", ["30"], { reject: false });
  writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ pid: sleeper.pid, host: os.hostname(), started: "2026-01-01T00:00:00.000Z", command: "dmd2 distill" }));
  const e = usageError(() => acquireRunLock(dir, (l) => notes.push(l)));
  assert.equal(e.message, `run_dir ${dir} is in use by dmd2 distill (pid ${sleeper.pid} on ${os.hostname()}, since 2026-01-01T00:00:00.000Z): wait for it to finish or stop it, or choose another run_dir`);
  sleeper.kill();
  await sleeper;

  // a dead one: taken over
  const dead = spawnSync("true").pid;
  writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ pid: dead, host: os.hostname(), started: "2026-01-01T00:00:00.000Z", command: "dmd2 distill" }));
  const taken = acquireRunLock(dir, (l) => notes.push(l));
  assert.deepEqual(notes, [`took over the lock of ${dir} from dmd2 distill (pid ${dead} on ${os.hostname()}, since 2026-01-01T00:00:00.000Z), which is no longer running`]);
  assert.equal((JSON.parse(readFileSync(path.join(dir, LOCK_FILE), "utf8")) as { pid: number }).pid, process.pid);
  taken.release();

  // another host's: its pid cannot be checked from here
  writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ pid: dead, host: "elsewhere", started: "2026-01-01T00:00:00.000Z", command: "dmd2 distill" }));
  assert.match(usageError(() => acquireRunLock(dir, () => {})).message, /in use by dmd2 distill \(pid \d+ on elsewhere, .*\): if it is no longer running there, delete .*run\.lock; or choose another run_dir/);
});

test("output paths: made one level at a time; /proc, a file in the way and a folder named as a file are one line each, at once", () => {
  const t0 = performance.now();
  assert.match(usageError(() => ensureOutputDir("/proc/x", label)).message, /^run_dir \/proc\/x is not writable \(ENOENT\): choose another run_dir or fix its permissions \(the file system there cannot hold it\)$/);
  assert.match(usageError(() => ensureOutputFile("/proc/x/r.html", { what: "--out", fix: "give another --out file" })).message, /^--out \/proc\/x\/r\.html is not writable \(ENOENT\)/);
  assert.ok(performance.now() - t0 < 1000, "within a second");
  const deep = path.join(work, "out", "a", "b", "c");
  assert.equal(ensureOutputDir(deep, label), deep);
  assert.equal(ensureOutputDir(deep, label), deep, "an existing folder is fine");
  const file = path.join(work, "out", "file");
  writeFileSync(file, "");
  assert.equal(usageError(() => ensureOutputDir(path.join(file, "x", "y"), label, "F/x/y")).message, `run_dir F/x/y is not writable (ENOTDIR): choose another run_dir or fix its permissions (a file is in the way at ${file})`);
  assert.equal(usageError(() => ensureOutputDir(file, label, "F")).message, "run_dir F is not writable (EEXIST): choose another run_dir or fix its permissions (it is a file, not a folder)");
  assert.match(usageError(() => ensureOutputFile(deep, { what: "--out", fix: "give a file" })).message, /is a folder, not a file: give a file$/);
  assert.match(usageError(() => ensureOutputParent(file, { what: "--out", fix: "give a folder" })).message, /is not writable \(EEXIST\): give a folder \(it is a file, not a folder\)$/);
  const long = "/tmp/" + "d".repeat(200_000);
  const msg = usageError(() => ensureOutputDir(long, label)).message;
  assert.ok(msg.length < 300, `a 200,000-character path is shortened in the message: ${msg.length} characters`);
  assert.match(msg, /ENAMETOOLONG/);
});

test("resume check: what may change and what may not", () => {
  for (const k of ["train.steps", "train.log_every", "train.checkpoint_every", "train.sample_every", "train.keep_last", "sample.num", "sample.seed", "restart.max", "heartbeat.timeout_s", "device", "roles.teacher.device", "precision", "roles.generator.precision", "run_dir", "name"]) {
    assert.ok(mayChange(k), k);
  }
  for (const k of ["generator.lr", "ttur.ratio", "data.gmm.num_classes", "train.batch_size", "seed", "teacher.path", "gan.enabled", "diffusion.beta_schedule", "optim.betas"]) {
    assert.ok(!mayChange(k), k);
  }
  const before = { train: { steps: 10, batch_size: 32 }, generator: { lr: 1e-5 }, old: 1 };
  const after = { train: { steps: 20, batch_size: 32 }, generator: { lr: 1e-5 }, old: 1, added_later: true };
  assert.deepEqual(recipeChanges(before, after), [{ key: "train.steps", from: 10, to: 20 }], "a key the run's recipe does not have is not compared");
});

test("storage faults are recognised from every layer's words", () => {
  const fromWorker = (ename: string, evalue: string) => new WorkerError({ worker: "generator", roles: ["generator"], ename, evalue, traceback: "" });
  assert.equal(storageFaultCode(Object.assign(new Error("x"), { code: "ENOSPC" })), "ENOSPC"); // Node
  assert.equal(storageFaultCode(fromWorker("OSError", "[Errno 28] No space left on device: '/r/x'")), "ENOSPC"); // Python, PIL
  assert.equal(storageFaultCode(fromWorker("SafetensorError", "Error while serializing: I/O error: No space left on device (os error 28)")), "ENOSPC"); // safetensors
  assert.equal(storageFaultCode(fromWorker("RuntimeError", "PytorchStreamWriter failed writing file data/0: No space left on device")), "ENOSPC"); // torch
  assert.equal(storageFaultCode(fromWorker("SafetensorError", "I/O error: Disk quota exceeded (os error 122)")), "EDQUOT");
  assert.equal(storageFaultCode(fromWorker("OSError", "[Errno 30] Read-only file system: '/r'")), "EROFS");
  assert.equal(storageFaultCode(fromWorker("ValueError", "expected 3 channels")), null);
  assert.equal(storageFaultCode(fromWorker("FileNotFoundError", "[Errno 2] No such file or directory: 'x'")), null);
});

test("recipe edges: a large file, an alias bomb and a long name are one line, exit 2; every problem of a group at once", async () => {
  const big = path.join(work, "big.yaml");
  writeFileSync(big, "name: big\n" + "# padding\n".repeat(120_000));
  assert.deepEqual(issuesOf(() => loadRecipe(big)).map((l) => l.replace(/^.*big\.yaml/, "big.yaml")), ["big.yaml: 1.1 MiB is too large for a recipe (at most 1 MiB; long lists such as prompts go in their own file)"]);

  const bomb = path.join(work, "bomb.yaml");
  const lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"];
  for (let i = 1; i <= 9; i++) lines.push(`l${i}: &l${i} [${Array(10).fill(i === 1 ? "*a" : `*l${i - 1}`).join(", ")}]`);
  writeFileSync(bomb, lines.join("\n") + "\n");
  const r = await execa("node", [cliEntry, "distill", bomb], { reject: false, env: { NO_COLOR: "1" }, timeout: 30_000 });
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr.trim(), /^error: .*bomb\.yaml: its YAML aliases \(\*name\) expand too far \(more than 100 uses of an alias\): write the values out$/);

  const named = path.join(work, "named.yaml");
  writeFileSync(named, readFileSync(tiny, "utf8").replace("name: tiny", `name: ${"n".repeat(200_000)}`));
  const issues = issuesOf(() => loadRecipe(named));
  assert.deepEqual(issues.map((l) => l.replace(/^.*named\.yaml/, "named.yaml")), ["named.yaml:5: name: 200000 characters is too long (at most 100; it names the run's folder)"]);

  const group = path.join(work, "group.yaml");
  writeFileSync(group, readFileSync(tiny, "utf8").replace(/^  gmm: .*$/m, "  gmm: { image_size: 9, num_classes: 1 }"));
  const both = issuesOf(() => loadRecipe(group)).map((l) => l.replace(/^.*group\.yaml:\d+: /, ""));
  assert.deepEqual(both.sort(), ["data.gmm.image_size: must be a multiple of 4 (the UNet halves it twice), got 9", "data.gmm.num_classes: 1 is out of range (must be >= 2 and <= 10)"]);
});
