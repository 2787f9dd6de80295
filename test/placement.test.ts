// Placement (docs/recipe.md "Placement", issue 6): the recipe keys resolved and checked, the devices checked
// against the workers' hello replies, replicated roles split and joined, and real runs: 2 gloo replicas equal
// one process with the whole batch, and every misfit is one line before any step.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { loadRecipe, overrideResolved } from "../src/recipe/load.js";
import type { HelloReplyBody, TensorFrame } from "../src/protocol/messages.js";
import { checkPlacement } from "../src/run/placementCheck.js";
import { concatRows, expandReplicas, mergeResults, splitRows } from "../src/run/replicas.js";
import { workerLayout } from "../src/recipe/workerLayout.js";
import type { OpResult } from "../src/workers/client.js";
import { cliEntry, issuesOf, maxAbsDiff, projectRoot, readSafetensors, scratchDir } from "./helpers.js";

const tmp = scratchDir("dmd2-placement-");
const tiny = path.join(projectRoot, "recipes", "tiny.yaml");
const load = (sets: string[]) => loadRecipe(tiny, { cwd: tmp, cpuCount: 2, overrides: sets });

test("placement keys: roles follow the top-level device, precision and checkpointing unless they set their own", () => {
  const r = load(["device=cuda:1", "precision=bf16", "gradient_checkpointing=true", "roles.teacher.precision=fp32", "roles.fake_score.device=cpu"]);
  assert.deepEqual(r.roles.teacher, { device: ["cuda:1"], precision: "fp32", gradient_checkpointing: false, replicas: 1, backend: "nccl", strategy: "replicate", join: false });
  assert.deepEqual(r.roles.generator, { device: ["cuda:1"], precision: "bf16", gradient_checkpointing: true, replicas: 1, backend: "nccl", strategy: "replicate", join: false });
  assert.deepEqual(r.roles.fake_score, { device: ["cpu"], precision: "bf16", gradient_checkpointing: true, replicas: 1, backend: "gloo", strategy: "replicate", join: false });
  const d = load([]);
  for (const role of ["teacher", "generator", "fake_score"] as const) {
    assert.deepEqual(d.roles[role], { device: ["cpu"], precision: "fp32", gradient_checkpointing: false, replicas: 1, backend: "gloo", strategy: "replicate", join: false });
  }
});

test("replicas: one device per replica; cuda with N replicas is cuda:0..N-1; a list sets the count", () => {
  assert.deepEqual(load(["roles.generator.replicas=2"]).roles.generator.device, ["cpu", "cpu"]);
  const c = load(["device=cuda", "roles.generator.replicas=4"]).roles.generator;
  assert.deepEqual([c.device, c.backend], [["cuda:0", "cuda:1", "cuda:2", "cuda:3"], "nccl"]);
  const l = load(["roles.fake_score.device=[cuda:2, cuda:3]"]).roles.fake_score;
  assert.deepEqual([l.device, l.replicas], [["cuda:2", "cuda:3"], 2]);
  const g = load(["roles.generator.device=[cuda:0, cuda:0]", "roles.generator.backend=gloo"]).roles.generator;
  assert.deepEqual([g.replicas, g.backend], [2, "gloo"]);
});

test("placement misfits seen in the recipe: one line each, naming the key and the fix", () => {
  const lines = (sets: string[]) => issuesOf(() => load(sets));
  assert.deepEqual(lines(["roles.teacher.device=tpu"]), ['--set: roles.teacher.device: expected cpu, cuda or cuda:N, got string "tpu"']);
  assert.match(lines(["roles.generator.replicas=2", "roles.generator.backend=nccl"])[0]!, /roles\.generator\.backend: nccl needs CUDA devices, but roles\.generator\.device is \[cpu, cpu\] \(use backend: gloo, or auto\)/);
  assert.match(lines(["roles.generator.device=[cuda:0, cuda:0]"])[0]!, /roles\.generator\.device: cuda:0 is given to two replicas, but NCCL needs one GPU per replica/);
  assert.match(lines(["roles.generator.device=[cuda:0, cuda:1, cuda:2]", "roles.generator.replicas=2"])[0]!, /roles\.generator\.device: lists 3 devices but roles\.generator\.replicas is 2/);
  assert.match(lines(["roles.generator.device=[cpu, cuda:1]"])[0]!, /mixes cpu and cuda devices/);
  assert.match(lines(["placement=colocated", "roles.fake_score.replicas=2"])[0]!, /roles\.fake_score\.replicas: is 2, but placement is colocated/);
  assert.match(lines(["train.batch_size=33", "roles.generator.replicas=2"])[0]!, /roles\.generator\.replicas: 2 replicas cannot split train\.batch_size 33 evenly/);
  assert.match(lines(["roles.teacher.gradient_checkpointing=true"])[0]!, /roles\.teacher\.gradient_checkpointing: the teacher is frozen/);
});

