// Error classes: stable codes, exit codes, one-line messages.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  DmdError,
  ProtocolError,
  RecipeError,
  UsageError,
  WorkerDiedError,
  WorkerError,
  WorkerTimeoutError,
} from "../src/errors.js";

test("WorkerError names the worker, its roles and the exception", () => {
  const e = new WorkerError({
    worker: "fake_score",
    roles: ["fake_score", "discriminator"],
    role: "discriminator",
    ename: "RuntimeError",
    evalue: "injected fault",
    traceback: "Traceback (most recent call last):\n  ...\nRuntimeError: injected fault\n",
  });
  assert.equal(e.message, 'worker "fake_score" (roles fake_score, discriminator) raised RuntimeError: injected fault');
  assert.equal(e.summary, "discriminator: RuntimeError: injected fault");
  assert.equal(e.code, "WORKER_ERROR");
  assert.equal(e.exitCode, 1);
  assert.ok(e instanceof DmdError && e instanceof Error);
  assert.equal(e.name, "WorkerError");
  const single = new WorkerError({ worker: "teacher", roles: ["teacher"], ename: "ValueError", evalue: "line one\nline two", traceback: "" });
  assert.equal(single.message, 'worker "teacher" raised ValueError: line one | line two');
  assert.equal(single.hint, undefined);
});

test("WorkerDiedError carries the worker's exit code, signal and stderr tail", () => {
  const e = new WorkerDiedError({ worker: "teacher", workerExitCode: 3, signal: null, stderrTail: ["a", "RuntimeError: boom", ""], logFile: "/r/logs/teacher.log" });
  assert.equal(e.message, 'worker "teacher" exited with code 3; last stderr line: RuntimeError: boom');
  assert.equal(e.workerExitCode, 3);
  assert.equal(e.exitCode, 1);
  assert.equal(e.code, "WORKER_DIED");
  assert.equal(e.hint, "its full output is in /r/logs/teacher.log");
  const killed = new WorkerDiedError({ worker: "all", workerExitCode: null, signal: "SIGKILL", stderrTail: [] });
  assert.equal(killed.message, 'worker "all" was killed by signal SIGKILL');
});

test("WorkerTimeoutError says which limit was exceeded", () => {
  assert.equal(new WorkerTimeoutError({ worker: "teacher", kind: "heartbeat", timeoutS: 30, lastBusy: true }).message, 'worker "teacher" sent no heartbeat for 30 s (it was busy)');
  assert.equal(new WorkerTimeoutError({ worker: "teacher", kind: "heartbeat", timeoutS: 60, everSeen: false }).message, 'worker "teacher" sent no heartbeat within 60 s of starting');
  const r = new WorkerTimeoutError({ worker: "generator", kind: "request", timeoutS: 0.2, request: { type: "op", id: "c-9", role: "generator", op: "generate", step: 4 } });
  assert.equal(r.message, 'worker "generator" did not answer op generator.generate (step 4) within 0.2 s');
  assert.equal(r.code, "WORKER_TIMEOUT");
});

test("RecipeError and UsageError exit with 2", () => {
  const e = new RecipeError([
    { file: "r.yaml", line: 3, path: "train.steps", message: "must be an integer >= 1, got 0" },
    { file: "r.yaml", line: null, path: "gan", message: "unknown key" },
  ]);
  assert.equal(e.exitCode, 2);
  assert.equal(e.code, "RECIPE_INVALID");
  assert.equal(e.message, "r.yaml:3: train.steps: must be an integer >= 1, got 0 (and 1 more problem)");
  assert.deepEqual(e.lines(), ["r.yaml:3: train.steps: must be an integer >= 1, got 0", "r.yaml: gan: unknown key"]);
  const u = new UsageError("bad flag", { hint: "use --steps 1..4" });
  assert.equal(u.exitCode, 2);
  assert.equal(u.code, "USAGE");
  assert.equal(new ProtocolError("x", { code: "PROTOCOL_VERSION", worker: "teacher" }).message, 'worker "teacher": x');
});
