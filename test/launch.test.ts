// The launch examples (examples/slurm/dmd2.sbatch): the script passes `bash -n`, and the joins it makes run on
// 127.0.0.1 (DMD2_LOCAL=1: every "node" is this host, as test/join.test.ts does): the coordinator plus one
// `dmd2 worker --join` per joined role, the key passed through <run_dir>/join.key, complete a run.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { freePort } from "../src/workers/endpoints.js";
import { cliEntry, projectRoot, scratchDir } from "./helpers.js";

const script = path.join(projectRoot, "examples", "slurm", "dmd2.sbatch");

test("examples/slurm/dmd2.sbatch passes bash -n and its joins complete a run on 127.0.0.1", { timeout: 300_000 }, async () => {
  assert.equal((await execa("bash", ["-n", script], { reject: false })).exitCode, 0);
  const dir = scratchDir("dmd2-launch-");
  const runDir = path.join(dir, "run");
  const r = await execa("bash", [script], {
    cwd: dir,
    reject: false,
    timeout: 240_000,
    env: {
      DMD2_LOCAL: "1", DMD2: `node ${cliEntry}`, RECIPE: path.join(projectRoot, "recipes", "tiny.yaml"), RUN_DIR: runDir,
      JOINED: "teacher fake_score", JOIN_PORT: String(await freePort()), EXTRA_SETS: "--set train.steps=8 --set join.timeout_s=60",
      DMD2_CACHE: path.join(os.tmpdir(), "dmd2-test-cache"), NO_COLOR: "1",
    },
  });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").trim().split("\n").length, 8);
  const out = r.stdout + r.stderr;
  assert.equal((out.match(/joined as worker "(teacher|fake_score)"/g) ?? []).length, 2, out);
  // the script hands the key over as a file on the shared run folder, never on a command line
  const text = readFileSync(script, "utf8");
  assert.match(text, /worker --join "tcp:\/\/\$HEAD:\$JOIN_PORT" --key-file "\$key"/);
  assert.doesNotMatch(text.split("\n").filter((l) => !l.startsWith("#")).join("\n"), /DMD2_JOIN_KEY/);
});
