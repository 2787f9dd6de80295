// dmd2 doctor: passes on this machine, names the problem and the fix for a missing or broken interpreter, and
// turns a fake interpreter's answers (old versions, another protocol) into problem lines.
import assert from "node:assert/strict";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { checkNode } from "../src/doctor/checks.js";
import { runDoctor, type DoctorReport } from "../src/doctor/doctor.js";
import { formatDoctor } from "../src/doctor/format.js";
import { PYTHON_MIN, PYTHON_PACKAGES, versionAtLeast } from "../src/doctor/requirements.js";
import { PROTOCOL_VERSION } from "../src/protocol/messages.js";
import { cliEntry, projectRoot, scratchDir } from "./helpers.js";

const tmp = scratchDir("dmd2-doctor-");

async function cli(args: string[]) {
  const r = await execa("node", [cliEntry, ...args], { cwd: projectRoot, reject: false, env: { NO_COLOR: "1" }, timeout: 120_000 });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}
const check = (report: DoctorReport, id: string) => {
  const c = report.checks.find((x) => x.id === id);
  assert.ok(c, `a check named ${id}`);
  return c;
};

test("doctor on this machine: exit 0, torch ok, every check reported", async () => {
  const r = await cli(["doctor", "--json"]);
  const report = JSON.parse(r.stdout) as DoctorReport;
  assert.equal(r.exitCode, 0, formatDoctor(report));
  assert.equal(report.ok, true);
  assert.deepEqual(
    report.checks.map((c) => c.id),
    ["node", "zeromq", "python", "python-version", "torch", "cuda", "pyzmq", "numpy", "safetensors", "pillow", "diffusers", "transformers", "peft", "scikit-learn", "dmd2_worker", "disk", "ipc"],
  );
  const torch = check(report, "torch");
  assert.equal(torch.status, "ok");
  // this machine's .venv has torch 2.13 (scripts/setup-python.sh); a GPU box may bring any torch >= 2.4
  assert.ok(versionAtLeast(torch.detail, "2.4"), torch.detail);
  assert.match(formatDoctor(report), new RegExp(`^  ok +torch +${torch.detail.replace(/[.+]/g, "\\$&")}$`, "m"));
  assert.equal(check(report, "cuda").status, "info");
  assert.match(check(report, "dmd2_worker").detail, new RegExp(`protocol version ${PROTOCOL_VERSION}`));
  assert.ok(["ok", "warning"].includes(check(report, "disk").status));
});

test("doctor --python /nonexistent: exit 1, a problem line with the fix, Python checks skipped", async () => {
  const r = await cli(["doctor", "--python", "/nonexistent"]);
  assert.equal(r.exitCode, 1, r.stdout + r.stderr);
  const lines = r.stdout.split("\n");
  const i = lines.findIndex((l) => /^\s+problem\s+python\s+--python \/nonexistent: not an executable file$/.test(l));
  assert.ok(i >= 0, r.stdout);
  assert.match(lines[i + 1]!, /^\s+fix: give the path of a Python 3\.10\+ interpreter/);
  assert.match(r.stdout, /skipped +python-version, torch, .*dmd2_worker: needs a Python interpreter/);
  assert.match(r.stdout, /^1 problem$/m);
});

