// W&B (logging.wandb, src/run/wandb.ts + dmd2_worker/wandb_log.py): in mode offline, without a network, a distill
// run leaves <run_dir>/wandb/offline-run-*/run-*.wandb holding every step's scalars (the TensorBoard tags), the
// grids and the resolved recipe as the run's config; wandb not installed is one warning line and the run goes on;
// dmd2 plan lists it as a problem.
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { interpreterProblems } from "../src/doctor/interpreterProblems.js";
import { PROTOCOL_VERSION } from "../src/protocol/messages.js";
import { loadRecipe } from "../src/recipe/load.js";
import { cliEntry, projectPython, projectRoot, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-wandb-");
const tiny = path.join(projectRoot, "recipes", "tiny.yaml");
const env = { DMD2_CACHE: path.join(os.tmpdir(), "dmd2-test-cache"), NO_COLOR: "1", WANDB_MODE: "offline", WANDB_SILENT: "true" };
const args = (name: string) => ["distill", tiny, "--set", `run_dir=${path.join(work, name)}`, "--set", "train.steps=6", "--set", "train.sample_every=3",
  "--set", "logging.wandb.project=dmd2-test", "--set", "logging.wandb.mode=offline"];

// the .wandb file: a leveldb-style log (32 KiB blocks of records: crc32 u32, length u16, type u8) of protobuf Records
const READER = `
import glob, json, struct, sys
from wandb.proto import wandb_internal_pb2 as pb
data = open(glob.glob(sys.argv[1] + "/wandb/offline-run-*/run-*.wandb")[0], "rb").read()
BLOCK, pos, buf, out = 32768, 7, b"", {"history": [], "config": {}}
while pos + 7 <= len(data):
    room = BLOCK - pos % BLOCK
    if room < 7:
        pos += room; continue
    _, n, kind = struct.unpack("<IHB", data[pos:pos + 7]); pos += 7
    if kind == 0 and n == 0:
        pos += room - 7; continue
    buf += data[pos:pos + n]; pos += n
    if kind in (1, 4):
        r = pb.Record(); r.ParseFromString(buf); buf = b""
        t = r.WhichOneof("record_type")
        if t == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): i.value_json for i in r.history.item})
        if t in ("run", "config"):
            items = r.run.config.update if t == "run" else r.config.update
            out["config"].update({i.key: json.loads(i.value_json) for i in items if i.key})
print(json.dumps(out))
`;

test("logging.wandb in mode offline: the run's W&B folder holds every step's scalars, the grids and the recipe", { timeout: 300_000 }, async () => {
  const r = await execa("node", [cliEntry, ...args("offline")], { cwd: work, env, reject: false, timeout: 240_000 });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /W&B|wandb/);
  const runDir = path.join(work, "offline");
  assert.equal(readdirSync(path.join(runDir, "wandb")).filter((d) => d.startsWith("offline-run-")).length, 1);
  const got = JSON.parse((await execa(projectPython, ["-c", READER, runDir])).stdout) as { history: Record<string, string>[]; config: Record<string, unknown> };
  const rows = readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
  const byStep = new Map<number, Record<string, string>>();
  for (const h of got.history) byStep.set(Number(h._step), { ...byStep.get(Number(h._step)), ...h });
  for (const row of rows) {
    const h = byStep.get(row.step as number);
    assert.ok(h, `step ${row.step as number} in W&B`);
    assert.equal(Number(h["loss/loss_fake"]), row.loss_fake);
  }
  assert.equal(Number(byStep.get(1)!["loss/loss_dmd"]), rows[0]!.loss_dmd);
  // images are history items with nested keys (samples/grid/_type, .../path), their files under files/media/
  assert.equal(JSON.parse(byStep.get(3)!["samples/grid/_type"]!), "image-file", "the step-3 grid");
  assert.equal(JSON.parse(byStep.get(6)!["samples/final/_type"]!), "image-file", "the final grid");
  // the config is the resolved recipe
  const resolved = JSON.parse(readFileSync(path.join(runDir, "recipe.resolved.json"), "utf8")) as Record<string, unknown>;
  for (const key of Object.keys(resolved)) assert.deepEqual(got.config[key], resolved[key], key);
});

test("wandb not installed: one warning line, the run finishes; plan lists it", { timeout: 300_000 }, async () => {
  const hide = path.join(work, "no-wandb");
  mkdirSync(path.join(hide, "wandb"), { recursive: true });
  writeFileSync(path.join(hide, "wandb", "__init__.py"), 'raise ImportError("No module named \'wandb\'")\n');
  const r = await execa("node", [cliEntry, ...args("missing")], { cwd: work, env: { ...env, PYTHONPATH: `${hide}:${process.env.PYTHONPATH ?? ""}` }, reject: false, timeout: 240_000 });
  assert.equal(r.exitCode, 0, r.stderr);
  const lines = r.stderr.split("\n").filter((l) => /wandb/i.test(l));
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, /warning: logging\.wandb: wandb is not installed in \S+ \(.*\): \S+ -m pip install wandb, or remove logging\.wandb\.project from the recipe$/);

  const recipe = loadRecipe(tiny, { overrides: ["logging.wandb.project=p"] });
  const probe = {
    python: { version: "3.11.7", executable: "/fake/python" }, modules: { torch: { ok: true, version: "2.5.1" } },
    worker: { ok: true, version: "0.1.0", protocol: PROTOCOL_VERSION }, cuda: null, devices: ["cpu"], dists: { wandb: null },
  };
  assert.deepEqual(interpreterProblems(recipe, "/fake/python", { ok: true, result: probe }), [
    { subject: "logging.wandb", message: "wandb is not installed in /fake/python; the run would log to TensorBoard only", fix: "/fake/python -m pip install wandb, or remove logging.wandb.project" },
  ]);
  assert.deepEqual(interpreterProblems(loadRecipe(tiny), "/fake/python", { ok: true, result: probe }), []);
});
