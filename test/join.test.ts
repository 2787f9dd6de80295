// Several hosts (issue 6 §4): workers started with `dmd2 worker --join` on "other hosts" (here: other processes on
// 127.0.0.1, their own working folders) complete a run; a joiner without the run's key is refused; the misfits
// are one line each.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa, type ResultPromise } from "execa";
import { curveKeyPair } from "zeromq";
import { cliEntry, projectRoot, scratchDir } from "./helpers.js";

const tmp = scratchDir("dmd2-join-");
const cache = path.join(os.tmpdir(), "dmd2-test-cache");
const tiny = path.join(projectRoot, "recipes", "tiny.yaml");
const env = { DMD2_CACHE: cache, NO_COLOR: "1" };

/** Starts `dmd2 distill --json` and resolves with its join event once it is printed. */
function startCoordinator(name: string, sets: string[]): { proc: ResultPromise; join: Promise<{ address: string; key_file: string; workers: string[] }> } {
  const args = ["distill", tiny, "--json", "--set", `run_dir=${path.join(tmp, name)}`, "--set", "train.steps=8", "--set", "transport=tcp", ...sets.flatMap((s) => ["--set", s])];
  const proc = execa("node", [cliEntry, ...args], { cwd: tmp, reject: false, env, timeout: 180_000 });
  const join = new Promise<{ address: string; key_file: string; workers: string[] }>((resolve, reject) => {
    let buf = "";
    proc.stdout!.on("data", (chunk: Buffer) => {
      buf += chunk.toString();
      for (const line of buf.split("\n")) {
        if (!line.startsWith("{")) continue;
        const e = JSON.parse(line) as { event: string };
        if (e.event === "join") resolve(e as never);
      }
    });
    void proc.then((r) => reject(new Error(`coordinator ended before its join event:\n${r.stderr}`)));
  });
  return { proc, join };
}

function joiner(address: string, key: string, extra: string[] = []) {
  const host = path.join(tmp, `host-${Math.random().toString(36).slice(2, 8)}`); // its own working folder
  mkdirSync(host);
  return execa("node", [cliEntry, "worker", "--join", address, ...extra], { cwd: host, reject: false, env: { ...env, DMD2_JOIN_KEY: key }, timeout: 180_000 });
}

test("two hosts joining with dmd2 worker --join run the teacher and the fake score of a run that completes", async () => {
  const { proc, join } = startCoordinator("two-hosts", ["roles.teacher.join=true", "roles.fake_score.join=true", "join.timeout_s=60"]);
  const info = await join;
  assert.deepEqual(info.workers.sort(), ["fake_score", "teacher"]);
  assert.match(info.address, /^tcp:\/\/127\.0\.0\.1:\d+$/);
  const key = readFileSync(info.key_file, "utf8").trim();
  const hosts = [joiner(info.address, key), joiner(info.address, key)];
  const done = await proc;
  const r = { exitCode: done.exitCode, stdout: String(done.stdout), stderr: String(done.stderr) };
  assert.equal(r.exitCode, 0, r.stderr);
  const events = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
  const joined = events.filter((e) => e.event === "info" && /joined from/.test(String(e.message))).map((e) => String(e.message));
  assert.equal(joined.length, 2, joined.join("\n"));
  const steps = readFileSync(path.join(tmp, "two-hosts", "metrics.jsonl"), "utf8").trim().split("\n");
  assert.equal(steps.length, 8);
  for (const h of await Promise.all(hosts)) {
    assert.equal(h.exitCode, 0, h.stderr);
    assert.match(h.stderr + h.stdout, /joined as worker "(teacher|fake_score)"/);
    assert.match(h.stderr + h.stdout, /finished \(the run shut it down\)/);
  }
});

test("a joiner with a wrong key gets no answer and is refused; the coordinator times out naming the worker", async () => {
  const { proc, join } = startCoordinator("wrong-key", ["roles.teacher.join=true", "join.timeout_s=8"]);
  const info = await join;
  const h = await joiner(info.address, curveKeyPair().publicKey, ["--timeout", "3"]);
  assert.equal(h.exitCode, 1, h.stderr);
  assert.match(h.stderr, new RegExp(`no answer from ${info.address.replace(/\./g, "\\.")} within 3 s: the key is wrong, or no run is waiting for workers there`));
  const done = await proc;
  const r = { exitCode: done.exitCode, stdout: String(done.stdout), stderr: String(done.stderr) };
  assert.equal(r.exitCode, 1, r.stderr);
  const errors = r.stderr.split("\n").filter((l) => l.startsWith("error"));
  assert.deepEqual(errors, ['error: no worker joined as "teacher" (roles teacher) within 8 s (join.timeout_s)']);
  assert.match(r.stderr, /dmd2 worker --join tcp:\/\/127\.0\.0\.1:\d+ --worker teacher/);
  assert.equal(existsSync(path.join(tmp, "wrong-key", "metrics.jsonl")), false, "no step ran");
});

test("join misfits are one line: ipc transport, a malformed address, no key", async () => {
  const ipc = await execa("node", [cliEntry, "distill", tiny, "--set", `run_dir=${path.join(tmp, "ipc")}`, "--set", "roles.generator.join=true"], { cwd: tmp, reject: false, env });
  assert.equal(ipc.exitCode, 2);
  assert.match(ipc.stderr, /roles\.generator\.join: workers on other hosts need transport: tcp \(authenticated with CURVE\), got ipc/);
  const bad = await execa("node", [cliEntry, "worker", "--join", "10.0.0.5:80"], { cwd: tmp, reject: false, env: { ...env, DMD2_JOIN_KEY: curveKeyPair().publicKey } });
  assert.equal(bad.exitCode, 2);
  assert.match(bad.stderr, /--join 10\.0\.0\.5:80: expected tcp:\/\/HOST:PORT/);
  const nokey = await execa("node", [cliEntry, "worker", "--join", "tcp://127.0.0.1:9"], { cwd: tmp, reject: false, env: { NO_COLOR: "1", DMD2_JOIN_KEY: "" } });
  assert.equal(nokey.exitCode, 2);
  assert.match(nokey.stderr, /no key: set DMD2_JOIN_KEY/);
});