test("doctor: a fake interpreter's old versions and another protocol version are problems with fixes", async () => {
  const fake = path.join(tmp, "old-python");
  const probe = {
    python: { version: "3.8.10", executable: fake },
    modules: {
      torch: { ok: true, version: "2.1.0+cu118" },
      zmq: { ok: true, version: "26.0.0" },
      numpy: { ok: false, error: "ModuleNotFoundError: No module named 'numpy'" },
      safetensors: { ok: true, version: "0.4.3" },
      PIL: { ok: true, version: "10.0.0" },
    },
    worker: { ok: true, version: "0.0.9", protocol: PROTOCOL_VERSION + 1, file: "/elsewhere/dmd2_worker/__init__.py" },
    cuda: { available: true, version: "11.8", devices: [{ name: "Fake GPU", memory: 8 * 1024 ** 3 }], mps: false },
  };
  writeFileSync(fake, `#!/bin/sh\necho 'import noise'\necho 'DMD2_DOCTOR_JSON ${JSON.stringify(probe)}'\n`);
  chmodSync(fake, 0o755);
  const report = await runDoctor({ python: fake, cwd: tmp });
  assert.equal(report.ok, false);
  const status = Object.fromEntries(report.checks.map((c) => [c.id, c.status]));
  assert.deepEqual(
    { ...status, disk: undefined },
    { node: "ok", zeromq: "ok", python: "ok", "python-version": "problem", torch: "problem", cuda: "info", pyzmq: "ok", numpy: "problem", safetensors: "ok", pillow: "ok", dmd2_worker: "problem", disk: undefined, ipc: "ok" },
  );
  assert.equal(report.problems, 4);
  assert.match(check(report, "python-version").detail, /3\.8\.10 is too old \(needs 3\.10 or newer\)/);
  assert.equal(check(report, "torch").fix, `${fake} -m pip install "torch>=2.4"`);
  assert.match(check(report, "cuda").detail, /CUDA 11\.8, 1 device: cuda:0 Fake GPU \(8 GiB\)/);
  assert.match(check(report, "dmd2_worker").detail, new RegExp(`speaks protocol version ${PROTOCOL_VERSION + 1}, this CLI speaks ${PROTOCOL_VERSION}, from /elsewhere/dmd2_worker`));
  assert.match(check(report, "dmd2_worker").fix!, /pip install -e .*python-worker$/);

  // the right protocol, but the package of another checkout (a worktree with the main checkout's .venv): a warning
  const elsewhere = path.join(tmp, "elsewhere-python");
  const sameProtocol = { ...probe, python: { version: "3.11.7", executable: elsewhere }, worker: { ...probe.worker, protocol: PROTOCOL_VERSION } };
  writeFileSync(elsewhere, `#!/bin/sh\necho 'DMD2_DOCTOR_JSON ${JSON.stringify(sameProtocol)}'\n`);
  chmodSync(elsewhere, 0o755);
  const other = check(await runDoctor({ python: elsewhere, cwd: tmp }), "dmd2_worker");
  assert.equal(other.status, "warning");
  assert.match(other.detail, new RegExp(`from /elsewhere/dmd2_worker, not from this checkout's ${projectRoot}/python-worker/dmd2_worker: workers run that copy's Python code`));
  assert.match(other.fix!, /pip install -e .*python-worker\) or put it first on PYTHONPATH$/);

  // an interpreter that is no Python at all
  const broken = await runDoctor({ python: "/bin/false", cwd: tmp });
  assert.equal(check(broken, "python-version").status, "problem");
  assert.match(check(broken, "python-version").detail, /could not run a probe script: exit code 1/);
  assert.equal(check(broken, "torch").status, "skipped");
});

test("doctor: the requirements match python-worker/pyproject.toml; versions compare numerically", () => {
  const toml = readFileSync(path.join(projectRoot, "python-worker", "pyproject.toml"), "utf8");
  assert.equal(/requires-python = ">=([\d.]+)"/.exec(toml)?.[1], PYTHON_MIN);
  const deps = Object.fromEntries([...toml.matchAll(/^\s*"([A-Za-z0-9_-]+)>=([\d.]+)",?$/gm)].map((m) => [m[1]!.toLowerCase(), m[2]!]));
  delete deps.setuptools;
  delete deps.pytest;
  assert.deepEqual(deps, Object.fromEntries(PYTHON_PACKAGES.map((p) => [p.name, p.min])));
  assert.ok(versionAtLeast("2.13.0+cpu", "2.4"));
  assert.ok(!versionAtLeast("2.3.1", "2.4"));
  assert.ok(versionAtLeast("3.10", "3.10.0"));
  assert.ok(versionAtLeast("2.5.0a0+git1234", "2.4"));
  assert.equal(checkNode("18.19.0").status, "problem");
  assert.equal(checkNode("20.0.0").status, "ok");
});
