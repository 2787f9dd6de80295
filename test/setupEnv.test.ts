// scripts/setup-python.sh into a user's own environment (DMD2_PYTHON): packages already inside the worker's
// ranges stay exactly as they are. The environment is made honestly: a fresh venv that sees the project's .venv
// (torch, diffusers, ...) through a .pth file, with REAL newer releases of transformers and peft than
// python-worker/constraints.txt pins installed into it from PyPI (or pip's cache). Skipped, saying so, when pip
// can get neither.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { cliEntry, projectPython, projectRoot, scratchDir } from "./helpers.js";

// newer than the pins (transformers==5.23.0, peft==0.21.2) and inside the ranges (<6, <1)
const NEWER = { transformers: "5.25.0", peft: "0.22.0" };

const pinned = (name: string) => new RegExp(`^${name}==(\\S+)$`, "m").exec(readFileSync(path.join(projectRoot, "python-worker", "constraints.txt"), "utf8"))?.[1];

async function versions(python: string): Promise<Record<string, string>> {
  const r = await execa(python, ["-c", "import json, transformers, peft, torch; print(json.dumps({'transformers': transformers.__version__, 'peft': peft.__version__, 'torch': torch.__version__}))"]);
  return JSON.parse(r.stdout) as Record<string, string>;
}

test("setup-python.sh with DMD2_PYTHON keeps a newer transformers and peft; the worker imports and runs the tiny recipe", { timeout: 600_000 }, async (t) => {
  assert.notEqual(pinned("transformers"), NEWER.transformers);
  assert.notEqual(pinned("peft"), NEWER.peft);
  const dir = scratchDir("dmd2-userenv-");
  const env = path.join(dir, "env");
  const base = (await execa(projectPython, ["-c", "import sys; print(sys._base_executable)"])).stdout.trim();
  await execa(base, ["-m", "venv", env]);
  const py = path.join(env, "bin", "python");
  const purelib = (p: string) => execa(p, ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).then((r) => r.stdout.trim());
  // after the env's own site-packages: what the env installs itself comes first
  writeFileSync(path.join(await purelib(py), "dmd2-project-venv.pth"), `${await purelib(projectPython)}\n`);
  const wheels = path.join(os.tmpdir(), "dmd2-test-wheels");
  const got = await execa(py, ["-m", "pip", "download", "-q", "--no-deps", "-d", wheels, `transformers==${NEWER.transformers}`, `peft==${NEWER.peft}`], { reject: false });
  if (got.exitCode !== 0) {
    t.skip(`pip could not get transformers ${NEWER.transformers} and peft ${NEWER.peft}: ${got.stderr.trim().split("\n").at(-1)}`);
    return;
  }
  await execa(py, ["-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links", wheels, `transformers==${NEWER.transformers}`, `peft==${NEWER.peft}`]);
  const before = await versions(py);
  assert.equal(before.transformers, NEWER.transformers);
  assert.equal(before.peft, NEWER.peft);

  const setup = await execa("bash", [path.join(projectRoot, "scripts", "setup-python.sh")], { env: { DMD2_PYTHON: py }, reject: false });
  assert.equal(setup.exitCode, 0, setup.stderr);
  assert.match(setup.stdout, /already satisfies every range of the worker package; nothing else installed/);
  assert.deepEqual(await versions(py), before);
  // the worker package is installed (editable, this checkout), with no test extras
  const show = await execa(py, ["-c", "import dmd2_worker, dmd2_worker.lora, dmd2_worker.adapters, importlib.util as u; print(dmd2_worker.__file__); print(u.find_spec('pytest') is None or 'pytest from the project venv')"], { env: { PYTHONPATH: "" } });
  assert.equal(show.stdout.split("\n")[0], path.join(projectRoot, "python-worker", "dmd2_worker", "__init__.py"));

  const run = await execa("node", [cliEntry, "distill", path.join(projectRoot, "recipes", "tiny.yaml"), "--json",
    "--set", `run_dir=${path.join(dir, "run")}`, "--set", "train.steps=6", "--set", "train.checkpoint_every=6"], {
    cwd: dir,
    env: { DMD2_PYTHON: py, DMD2_CACHE: path.join(os.tmpdir(), "dmd2-test-cache"), PYTHONPATH: "", NO_COLOR: "1" },
    reject: false,
    timeout: 300_000,
  });
  assert.equal(run.exitCode, 0, run.stderr);
  const metrics = readFileSync(path.join(dir, "run", "metrics.jsonl"), "utf8").trim().split("\n");
  assert.equal(metrics.length, 6);
  assert.deepEqual(await versions(py), before);
});
