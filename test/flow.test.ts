// End to end with flow-matching teachers (docs/method.md "Flow-matching teachers"): tiny SD3-like and Flux.1-dev-like
// pipeline folders built from configs by python-worker/tests/pipelines.py (SD3Transformer2DModel with CLIP-L + CLIP-G
// + T5 and shift 3; FluxTransformer2DModel with CLIP + T5, packed latents, guidance embedding and dynamic shifting;
// random weights; SanaTransformer2DModel with Gemma2, the text attention mask and a DC-AE VAE), a prompts file and
// captioned images; `dmd2 distill` through the real CLI in both placements (the
// same weights), then `dmd2 sample --prompt`.
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { cliEntry, maxAbsDiff, projectPython, projectRoot, readSafetensors, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-flow-");
const env = { HF_HUB_OFFLINE: "1", NO_COLOR: "1", DMD2_CACHE: path.join(work, "cache") };
const builder = path.join(projectRoot, "python-worker", "tests", "pipelines.py");

async function dmd2(args: string[]) {
  const r = await execa("node", [cliEntry, ...args], { cwd: work, reject: false, env, timeout: 300_000 });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const write = (name: string, text: string) => {
  const f = path.join(work, name);
  mkdirSync(path.dirname(f), { recursive: true });
  writeFileSync(f, text);
  return f;
};

type FlowFamily = "sd3" | "flux" | "sana";

function sd3Recipe(placement: "per_role" | "colocated", family: FlowFamily = "sd3", teacher: string = family): string {
  return write(`${teacher}-${placement}.yaml`, [
    `name: ${teacher}-${placement}`,
    `placement: ${placement}`,
    "torch_threads: 1",
    "data: { source: prompts, prompts: { file: train-prompts.txt, images: images } }",
    `teacher: { source: diffusers, path: ${teacher} }`,
    "generator: { steps: 2, lr: 1.0e-3 }",
    "fake_score: { lr: 1.0e-3 }",
    `dmd: { real_guidance_scale: ${family === "flux" ? 3.5 : 4.5} }`, // Flux.1-dev: the embedded guidance
    "ttur: { ratio: 2 }",
    "optim: { warmup_steps: 0 }",
    "train: { steps: 4, batch_size: 2, log_every: 2, checkpoint_every: 2, sample_every: 4 }",
    "sample: { num: 2 }",
    "",
  ].join("\n"));
}

const checkpoint = (runDir: string, step: number) => path.join(runDir, "checkpoints", `step-${String(step).padStart(8, "0")}`);

let built: Promise<void> | null = null;
/** The tiny SD3, Flux and Sana pipelines, 5 captioned 20x20 images and the prompts file, once. */
function buildFixtures(): Promise<void> {
  built ??= (async () => {
    for (const args of [["sd3", path.join(work, "sd3")], ["flux", path.join(work, "flux")], ["sana", path.join(work, "sana")], ["images", path.join(work, "images"), "5", "20"]]) {
      const r = await execa(projectPython, [builder, ...args], { reject: false, env, timeout: 300_000 });
      assert.equal(r.exitCode, 0, r.stderr);
    }
    write("train-prompts.txt", "# training prompts\na cat\n\nthe dog on a mat\nthe cat\n");
  })();
  return built;
}

/** Distils `family` in both placements; checks the checkpoints, metrics, latent cache and that both computed the same. */
/** The latents each tiny family caches: 16 channels at 8x8 (SD3, Flux), the DC-AE's 4 at 16x16 (Sana). */
const LATENT_SHAPE: Record<FlowFamily, number[]> = { sd3: [16, 8, 8], flux: [16, 8, 8], sana: [4, 16, 16] };

async function distillBoth(family: FlowFamily): Promise<string[]> {
  await buildFixtures();
  const teacher = readSafetensors(path.join(work, family, "transformer", "diffusion_pytorch_model.safetensors"));
  const runs: string[] = [];
  for (const placement of ["per_role", "colocated"] as const) {
    const r = await dmd2(["distill", sd3Recipe(placement, family)]);
    assert.equal(r.exitCode, 0, r.stderr);
    const runDir = path.join(work, "runs", `${family}-${placement}`);
    runs.push(runDir);
    for (const f of ["generator.safetensors", "fake_score.safetensors", "discriminator.safetensors", "manifest.json"]) {
      assert.ok(existsSync(path.join(checkpoint(runDir, 4), f)), `${placement}: ${f}`);
    }
    const rows = readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(rows.length, 4);
    for (const row of rows) {
      for (const [k, v] of Object.entries(row)) if (k !== "generator_update") assert.ok(typeof v === "number" && Number.isFinite(v), `${placement} step ${row.step}: ${k} = ${v}`);
    }
    assert.ok(rows.some((row) => (row.loss_gan_d as number) > 0) && rows.some((row) => typeof row.loss_dmd === "number"));
    // the latent cache holds the family's latents
    const index = JSON.parse(readFileSync(path.join(runDir, "latents", "index.json"), "utf8")) as { num_images: number; latent_shape: number[] };
    assert.deepEqual([index.num_images, index.latent_shape], [5, LATENT_SHAPE[family]]);
    assert.ok(existsSync(path.join(runDir, "samples", "step-00000004", "grid.png")));
    // generator.safetensors is the teacher's transformer state dict under "transformer.", trained
    const gen = readSafetensors(path.join(checkpoint(runDir, 4), "generator.safetensors"));
    assert.ok([...gen.keys()].every((k) => k.startsWith("transformer.")));
    const stripped = new Map([...gen].map(([k, v]) => [k.replace(/^transformer\./, ""), v]));
    assert.equal(stripped.size, teacher.size);
    assert.ok(maxAbsDiff(stripped, teacher) > 1e-4, "the generator's weights moved away from the teacher's");
  }
  const [perRole, colocated] = runs.map((d) => readSafetensors(path.join(checkpoint(d, 4), "generator.safetensors")));
  assert.ok(maxAbsDiff(perRole!, colocated!) < 1e-4, "per_role and colocated trained the same generator");
  return runs;
}

test("distill a Flux.1-dev-like pipeline (packed latents, embedded guidance), per_role and colocated; then sample --prompt", async () => {
  const runs = await distillBoth("flux");
  const out = path.join(work, "sampled-flux");
  const s = await dmd2(["sample", runs[0]!, "--prompt", "a cat", "--num", "2", "--out", out]);
  assert.equal(s.exitCode, 0, s.stderr);
  assert.equal(readdirSync(path.join(out, "images")).length, 2);
});

test("distill an SD3-like flow-matching pipeline, per_role and colocated (the same weights); then sample --prompt", async () => {
  const runs = await distillBoth("sd3");
  const out = path.join(work, "sampled");
  const s = await dmd2(["sample", runs[0]!, "--prompt", "a cat", "--prompt", "the dog", "--num", "3", "--out", out]);
  assert.equal(s.exitCode, 0, s.stderr);
  assert.match(s.stderr, /sampling 3 images, 2 step\(s\), seed 0, 2 prompt\(s\)/);
  assert.deepEqual(readFileSync(path.join(out, "prompts.txt"), "utf8").split("\n"), ["a cat", "the dog", "a cat", ""]);
  assert.equal(readdirSync(path.join(out, "images")).length, 3);
  const one = await dmd2(["sample", runs[0]!, "--prompt", "a cat", "--steps", "1", "--num", "1", "--out", path.join(work, "sampled-1")]);
  assert.equal(one.exitCode, 0, one.stderr);
  // export does not write flow-matching pipelines yet: one line saying so, nothing written
  const exported = path.join(work, "exported-sd3");
  const ex = await dmd2(["export", runs[0]!, "--out", exported]);
  assert.equal(ex.exitCode, 2, ex.stderr);
  assert.match(ex.stderr.trim().split("\n").pop()!, /^error: \S+sd3: dmd2 export does not write sd3 pipelines yet .*dmd2 sample <run> --prompt$/);
  assert.ok(!existsSync(exported));
});

test("distill a Sana-like pipeline (Gemma with its attention mask, DC-AE), per_role and colocated (the same weights); then sample --prompt", async () => {
  const runs = await distillBoth("sana");
  const out = path.join(work, "sampled-sana");
  const s = await dmd2(["sample", runs[0]!, "--prompt", "a cat", "--prompt", "the dog", "--num", "2", "--out", out]);
  assert.equal(s.exitCode, 0, s.stderr);
  assert.deepEqual(readFileSync(path.join(out, "prompts.txt"), "utf8").split("\n"), ["a cat", "the dog", ""]);
  assert.equal(readdirSync(path.join(out, "images")).length, 2);
});

test("a Sana folder with its own DPM-Solver flow_prediction scheduler config distills (read as the flow schedule with shift = flow_shift)", async () => {
  await buildFixtures();
  const dpm = path.join(work, "sana-dpm");
  cpSync(path.join(work, "sana"), dpm, { recursive: true });
  writeFileSync(path.join(dpm, "scheduler", "scheduler_config.json"), JSON.stringify({
    _class_name: "DPMSolverMultistepScheduler", prediction_type: "flow_prediction", use_flow_sigmas: true, flow_shift: 3.0,
    num_train_timesteps: 1000, beta_schedule: "linear", beta_start: 0.0001, beta_end: 0.02, solver_order: 2,
  }));
  const r = await dmd2(["distill", sd3Recipe("per_role", "sana", "sana-dpm")]);
  assert.equal(r.exitCode, 0, r.stderr);
  // the same flow schedule as the FlowMatchEuler folder (shift 3): the same weights as its per_role run
  const ours = readSafetensors(path.join(checkpoint(path.join(work, "runs", "sana-dpm-per_role"), 4), "generator.safetensors"));
  const flowRun = path.join(work, "runs", "sana-per_role");
  if (existsSync(flowRun)) assert.ok(maxAbsDiff(ours, readSafetensors(path.join(checkpoint(flowRun, 4), "generator.safetensors"))) < 1e-4);
});
