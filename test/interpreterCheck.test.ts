// `dmd2 plan` and `dmd2 doctor` ask the interpreter the job will use (doctor/probeCache.ts, one cached probe):
// a cuda recipe on a CPU-only torch is a plan problem (distill's own placement check), the feature packages are
// checked against the worker's ranges, and the probe is answered from its cache until the environment changes.
import assert from "node:assert/strict";
import { chmodSync, readFileSync, utimesSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { interpreterProblems } from "../src/doctor/interpreterProblems.js";
import type { ProbeResult } from "../src/doctor/probe.js";
import { cachedProbe } from "../src/doctor/probeCache.js";
import { FEATURE_PACKAGES, rangeText } from "../src/doctor/requirements.js";
import { PROTOCOL_VERSION } from "../src/protocol/messages.js";
import { loadRecipe } from "../src/recipe/load.js";
import { cliEntry, projectPython, projectRoot, scratchDir } from "./helpers.js";

const tmp = scratchDir("dmd2-interp-");
const tiny = path.join(projectRoot, "recipes", "tiny.yaml");

test("plan: a cuda recipe on a torch without CUDA lists the placement problem with its fix", async () => {
  const cuda = (await execa(projectPython, ["-c", "import torch; print(torch.cuda.device_count())"])).stdout.trim();
  // on a GPU box ask for a device it surely lacks
  const device = cuda === "0" ? "cuda" : "cuda:63";
  const r = await execa("node", [cliEntry, "plan", tiny, "--json", "--set", `device=${device}`], { cwd: tmp, reject: false, env: { NO_COLOR: "1", DMD2_CACHE: tmp } });
  assert.equal(r.exitCode, 0, r.stderr);
  const plan = JSON.parse(r.stdout) as { problems: { subject: string; message: string; fix?: string }[] };
  const p = plan.problems.find((x) => x.subject === "roles.teacher.device");
  assert.ok(p, r.stdout);
  assert.match(p.message, new RegExp(`^${device} is not available to worker "teacher" on \\S+ \\(`));
  assert.ok(p.fix !== undefined && p.fix.length > 0);
  const text = await execa("node", [cliEntry, "plan", tiny, "--set", `device=${device}`], { cwd: tmp, reject: false, env: { NO_COLOR: "1", DMD2_CACHE: tmp } });
  assert.doesNotMatch(text.stdout, /Problems +none/);
  assert.match(text.stdout, /problem roles\.teacher\.device: /);
  // the same recipe on the CPU: no problem
  const cpu = JSON.parse((await execa("node", [cliEntry, "plan", tiny, "--json"], { cwd: tmp, env: { DMD2_CACHE: tmp } })).stdout) as { problems: unknown[] };
  assert.deepEqual(cpu.problems, []);
});

function fakeProbe(dists: Record<string, string | null>): ProbeResult {
  return {
    python: { version: "3.11.7", executable: "/fake/python" },
    modules: { torch: { ok: true, version: "2.5.1+cu121" } },
    worker: { ok: true, version: "0.1.0", protocol: PROTOCOL_VERSION, file: "/fake/dmd2_worker/__init__.py" },
    cuda: { available: true, version: "12.1", devices: [{ name: "GPU", memory: 1 }], mps: false },
    hostname: "gpu1",
    cuda_visible_devices: "3",
    devices: ["cpu", "cuda:0"],
    dists,
  };
}

test("plan problems: the packages a recipe needs, against the worker's ranges; devices the probe lists", () => {
  const base = loadRecipe(tiny);
  const lora = { ...base, data: { ...base.data, source: "digits" as const }, generator: { ...base.generator, lora: { rank: 4, alpha: 4, target_modules: null } } };
  const problems = interpreterProblems(lora, "/fake/python", { ok: true, result: fakeProbe({ diffusers: "0.42.1", transformers: "4.57.6", peft: "1.0.0", "scikit-learn": null }) });
  const peft = FEATURE_PACKAGES.find((p) => p.name === "peft")!;
  assert.deepEqual(problems, [
    { subject: "python", message: `peft 1.0.0 in /fake/python is outside the worker's range ${rangeText(peft)}`, fix: `/fake/python -m pip install "peft${rangeText(peft)}"` },
    { subject: "python", message: "scikit-learn is not installed in /fake/python; the digits data (data.source: digits) need it", fix: '/fake/python -m pip install "scikit-learn>=1.3"' },
  ]); // transformers 4.57.6 is out of range too, but this recipe does not use it
  // cuda:0 is there; cuda:1 is not (CUDA_VISIBLE_DEVICES=3 leaves one device), named with the variable
  const onGpu = { ...base, roles: { ...base.roles, generator: { ...base.roles.generator, device: ["cuda:1"] } } };
  const [dev] = interpreterProblems(onGpu, "/fake/python", { ok: true, result: fakeProbe({}) });
  assert.equal(dev!.subject, "roles.generator.device");
  assert.equal(dev!.message, 'cuda:1 is not available to worker "generator" on gpu1 (it has cpu, cuda:0) (CUDA_VISIBLE_DEVICES=3)');
  assert.equal(dev!.fix, "use one of cuda:0");
  const onCuda0 = { ...base, roles: { ...base.roles, generator: { ...base.roles.generator, device: ["cuda:0"] } } };
  assert.deepEqual(interpreterProblems(onCuda0, "/fake/python", { ok: true, result: fakeProbe({}) }), []);
});

test("probe cache: a second probe is answered from the cache; a changed environment probes again", async () => {
  const counter = path.join(tmp, "calls");
  const site = scratchDir("dmd2-fake-site-");
  const fake = path.join(tmp, "counting-python");
  const result = { ...fakeProbe({}), stamp_paths: [site] };
  writeFileSync(fake, `#!/bin/sh\necho x >> ${counter}\necho 'DMD2_DOCTOR_JSON ${JSON.stringify(result)}'\n`);
  chmodSync(fake, 0o755);
  writeFileSync(counter, "");
  const env = { ...process.env, DMD2_CACHE: path.join(tmp, "cache") };
  const calls = () => readFileSync(counter, "utf8").split("\n").filter(Boolean).length;
  const first = await cachedProbe(fake, { env });
  assert.equal(first.ok && first.result.hostname, "gpu1");
  await cachedProbe(fake, { env });
  assert.equal(calls(), 1);
  utimesSync(site, new Date(), new Date(Date.now() + 5000)); // e.g. pip installed a package there
  await cachedProbe(fake, { env });
  assert.equal(calls(), 2);
  await cachedProbe(fake, { env: { ...env, CUDA_VISIBLE_DEVICES: "1" } }); // another key
  assert.equal(calls(), 3);
});

test("the feature packages' ranges match python-worker/pyproject.toml", () => {
  const toml = readFileSync(path.join(projectRoot, "python-worker", "pyproject.toml"), "utf8");
  for (const pkg of FEATURE_PACKAGES) {
    const m = new RegExp(`^\\s*"${pkg.name}([^"]*)",`, "m").exec(toml);
    assert.equal(m?.[1], rangeText(pkg), pkg.name);
  }
});
