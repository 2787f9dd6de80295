// The transport layer against tiny Python fixture workers (test/fixtures/workers/, plain pyzmq): hello, ops,
// error replies, a worker that crashes (exit code and stderr tail reach the error), one that hangs (heartbeat
// and request timeouts), forced kills, and that no process is ever left behind.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, readFileSync, rmSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import v8 from "node:v8";
import vm from "node:vm";
import { after, describe, test } from "node:test";
import { ProtocolError, UsageError, WorkerDiedError, WorkerError, WorkerTimeoutError } from "../src/errors.js";
import type { TensorFrame } from "../src/protocol/messages.js";
import { Push } from "zeromq";
import { encodeMessage } from "../src/protocol/codec.js";
import { createEndpoints } from "../src/workers/endpoints.js";
import { HeartbeatMonitor } from "../src/workers/heartbeat.js";
import { WorkerPool, checkSpecs, type WorkerPoolOptions, type WorkerSpec } from "../src/workers/pool.js";
import { liveWorkers, spawnWorker } from "../src/workers/process.js";
import { PROJECT_ROOT, resolvePython } from "../src/workers/python.js";
import { scratchDir } from "./helpers.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const fixtures = path.join(root, "test", "fixtures", "workers");
const python = resolvePython(null);
const tmp = scratchDir("dmd2-workers-test-");
const hello = { run_dir: tmp, recipe: { name: "fixture" }, torch_threads: 1 };

after(() => {
  for (const worker of liveWorkers()) worker.kill("SIGKILL");
  rmSync(tmp, { recursive: true, force: true });
});

/** Whether a process runs; a zombie (killed, waiting for an init that may never reap it) counts as gone. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return process.platform !== "linux";
  }
}

/** The process group of a process (Linux /proc; null elsewhere). */
function processGroup(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
  } catch {
    return null;
  }
}

function options(entry: string[] | ((spec: WorkerSpec) => string[]), extra: Partial<WorkerPoolOptions> = {}): WorkerPoolOptions {
  return { python, hello, entry, heartbeatIntervalS: 0.1, heartbeatTimeoutS: 2, logDir: path.join(tmp, "logs"), ...extra };
}
const fake = [path.join(fixtures, "fake_worker.py")];
const perRole: WorkerSpec[] = [
  { name: "teacher", roles: ["teacher"] },
  { name: "fake_score", roles: ["fake_score", "discriminator"] },
];

function f32(name: string, values: number[]): TensorFrame {
  return { name, dtype: "float32", shape: [values.length], data: Buffer.from(new Float32Array(values).buffer) };
}

async function expectReject<T extends Error>(promise: Promise<unknown>, cls: new (...args: never[]) => T): Promise<T> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof cls, `expected ${cls.name}, got ${String(error)}`);
    return error;
  }
  assert.fail(`expected ${cls.name}, but it resolved`);
}

describe("resolvePython", () => {
  const venv = path.join(PROJECT_ROOT, ".venv", "bin", "python");
  test("the project root is found from the compiled file", () => {
    assert.ok(existsSync(path.join(PROJECT_ROOT, "package.json")));
  });
  test("recipe key, then DMD2_PYTHON, then .venv", () => {
    assert.equal(resolvePython(venv, { env: { DMD2_PYTHON: "/nope" } }), venv);
    assert.equal(resolvePython(null, { env: { DMD2_PYTHON: venv } }), venv);
    assert.equal(resolvePython(null, { env: {} }), venv);
    assert.equal(resolvePython(null, { env: { DMD2_PYTHON: "" } }), venv);
  });
  test("a missing interpreter is a UsageError naming the fix", () => {
    const e1 = (() => {
      try {
        resolvePython(null, { env: {}, projectRoot: tmp });
      } catch (e) {
        return e;
      }
    })();
    assert.ok(e1 instanceof UsageError);
    assert.equal(e1.exitCode, 2);
    assert.match(e1.hint ?? "", /npm install/);
    assert.match(e1.hint ?? "", /DMD2_PYTHON/);
    assert.throws(() => resolvePython(null, { env: { DMD2_PYTHON: "/no/such/python" } }), (e: unknown) => e instanceof UsageError && /DMD2_PYTHON=\/no\/such\/python/.test(e.message));
    assert.throws(() => resolvePython("/no/such/python", { env: {} }), (e: unknown) => e instanceof UsageError && /python: "\/no\/such\/python"/.test(e.message));
  });
});