test("dmd2 sample --set device moves every role of the resolved recipe", () => {
  const r = overrideResolved(load(["roles.generator.replicas=2"]), ["device=cuda"]);
  assert.deepEqual(r.roles.generator.device, ["cuda:0", "cuda:1"]);
  assert.deepEqual(r.roles.teacher.device, ["cuda"]);
});

const hello = (devices: string[], extra: Partial<HelloReplyBody> = {}): HelloReplyBody =>
  ({ pid: 1, hostname: "box", python: "3.11", torch: "2.13.0+cpu", cuda: devices.length > 1, devices, roles: [], ...extra });

test("checkPlacement: a device the worker lacks is one recipe error naming key, worker, host and what it has", async () => {
  const r = load(["device=cuda:3"]);
  const groups = await expandReplicas(workerLayout("per_role"), r);
  const two = new Map(groups.map((g) => [g.name, hello(["cpu", "cuda:0", "cuda:1"])]));
  assert.deepEqual(issuesOf(() => checkPlacement(r, groups, two, "r.yaml")), [
    'r.yaml: roles.teacher.device: cuda:3 is not available to worker "teacher" on box (it has cpu, cuda:0, cuda:1); use one of cuda:0, cuda:1',
  ]);
  const none = new Map(groups.map((g) => [g.name, hello(["cpu"])]));
  assert.match(issuesOf(() => checkPlacement(r, groups, none))[0]!, /torch 2\.13\.0\+cpu there has no CUDA\); set device: cpu, or point DMD2_PYTHON/);
  const ok = load(["device=cuda"]);
  checkPlacement(ok, await expandReplicas(workerLayout("per_role"), ok), two); // "cuda" is cuda:0: fits
});

test("expandReplicas: a replicated role becomes ranks with torchrun's variables; split and join are exact", async () => {
  const r = load(["roles.generator.replicas=2"]);
  const groups = await expandReplicas(workerLayout("per_role"), r);
  const gen = groups.find((g) => g.name === "generator")!;
  assert.deepEqual(gen.ranks.map((s) => [s.name, s.env?.RANK, s.env?.WORLD_SIZE, s.env?.MASTER_ADDR]), [
    ["generator-r0", "0", "2", "127.0.0.1"],
    ["generator-r1", "1", "2", "127.0.0.1"],
  ]);
  assert.equal(gen.ranks[0]!.env?.MASTER_PORT, gen.ranks[1]!.env?.MASTER_PORT);
  assert.deepEqual(groups.find((g) => g.name === "teacher")!.ranks.map((s) => s.name), ["teacher"]);
  assert.equal((await expandReplicas(workerLayout("per_role"), r, { replicas: false })).every((g) => g.ranks.length === 1), true);

  const data = Buffer.from(Float32Array.from({ length: 4 * 3 }, (_, i) => i).buffer);
  const frame: TensorFrame = { name: "x", dtype: "float32", shape: [4, 3], data };
  const parts = splitRows(frame, 2);
  assert.deepEqual(parts.map((p) => p.shape), [[2, 3], [2, 3]]);
  assert.deepEqual([...new Float32Array(parts[1]!.data.buffer, parts[1]!.data.byteOffset, 6)], [6, 7, 8, 9, 10, 11]);
  assert.ok(concatRows(parts).data.equals(data));
  assert.throws(() => splitRows({ ...frame, shape: [3, 4] }, 2), /does not split over 2 replicas/);

  const result = (rank: number, loss: number | null, t: [number, number]): OpResult =>
    ({ metrics: { loss, [`cuda_peak_mb_g-r${rank}`]: 10 + rank }, tensors: [parts[rank]!], reply: { body: { metrics: {}, time: t } } }) as unknown as OpResult;
  const merged = mergeResults([result(0, 1, [5, 7]), result(1, 3, [4, 6])]);
  assert.deepEqual(merged.metrics, { loss: 2, "cuda_peak_mb_g-r0": 10, "cuda_peak_mb_g-r1": 11 });
  assert.deepEqual(merged.reply.body.time, [4, 7]);
  assert.ok(merged.tensors[0]!.data.equals(data));
  assert.equal(mergeResults([result(0, null, [0, 1]), result(1, 3, [0, 1])]).metrics.loss, null);
});

// --- real runs --------------------------------------------------------------------------------------------------

const cache = path.join(os.tmpdir(), "dmd2-test-cache"); // the built-in teacher, shared with the other tests
async function dmd2(args: string[]) {
  const r = await execa("node", [cliEntry, ...args], { cwd: tmp, reject: false, env: { DMD2_CACHE: cache, NO_COLOR: "1" }, timeout: 240_000 });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}