describe("endpoints", () => {
  test("ipc: a private 0700 directory with short paths, removed by cleanup", async () => {
    const ep = await createEndpoints(["teacher", "fake_score"]);
    assert.ok(ep.dir !== null);
    assert.equal(statSync(ep.dir).mode & 0o777, 0o700);
    assert.equal(ep.endpointFor("fake_score"), `ipc://${ep.dir}/fake_score.req`);
    assert.equal(ep.heartbeat, `ipc://${ep.dir}/hb`);
    assert.ok(ep.endpointFor("fake_score").length - "ipc://".length < 100);
    await ep.cleanup();
    await ep.cleanup();
    assert.ok(!existsSync(ep.dir));
  });
  test("tcp: 127.0.0.1 only, distinct ports", async () => {
    const ep = await createEndpoints(["a", "b"], "tcp");
    const all = [ep.endpointFor("a"), ep.endpointFor("b"), ep.heartbeat];
    for (const e of all) assert.match(e, /^tcp:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(new Set(all).size, 3);
  });
  test("bad worker names and placements are refused", async () => {
    await assert.rejects(createEndpoints(["../x"]), UsageError);
    assert.throws(() => checkSpecs([{ name: "a", roles: ["discriminator"] }, { name: "b", roles: ["fake_score"] }]), /same worker as fake_score/);
    assert.throws(() => checkSpecs([{ name: "a", roles: ["teacher"] }, { name: "b", roles: ["teacher"] }]), /both/);
  });
});

test("HeartbeatMonitor: tracks the last heartbeat and busy, drops bad messages, reports an overdue worker once", async () => {
  const warnings: string[] = [];
  const timeouts: WorkerTimeoutError[] = [];
  const monitor = new HeartbeatMonitor({ timeoutS: 0.3, firstTimeoutS: 5, onWarning: (l) => warnings.push(l), onTimeout: (e) => timeouts.push(e) });
  const ep = await createEndpoints(["w"]);
  const push = new Push({ linger: 0 });
  try {
    push.connect(await monitor.bind(ep.heartbeat));
    monitor.watch("w");
    const beat = (busy: boolean) =>
      encodeMessage({ version: 1, id: "w-1", type: "heartbeat", reply_to: null, status: null, sender: "w", body: { worker: "w", pid: 4242, busy, time: Date.now() / 1000 }, tensors: [] });
    await push.send(beat(true));
    await push.send([Buffer.from("not json")]);
    await push.send([Buffer.from(JSON.stringify({ version: 2, id: "w-2", type: "heartbeat" }))]);
    await push.send(beat(true));
    for (let i = 0; i < 100 && (monitor.state("w")?.count ?? 0) < 2; i++) await new Promise((r) => setTimeout(r, 10));
    const state = monitor.state("w")!;
    assert.equal(state.count, 2);
    assert.equal(state.busy, true);
    assert.equal(state.pid, 4242);
    assert.ok(monitor.ageS("w")! < 0.3);
    assert.equal(warnings.length, 2, warnings.join("; "));
    assert.match(warnings[1]!, /version 2/);
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(timeouts.length, 1, "reported once");
    assert.equal(timeouts[0]!.worker, "w");
    assert.match(timeouts[0]!.message, /^worker "w" sent no heartbeat for 0\.3 s \(it was busy\)$/);
  } finally {
    push.close();
    await monitor.stop();
    await monitor.stop();
    await ep.cleanup();
  }
});

describe("pool with well-behaved workers", () => {
  test("hello, ops, error replies, a malformed reply, then a clean shutdown", async () => {
    const pool = await WorkerPool.start(perRole, options(fake));
    const pids = pool.pids();
    const ipcDir = pool.endpoints.dir!;
    try {
      // hello replies are kept, and their pids are the processes we started.
      assert.deepEqual(Object.keys(pids).sort(), ["fake_score", "teacher"]);
      assert.equal(pool.helloReplies.get("teacher")!.pid, pids.teacher);
      assert.deepEqual(pool.helloReplies.get("fake_score")!.roles, ["fake_score", "discriminator"]);
      assert.equal(pool.workerFor("discriminator"), "fake_score");

      // An op: inputs go in untouched, the named outputs come back byte for byte.
      const x = f32("x_t_dmd", [1, -2, 3.5]);
      const cond = { name: "cond", dtype: "int64" as const, shape: [1], data: Buffer.from(new BigInt64Array([3n]).buffer) };
      const out = await pool.clientFor("teacher").op("teacher", "echo", 1, {}, [x, cond], ["x_t_dmd", "cond"]);
      assert.deepEqual(out.tensors.map((t) => t.name), ["x_t_dmd", "cond"]);
      assert.ok(out.tensors[0]!.data.equals(x.data));
      assert.ok(out.tensors[1]!.data.equals(cond.data));
      assert.equal(out.metrics.n, 2);
      // The store survives within a step (nothing attached) ...
      const again = await pool.clientFor("teacher").op("teacher", "echo", 1, {}, [], ["cond"]);
      assert.ok(again.tensors[0]!.data.equals(cond.data));

      // Concurrent requests to two workers, and several to one.
      const results = await Promise.all([
        pool.clientFor("teacher").op("teacher", "sleep", 2, { seconds: 0.2 }, [], []),
        pool.clientFor("fake_score").op("fake_score", "sleep", 2, { seconds: 0.2 }, [], []),
        pool.clientFor("fake_score").setup("discriminator", "/t"),
        pool.clientFor("teacher").save(tmp, 2),
      ]);
      assert.equal(results[2].params, 123);
      assert.equal(results[3].files[0]!.name, "x.safetensors");

      // An error reply rejects that request only.
      const err = await expectReject(pool.clientFor("discriminator").op("discriminator", "fail", 3, {}, [], []), WorkerError);
      assert.equal(err.message, 'discriminator.fail at step 3 (worker "fake_score") raised RuntimeError: injected fault');
      assert.equal(err.role, "discriminator");
      assert.equal(err.ename, "RuntimeError");
      assert.match(err.traceback, /^Traceback/);
      assert.deepEqual(err.request && { op: err.request.op, step: err.request.step }, { op: "fail", step: 3 });

      // A malformed reply is a ProtocolError for that request; the worker stays usable.
      const bad = await expectReject(pool.clientFor("teacher").op("teacher", "bad_frame", 4, {}, [], ["x"]), ProtocolError);
      assert.equal(bad.code, "PROTOCOL_FRAME_LENGTH");
      assert.match(bad.message, /^worker "teacher": /);
      // Outputs other than those asked for are a protocol error.
      const wrong = await expectReject(pool.clientFor("teacher").op("teacher", "echo_all", 1, {}, [x], []), ProtocolError);
      assert.equal(wrong.code, "PROTOCOL_UNEXPECTED_REPLY");
      await expectReject(pool.clientFor("teacher").op("teacher", "fail", 5, {}, [], []), WorkerError);
      assert.equal(pool.failed, null);

      // A request time limit.
      const slow = await expectReject(pool.clientFor("teacher").op("teacher", "sleep", 6, { seconds: 0.6 }, [], [], { timeoutMs: 100 }), WorkerTimeoutError);
      assert.equal(slow.kind, "request");
    } finally {
      const report = await pool.shutdownAll({ graceMs: 2000 });
      // Idempotent: the same result again.
      assert.equal(await pool.shutdownAll(), report);
      await pool.close();
      for (const r of report) {
        assert.equal(r.replied, true, `${r.worker} replied to shutdown`);
        assert.deepEqual(r.exit, { code: 0, signal: null });
        assert.equal(r.forced, false);
      }
    }
    for (const pid of Object.values(pids)) assert.ok(!isAlive(pid), `pid ${pid} is gone`);
    assert.ok(!existsSync(ipcDir), "ipc directory removed");
    assert.ok(existsSync(path.join(tmp, "logs", "teacher.log")), "log file written");
    await assert.rejects(pool.clientFor("teacher").hello(hello), { code: "WORKER_CLOSED" });
  });

  test("colocated over tcp", async () => {
    const pool = await WorkerPool.start([{ name: "all", roles: ["teacher", "generator", "fake_score", "discriminator"] }], options(fake, { transport: "tcp" }));
    const pid = pool.pids().all!;
    try {
      assert.equal(pool.endpoints.dir, null);
      assert.match(pool.client("all").address ?? "", /^tcp:\/\/127\.0\.0\.1:\d+$/);
      assert.equal(pool.clientFor("generator"), pool.clientFor("teacher"));
      const r = await pool.clientFor("generator").op("generator", "echo", 0, {}, [f32("a", [1])], ["a"]);
      assert.equal(r.tensors[0]!.data.readFloatLE(0), 1);
      // CURVE keys made for the run reach the worker in its environment, never on its command line
      const keys = pool.endpoints.curve!;
      assert.ok(keys.server.publicKey.length === 40 && keys.client.secretKey.length === 40);
      const environ = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");
      assert.ok(environ.includes(`DMD2_CURVE_SERVER_KEY=${keys.server.publicKey}`));
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      assert.ok(!cmdline.includes("CURVE") && !cmdline.includes(keys.client.secretKey), cmdline);
    } finally {
      await pool.close();
    }
    assert.ok(!isAlive(pid));
  });

  test("tcp: a worker without the run's CURVE keys is refused (no heartbeat gets through, no request reaches it)", async () => {
    const error = await expectReject(
      WorkerPool.start([{ name: "all", roles: ["teacher", "generator", "fake_score", "discriminator"] }],
        options(fake, { transport: "tcp", firstHeartbeatTimeoutS: 2, env: { DMD2_FAKE_IGNORE_CURVE: "1" } })),
      WorkerTimeoutError,
    );
    assert.equal(error.kind, "heartbeat");
    assert.match(error.message, /worker "all" sent no heartbeat within 2 s of starting/);
    assert.equal(liveWorkers().length, 0);
  });

  test("pool.race keeps nothing alive once the work settled (no reaction left on pool.failure)", async () => {
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as () => void;
    const pool = await WorkerPool.start([{ name: "all", roles: ["teacher", "generator", "fake_score", "discriminator"] }], options(fake));
    try {
      // In a function of its own, so that no register of this test's suspended frame holds a result.
      const roundTrip = async (i: number): Promise<WeakRef<Buffer>> => {
        const r = await pool.race(pool.clientFor("generator").op("generator", "echo", 0, {}, [f32("a", [i, i, i])], ["a"]));
        assert.equal(r.tensors[0]!.data.readFloatLE(0), i);
        return new WeakRef(r.tensors[0]!.data);
      };
      const refs: Array<WeakRef<Buffer>> = [];
      for (let i = 0; i < 5; i++) refs.push(await roundTrip(i));
      await pool.race(pool.clientFor("generator").op("generator", "echo", 0, {}, [], [])); // the receive loop moves on
      for (let i = 0; i < 3 && refs.some((ref) => ref.deref() !== undefined); i++) {
        await new Promise((resolve) => setTimeout(resolve, 10)); // WeakRefs hold their target until the job ends
        gc();
      }
      assert.equal(refs.filter((ref) => ref.deref() !== undefined).length, 0, "reply buffers still reachable after race settled");
    } finally {
      await pool.close();
    }
  });

  test("a hello reply with the wrong roles fails the start", async () => {
    await assert.rejects(WorkerPool.start(perRole.slice(0, 1), options(fake, { env: { FAKE_ROLES: "generator" } })), { code: "PROTOCOL_UNEXPECTED_REPLY" });
  });
});

describe("workers that misbehave", () => {
  test("a worker that crashes at start: WorkerDiedError with exit code 3 and the stderr tail", async () => {
    const started = Date.now();
    const error = await expectReject(
      WorkerPool.start(perRole, options((spec) => (spec.name === "teacher" ? [path.join(fixtures, "crash_worker.py")] : fake))),
      WorkerDiedError,
    );
    assert.equal(error.worker, "teacher");
    assert.equal(error.workerExitCode, 3);
    assert.equal(error.signal, null);
    assert.equal(error.exitCode, 1);
    assert.equal(error.stderrTail.length, 40);
    assert.equal(error.stderrTail.at(-1), "RuntimeError: cannot start: injected start-up failure");
    assert.match(error.message, /^worker "teacher" exited with code 3; last stderr line: RuntimeError: cannot start/);
    assert.match(error.hint ?? "", /teacher\.log/);
    assert.ok(Date.now() - started < 5000);
    assert.equal(liveWorkers().length, 0, "the other worker was stopped too");
  });

  test("a worker that crashes during an op: the pending request and pool.failure reject", async () => {
    const pool = await WorkerPool.start(perRole, options(fake));
    const pid = pool.pids().fake_score!;
    try {
      const pending = pool.clientFor("fake_score").op("fake_score", "crash", 1, { code: 3, lines: 5 }, [], []);
      const [error, failure] = await Promise.all([expectReject(pending, WorkerDiedError), expectReject(pool.failure, WorkerDiedError)]);
      assert.equal(failure, error);
      assert.equal(error.worker, "fake_score");
      assert.deepEqual(error.roles, ["fake_score", "discriminator"]);
      assert.equal(error.workerExitCode, 3);
      assert.deepEqual(error.stderrTail.slice(-2), ["fake worker fake_score: stderr line 4", "RuntimeError: fake crash"]);
      assert.ok(!isAlive(pid));
      // Later requests fail at once with the same error.
      assert.equal(await expectReject(pool.clientFor("discriminator").setup("discriminator", null), WorkerDiedError), error);
      // The other worker still answers.
      await pool.clientFor("teacher").setup("teacher", null);
    } finally {
      const report = await pool.shutdownAll({ graceMs: 1000 });
      assert.deepEqual(report.find((r) => r.worker === "fake_score")!.exit, { code: 3, signal: null });
      assert.equal(report.find((r) => r.worker === "teacher")!.replied, true);
    }
    assert.equal(liveWorkers().length, 0);
  });

  test("a worker that never sends a heartbeat: WorkerTimeoutError at start, and it is stopped", async () => {
    const started = Date.now();
    const error = await expectReject(
      WorkerPool.start(perRole.slice(0, 1), options([path.join(fixtures, "hang_worker.py")], { firstHeartbeatTimeoutS: 0.5 })),
      WorkerTimeoutError,
    );
    assert.equal(error.kind, "heartbeat");
    assert.equal(error.worker, "teacher");
    assert.match(error.message, /sent no heartbeat within 0\.5 s of starting/);
    assert.ok(Date.now() - started < 5000);
    assert.equal(liveWorkers().length, 0);
  });

  test("a worker whose heartbeats stop mid-op: WorkerTimeoutError for the request and pool.failure", async () => {
    const pool = await WorkerPool.start(perRole, options(fake, { heartbeatTimeoutS: 0.5 }));
    const pid = pool.pids().teacher!;
    try {
      const started = Date.now();
      const pending = pool.clientFor("teacher").op("teacher", "hang", 1, {}, [], []);
      const [error, failure] = await Promise.all([expectReject(pending, WorkerTimeoutError), expectReject(pool.race(new Promise(() => {})), WorkerTimeoutError)]);
      assert.equal(failure, error);
      assert.equal(error.kind, "heartbeat");
      assert.match(error.message, /^worker "teacher" sent no heartbeat for 0\.5 s/);
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 400 && elapsed < 3000, `timed out after ${elapsed} ms`);
    } finally {
      const report = await pool.shutdownAll({ graceMs: 1000 });
      const teacher = report.find((r) => r.worker === "teacher")!;
      assert.equal(teacher.replied, false);
      assert.equal(teacher.exit?.signal, "SIGTERM");
    }
    assert.ok(!isAlive(pid));
  });

  test("a worker that ignores SIGTERM is SIGKILLed after the grace period", async () => {
    const pool = await WorkerPool.start(perRole.slice(0, 1), options(fake, { env: { FAKE_IGNORE_SIGTERM: "1" } }));
    const pid = pool.pids().teacher!;
    void pool.clientFor("teacher").op("teacher", "sleep", 1, { seconds: 30 }, [], []).catch(() => {});
    const started = Date.now();
    const [report] = await pool.shutdownAll({ graceMs: 300, shutdownTimeoutMs: 200 });
    assert.equal(report!.replied, false);
    assert.equal(report!.forced, true);
    assert.deepEqual(report!.exit, { code: null, signal: "SIGKILL" });
    assert.ok(Date.now() - started < 3000);
    assert.ok(!isAlive(pid));
  });

  test("an interpreter that does not exist: WorkerDiedError saying it could not be started", async () => {
    const error = await expectReject(WorkerPool.start(perRole, options(fake, { python: path.join(tmp, "no-python") })), WorkerDiedError);
    assert.match(error.message, /could not be started/);
    assert.equal(liveWorkers().length, 0);
  });

  test("spawnWorker: stop() on a live process, and the stderr ring buffer keeps 40 lines", async () => {
    const proc = await spawnWorker({
      python,
      name: "crash",
      roles: ["teacher"],
      requestEndpoint: "ipc:///nonexistent/req",
      heartbeatEndpoint: "ipc:///nonexistent/hb",
      entry: [path.join(fixtures, "crash_worker.py")],
    });
    const exit = await proc.exited;
    assert.deepEqual(exit, { code: 3, signal: null });
    assert.equal(proc.stderrTail().length, 40);
    assert.equal(proc.stderrTail()[0], "crash_worker: noise line 13");
    assert.deepEqual(await proc.stop(), exit);
  });

  test("process exit kills workers left running (the 'exit' handler)", async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [path.join(fixtures, "exit_parent.mjs"), python, "exit"], { timeout: 10_000 });
    const pid = Number(stdout.trim());
    assert.ok(pid > 0);
    for (let i = 0; i < 50 && isAlive(pid); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(!isAlive(pid), `worker ${pid} was killed when its parent exited`);
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`a ${signal} nobody handles kills the workers too, and the parent still dies of it`, async () => {
      const parent = spawn(process.execPath, [path.join(fixtures, "exit_parent.mjs"), python, "signal"], { stdio: ["ignore", "pipe", "inherit"] });
      const [line] = (await once(parent.stdout!, "data")) as [Buffer];
      const pid = Number(line.toString().trim());
      assert.ok(pid > 0);
      // The worker has its own process group: a terminal's Ctrl-C reaches only the coordinator.
      if (processGroup(pid) !== null) assert.notEqual(processGroup(pid), processGroup(parent.pid!));
      parent.kill(signal);
      const [code, sig] = (await once(parent, "exit")) as [number | null, string | null];
      assert.deepEqual([code, sig], [null, signal]);
      for (let i = 0; i < 50 && isAlive(pid); i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok(!isAlive(pid), `worker ${pid} was killed when its parent got ${signal}`);
    });
  }
});