const run = (name: string, extra: string[]) => [
  "distill", tiny, "--set", `run_dir=${path.join(tmp, name)}`, "--set", "train.steps=6", "--set", "train.checkpoint_every=6",
  "--set", "train.batch_size=16", "--set", "sample.num=4", "--set", "optim.warmup_steps=0", ...extra.flatMap((e) => ["--set", e]),
];

test("2 gloo replicas of generator, fake score and teacher, batch 8 each, end with the weights of one process with batch 16", async () => {
  const one = await dmd2(run("one", []));
  assert.equal(one.exitCode, 0, one.stderr);
  const two = await dmd2(run("two", ["roles.generator.replicas=2", "roles.fake_score.replicas=2", "roles.teacher.replicas=2"]));
  assert.equal(two.exitCode, 0, two.stderr);
  assert.match(two.stdout + two.stderr, /generator-r0 pid \d+, generator-r1 pid \d+/);
  const teacher = readSafetensors(path.join(tmp, "two", "teacher", "model.safetensors"));
  for (const role of ["generator", "fake_score", "discriminator"]) {
    const file = (d: string) => path.join(tmp, d, "checkpoints", "step-00000006", `${role}.safetensors`);
    const d = maxAbsDiff(readSafetensors(file("one")), readSafetensors(file("two")));
    assert.ok(d < 1e-5, `${role}: max |1 process - 2 replicas| = ${d}`);
    // and the replicas really trained: the weights moved from the teacher's 100x more than the two runs differ
    if (role !== "discriminator") {
      const moved = maxAbsDiff(readSafetensors(file("two")), teacher);
      assert.ok(moved > 100 * d, `${role} moved ${moved} from the teacher; the runs differ by ${d}`);
    }
  }
});

test("fsdp: 2 replicas with sharded parameters, gradients and optimizer state, saved at step 4 and resumed, end as one process", async () => {
  const fsdp = ["roles.generator.replicas=2", "roles.fake_score.replicas=2", "roles.generator.strategy=fsdp", "roles.fake_score.strategy=fsdp", "train.checkpoint_every=4"];
  const first = await dmd2(run("fsdp", [...fsdp, "train.steps=4"]));
  assert.equal(first.exitCode, 0, first.stderr);
  const resumed = await dmd2(run("fsdp", [...fsdp, "train.steps=8"]));
  assert.equal(resumed.exitCode, 0, resumed.stderr);
  assert.match(resumed.stdout + resumed.stderr, /resuming/);
  const one = await dmd2(run("one-8", ["train.steps=8", "train.checkpoint_every=4"]));
  assert.equal(one.exitCode, 0, one.stderr);
  for (const file of ["generator.safetensors", "fake_score.safetensors", "discriminator.safetensors", "generator.optim.safetensors", "fake_score.optim.safetensors"]) {
    const at = (d: string) => readSafetensors(path.join(tmp, d, "checkpoints", "step-00000008", file));
    const d = maxAbsDiff(at("one-8"), at("fsdp"));
    assert.ok(d < 1e-5, `${file}: max |1 process - fsdp| = ${d}`);
  }
  assert.match(issuesOf(() => load(["roles.generator.strategy=fsdp"]))[0]!, /roles\.generator\.strategy: fsdp shards over the role's replicas, but roles\.generator\.replicas is 1/);
});

test("placement errors are one line and exit 2 before any step: unknown device, a GPU index the worker lacks, nccl on cpu", async () => {
  const cases: Array<[string[], RegExp]> = [
    [["roles.generator.device=tpu:0"], /roles\.generator\.device: expected cpu, cuda or cuda:N, got string "tpu:0"/],
    [["roles.fake_score.device=cuda:7"], /roles\.fake_score\.device: cuda:7 is not available to worker "fake_score" on \S+ \((torch \S+ there has no CUDA|it has [^)]*)\)/],
    [["roles.generator.replicas=2", "roles.generator.backend=nccl"], /roles\.generator\.backend: nccl needs CUDA devices/],
  ];
  for (const [sets, want] of cases) {
    const name = `bad-${sets[0]!.replace(/[^a-z0-9]/gi, "_")}`;
    const r = await dmd2(run(name, sets));
    assert.equal(r.exitCode, 2, `${sets.join(" ")}: ${r.stderr}`);
    const errors = r.stderr.split("\n").filter((l) => l.startsWith("error"));
    assert.equal(errors.length, 1, r.stderr);
    assert.match(errors[0]!, want);
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
    assert.equal(existsSync(path.join(tmp, name, "metrics.jsonl")), false, "no step ran");
  }
});
