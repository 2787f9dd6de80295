// End to end with text-to-image teachers (docs/adapters.md §6): tiny SD-1.5-like and SDXL-like pipeline folders
// built from configs by python-worker/tests/pipelines.py (random weights, saved with save_pretrained), a prompts file
// and a folder of captioned images; `dmd2 distill` through the real CLI in both placements, then `dmd2 sample
// --prompt`. The recipe checks of data.source prompts need no Python and come first.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import type { Plan } from "../src/plan/plan.js";
import { showPath } from "../src/recipe/files.js";
import { loadRecipe } from "../src/recipe/load.js";
import { parsePrompts, readPromptsFile } from "../src/recipe/prompts.js";
import { cliEntry, issuesOf, maxAbsDiff, projectPython, projectRoot, readSafetensors, scratchDir } from "./helpers.js";
import { pipelineList, textFamilies } from "../src/families.js";

/** every registered text-to-image pipeline class, as the messages list them (the family registry) */
const TEXT_PIPELINES = pipelineList(textFamilies());

const work = scratchDir("dmd2-t2i-");
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

/** The JSON files of a pipeline folder the CLI reads (no weights): enough for the recipe checks. */
function fakePipeline(name: string, className: string): string {
  const dir = path.join(work, name);
  write(path.join(name, "model_index.json"), JSON.stringify({ _class_name: className }));
  write(path.join(name, "unet", "config.json"), JSON.stringify({ _class_name: className === "DDPMPipeline" ? "UNet2DModel" : "UNet2DConditionModel", sample_size: 8 }));
  // SD 1.5's PNDM config has no prediction_type: diffusers' default (epsilon) fills it, as in the worker
  write(path.join(name, "scheduler", "scheduler_config.json"), JSON.stringify({ _class_name: "PNDMScheduler", num_train_timesteps: 1000, beta_schedule: "scaled_linear", beta_start: 0.00085, beta_end: 0.012, ...(className === "DDPMPipeline" ? { prediction_type: "epsilon" } : {}) }));
  return dir;
}

const rel = (name: string) => path.relative(process.cwd(), path.join(work, name));
const PROMPTS = "# training prompts\na cat\n\nthe dog on a mat\nthe cat\n";

test("prompts files: one prompt a line, blank lines and # comments skipped; an empty file is an error", () => {
  assert.deepEqual(parsePrompts("\uFEFF  a cat \r\n# no\n\n\tthe dog\r\n#\n"), ["a cat", "the dog"]);
  assert.deepEqual(readPromptsFile(write("p.txt", PROMPTS)), { prompts: ["a cat", "the dog on a mat", "the cat"] });
  assert.deepEqual(readPromptsFile(write("e.txt", "# only a comment\n\n")), { error: "holds no prompts (one prompt a line; blank lines and # comments are skipped)" });
  assert.deepEqual(readPromptsFile(path.join(work, "nope.txt")), { error: "does not exist (give a UTF-8 text file, one prompt a line)" });
  writeFileSync(path.join(work, "latin1.txt"), Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x0a]));
  assert.deepEqual(readPromptsFile(path.join(work, "latin1.txt")), { error: "is not UTF-8 text (save it as UTF-8)" });
});

test("recipe: data.source prompts, each problem one line naming the key", () => {
  const sd = fakePipeline("fake-sd15", "StableDiffusionPipeline");
  fakePipeline("fake-ddpm", "DDPMPipeline");
  write("prompts.txt", PROMPTS);
  write("empty.txt", "# nothing\n");
  mkdirSync(path.join(work, "real"), { recursive: true });
  const recipe = (name: string, lines: string[]) => write(`${name}.yaml`, lines.join("\n") + "\n");
  const ok = loadRecipe(recipe("ok", ["data: { source: prompts, prompts: { file: prompts.txt, images: real } }", "teacher: { source: diffusers, path: fake-sd15 }"]));
  assert.deepEqual(ok.data.prompts, { file: path.join(work, "prompts.txt"), images: path.join(work, "real") });
  assert.equal(ok.teacher.path, sd);
  assert.equal(ok.diffusion.prediction_type, "epsilon"); // filled from diffusers' default
  assert.deepEqual(issuesOf(() => loadRecipe(recipe("empty", ["data: { source: prompts, prompts: { file: empty.txt, images: real } }", "teacher: { source: diffusers, path: fake-sd15 }"]))), [
    `${rel("empty.yaml")}:1: data.prompts.file: empty.txt holds no prompts (one prompt a line; blank lines and # comments are skipped)`,
  ]);
  assert.deepEqual(issuesOf(() => loadRecipe(recipe("noimages", ["data: { source: prompts, prompts: { file: prompts.txt } }", "teacher: { source: diffusers, path: fake-sd15 }"]))), [
    `${rel("noimages.yaml")}:1: data.prompts.images: required when gan.enabled is true: the GAN's real branch needs real images (give a folder of images, with captions.txt for their captions, or set gan.enabled: false)`,
  ]);
  assert.equal(loadRecipe(recipe("nogan", ["data: { source: prompts, prompts: { file: prompts.txt } }", "teacher: { source: diffusers, path: fake-sd15 }", "gan: { enabled: false }"])).data.prompts.images, null);
  assert.deepEqual(issuesOf(() => loadRecipe(recipe("nofile", ["data: { source: prompts }", "teacher: { source: diffusers, path: fake-sd15 }", "gan: { enabled: false }"]))), [
    `${rel("nofile.yaml")}:1: data.prompts.file: required when data.source is prompts (a UTF-8 text file, one prompt a line)`,
  ]);
  assert.deepEqual(issuesOf(() => loadRecipe(recipe("ddpm", ["data: { source: prompts, prompts: { file: prompts.txt, images: real } }", "teacher: { source: diffusers, path: fake-ddpm }"]))), [
    `${rel("ddpm.yaml")}:2: teacher.path: fake-ddpm is not a text-to-image pipeline, which data.source prompts needs (${showPath(path.join(work, "fake-ddpm", "model_index.json"))} must name ${TEXT_PIPELINES})`,
  ]);
  assert.deepEqual(issuesOf(() => loadRecipe(recipe("classes", ["data: { source: digits }", "teacher: { source: diffusers, path: fake-sd15 }"]))), [
    `${rel("classes.yaml")}:1: data.source: digits does not fit the teacher: fake-sd15 is a text-to-image pipeline (sd15); set data.source: prompts with data.prompts.file`,
  ]);
  assert.deepEqual(issuesOf(() => loadRecipe(recipe("builtin", ["data: { source: prompts, prompts: { file: prompts.txt, images: real } }"]))), [
    `${rel("builtin.yaml")}:1: data.source: prompts needs a text-to-image teacher (set teacher.source: diffusers and teacher.path to a ${TEXT_PIPELINES} folder)`,
  ]);
  assert.deepEqual(issuesOf(() => loadRecipe(recipe("clip", ["data: { source: prompts, prompts: { file: prompts.txt, images: real } }", "teacher: { source: diffusers, path: fake-sd15 }", "generator: { clip_sample: true }"]))), [
    `${rel("clip.yaml")}:3: generator.clip_sample: clamps pixels to [-1, 1]; a text-to-image teacher's generator makes VAE latents, which have another range (set generator.clip_sample: false)`,
  ]);
  assert.deepEqual(issuesOf(() => loadRecipe(recipe("gone", ["data: { source: prompts, prompts: { file: prompts.txt, images: nowhere } }", "teacher: { source: diffusers, path: fake-sd15 }"]))), [
    `${rel("gone.yaml")}:1: data.prompts.images: nowhere does not exist (${showPath(path.join(work, "nowhere"))}; a relative path starts at the recipe's folder)`,
  ]);
});

// --- the real thing ----------------------------------------------------------------------------------------------

let built: Promise<void> | null = null;
/** The tiny pipelines, 5 captioned 20x20 images (resized to the pipelines' 16x16) and the prompts file, once. */
function buildFixtures(): Promise<void> {
  built ??= (async () => {
    for (const args of [["sd15", path.join(work, "sd15")], ["sdxl", path.join(work, "sdxl")], ["images", path.join(work, "images"), "5", "20"]]) {
      const r = await execa(projectPython, [builder, ...args], { reject: false, env, timeout: 300_000 });
      assert.equal(r.exitCode, 0, r.stderr);
    }
    write("train-prompts.txt", PROMPTS);
  })();
  return built;
}

function textRecipe(family: "sd15" | "sdxl", placement: "per_role" | "colocated", lora = false): string {
  const name = `${family}-${placement}${lora ? "-lora" : ""}`;
  return write(`${name}.yaml`, [
    `name: ${name}`,
    `placement: ${placement}`,
    "torch_threads: 1",
    "data: { source: prompts, prompts: { file: train-prompts.txt, images: images } }",
    `teacher: { source: diffusers, path: ${family} }`,
    lora ? "generator: { steps: 2, lr: 1.0e-3, lora: { rank: 4, alpha: 8, target_modules: [to_q, to_k, to_v, to_out.0, conv1] } }" : "generator: { steps: 1, lr: 1.0e-3 }",
    "fake_score: { lr: 1.0e-3 }",
    `dmd: { real_guidance_scale: ${family === "sd15" ? 1.75 : 8} }`,
    "ttur: { ratio: 2 }",
    "optim: { warmup_steps: 0 }",
    "train: { steps: 4, batch_size: 2, log_every: 2, checkpoint_every: 2, sample_every: 4 }",
    "sample: { num: 2 }",
    "",
  ].join("\n"));
}

const checkpoint = (runDir: string, step: number) => path.join(runDir, "checkpoints", `step-${String(step).padStart(8, "0")}`);

/** Distils `family` in both placements; checks what each run leaves and that both computed the same. */
async function distillBoth(family: "sd15" | "sdxl"): Promise<string> {
  await buildFixtures();
  const runs: string[] = [];
  for (const placement of ["per_role", "colocated"] as const) {
    const r = await dmd2(["distill", textRecipe(family, placement)]);
    assert.equal(r.exitCode, 0, r.stderr);
    const runDir = path.join(work, "runs", `${family}-${placement}`);
    runs.push(runDir);
    for (const step of [2, 4]) {
      for (const f of ["generator.safetensors", "fake_score.safetensors", "discriminator.safetensors", "manifest.json"]) {
        assert.ok(existsSync(path.join(checkpoint(runDir, step), f)), `${placement}: step ${step} ${f}`);
      }
    }
    const rows = readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(rows.length, 4);
    for (const row of rows) {
      for (const [k, v] of Object.entries(row)) if (k !== "generator_update") assert.ok(typeof v === "number" && Number.isFinite(v), `${placement} step ${row.step}: ${k} = ${v}`);
    }
    assert.ok(rows.some((row) => (row.loss_gan_d as number) > 0) && rows.some((row) => typeof row.loss_dmd === "number"));
    // the latent cache of the real images, and decoded sample grids
    const index = JSON.parse(readFileSync(path.join(runDir, "latents", "index.json"), "utf8")) as { num_images: number; latent_shape: number[] };
    assert.deepEqual([index.num_images, index.latent_shape], [5, [4, 8, 8]]);
    assert.ok(existsSync(path.join(runDir, "samples", "step-00000004", "grid.png")));
    assert.deepEqual(readFileSync(path.join(runDir, "samples", "final", "prompts.txt"), "utf8").split("\n"), ["a cat", "the dog on a mat", ""]);
    // generator.safetensors is the teacher's UNet state dict under "unet.", trained
    const gen = readSafetensors(path.join(checkpoint(runDir, 4), "generator.safetensors"));
    const teacher = readSafetensors(path.join(work, family, "unet", "diffusion_pytorch_model.safetensors"));
    const stripped = new Map([...gen].map(([k, v]) => [k.replace(/^unet\./, ""), v]));
    assert.ok([...gen.keys()].every((k) => k.startsWith("unet.")));
    assert.ok(maxAbsDiff(stripped, teacher) > 1e-4, "the generator's weights moved away from the teacher's");
  }
  // one process per role or all in one: the same computation
  const [perRole, colocated] = runs.map((d) => readSafetensors(path.join(checkpoint(d, 4), "generator.safetensors")));
  assert.ok(maxAbsDiff(perRole!, colocated!) < 1e-4, "per_role and colocated trained the same generator");
  return runs[0]!;
}

test("distill an SD-1.5-like pipeline with prompts and captioned images, per_role and colocated; then sample --prompt", async () => {
  const runDir = await distillBoth("sd15");
  const out = path.join(work, "sampled");
  const s = await dmd2(["sample", runDir, "--prompt", "a cat", "--prompt", "the dog", "--num", "3", "--out", out]);
  assert.equal(s.exitCode, 0, s.stderr);
  assert.deepEqual(readFileSync(path.join(out, "prompts.txt"), "utf8").split("\n"), ["a cat", "the dog", "a cat", ""]);
  assert.equal(readdirSync(path.join(out, "images")).length, 3);
  assert.ok(existsSync(path.join(out, "grid.png")));
  const file = write("sample-prompts.txt", "# two\nthe mat\na dog\n");
  const fromFile = await dmd2(["sample", runDir, "--prompts-file", file, "--out", path.join(work, "sampled-file")]);
  assert.equal(fromFile.exitCode, 0, fromFile.stderr);
  assert.match(fromFile.stderr, /sampling 2 images, 1 step\(s\), seed 0, 2 prompt\(s\)/);
  // dmd2 export: the stock StableDiffusionPipeline on the export gives dmd2 sample's latents for the same seed and prompts
  const sampled = path.join(work, "sampled-seed5");
  assert.equal((await dmd2(["sample", runDir, "--prompt", "a cat", "--prompt", "the dog", "--seed", "5", "--out", sampled])).exitCode, 0);
  const exported = path.join(work, "exported-sd15");
  const ex = await dmd2(["export", runDir, "--out", exported]);
  assert.equal(ex.exitCode, 0, ex.stderr);
  assert.match(ex.stderr, /exported to .*exported-sd15: timesteps \[999\]/);
  const compare = [
    "import json, sys, torch",
    "from safetensors.torch import load_file",
    "from diffusers import StableDiffusionPipeline",
    "out, sampled = sys.argv[1], sys.argv[2]",
    "ts = json.load(open(out + '/dmd2_student.json'))['timesteps']",
    "pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)",
    "lat = pipe(['a cat', 'the dog'], timesteps=ts, guidance_scale=1.0, output_type='latent', height=16, width=16, generator=torch.Generator().manual_seed(5)).images",
    "ours = load_file(sampled + '/samples.safetensors')['latents']",
    "print(type(pipe.scheduler).__name__, float((lat - ours).abs().max()), float(ours.abs().max()))",
  ].join("\n");
  const py = await execa(projectPython, ["-c", compare, exported, sampled], { env, reject: false });
  assert.equal(py.exitCode, 0, py.stderr);
  const [scheduler, diff, size] = py.stdout.trim().split("\n").pop()!.split(" ");
  assert.equal(scheduler, "LCMScheduler");
  assert.ok(Number(diff) < 1e-4 && Number(size) > 0.1, py.stdout);
  const again = await dmd2(["export", runDir, "--out", exported]);
  assert.equal(again.exitCode, 2);
  assert.equal(again.stderr.trim(), `error: --out ${exported} exists and is not empty (add --force to replace it, or give another folder)`);
  const classes = await dmd2(["sample", runDir, "--classes", "1"]);
  assert.equal(classes.exitCode, 2);
  assert.equal(classes.stderr.trim(), "error: --classes: this run's generator is conditioned on text (data.source prompts); give --prompt or --prompts-file instead");
});

test("distill an SDXL-like pipeline (pooled embeddings and time ids routed too), per_role and colocated", async () => {
  await distillBoth("sdxl");
});

test("a LoRA student of an SDXL-like pipeline: only the adapters train and are saved; sample decodes its images", async () => {
  await buildFixtures();
  // dmd2 plan sizes the run beforehand from the safetensors headers (plan/textPipeline.ts, plan/lora.ts)
  const planned = await dmd2(["plan", textRecipe("sdxl", "per_role", true), "--json"]);
  assert.equal(planned.exitCode, 0, planned.stderr);
  const net = (JSON.parse(planned.stdout) as Plan).memory.network;
  const r = await dmd2(["distill", textRecipe("sdxl", "per_role", true)]);
  assert.equal(r.exitCode, 0, r.stderr);
  const m = /generator: LoRA rank 4, alpha 8: ([\d,]+) of ([\d,]+) parameters train/.exec(r.stderr);
  assert.ok(m, r.stderr);
  const [trained, all] = [Number(m[1]!.replaceAll(",", "")), Number(m[2]!.replaceAll(",", ""))];
  assert.ok(trained > 0 && trained < all / 5, `${trained} of ${all}`);
  assert.deepEqual([net.lora?.params, net.params! + net.lora!.params], [trained, all], "the plan counted what the generator's worker reports");
  // and the frozen networks as torch counts them
  const counts = await execa(projectPython, ["-c", [
    "import sys, json",
    "from diffusers import AutoencoderKL",
    "from transformers import CLIPTextModel, CLIPTextModelWithProjection",
    "d = sys.argv[1]",
    "n = lambda m: sum(p.numel() for p in m.parameters())",
    "frozen = [['text_encoder', n(CLIPTextModel.from_pretrained(d, subfolder='text_encoder'))], ['text_encoder_2', n(CLIPTextModelWithProjection.from_pretrained(d, subfolder='text_encoder_2'))], ['vae', n(AutoencoderKL.from_pretrained(d, subfolder='vae'))]]",
    "from dmd2_worker.adapters.registry import load_adapter",
    "c = load_adapter(d, 'cpu').encode_prompts(['a cat'])",
    "print(json.dumps({'frozen': frozen, 'text': [list(c.encoder_hidden_states.shape[1:]), list(c.text_embeds.shape[1:]), list(c.time_ids.shape[1:])]}))",
  ].join("\n"), path.join(work, "sdxl")], { env });
  const py = JSON.parse(counts.stdout) as { frozen: [string, number][]; text: number[][] };
  assert.deepEqual(net.frozen.map((f) => [f.name, f.params]), py.frozen);
  // and the text step tensors' shapes as the adapter makes them
  const t = net.textTensors!;
  assert.deepEqual([[t.seqLen, t.hiddenDim], [t.pooledDim], [6]], py.text);
  const runDir = path.join(work, "runs", "sdxl-per_role-lora");
  for (const file of ["generator.safetensors", "generator.optim.safetensors"]) assert.ok(existsSync(path.join(checkpoint(runDir, 4), file)), file);
  const gen = readSafetensors(path.join(checkpoint(runDir, 4), "generator.safetensors"));
  const keys = [...gen.keys()];
  assert.ok(keys.length > 0 && keys.every((k) => k.startsWith("unet.") && /\.lora_[AB]\.default\.weight$/.test(k)), keys.slice(0, 3).join(", "));
  assert.equal(keys.reduce((n, k) => n + gen.get(k)!.length, 0), trained, "the file holds exactly the trained parameters");
  // B starts at zero: trained adapters have moved it
  const bMax = Math.max(...keys.filter((k) => k.includes(".lora_B.")).map((k) => Math.max(...gen.get(k)!.map(Math.abs))));
  assert.ok(bMax > 1e-5, `lora_B max |w| ${bMax}`);
  // the fake score trains the whole network as before: every one of the UNet's parameters the plan counted
  const fake = readSafetensors(path.join(checkpoint(runDir, 4), "fake_score.safetensors"));
  assert.ok([...fake.keys()].some((k) => !k.includes("lora")));
  assert.equal([...fake.values()].reduce((n, v) => n + v.length, 0), net.params);
  const loraOut = path.join(work, "exported-lora");
  const ex = await dmd2(["export", runDir, "--out", loraOut, "--lora"]);
  assert.equal(ex.exitCode, 0, ex.stderr);
  assert.deepEqual(readdirSync(loraOut).sort(), ["README.md", "dmd2_student.json", "pytorch_lora_weights.safetensors"]);
  const out = path.join(work, "sampled-lora");
  const s = await dmd2(["sample", runDir, "--prompt", "a cat", "--num", "2", "--out", out]);
  assert.equal(s.exitCode, 0, s.stderr);
  assert.equal(readdirSync(path.join(out, "images")).length, 2);
});

test("sample: --prompt on a run conditioned on classes is a one-line usage error, before any worker starts", async () => {
  const runDir = path.join(work, "runs", "class-run");
  const r = loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), { cwd: work, cpuCount: 2, overrides: [`run_dir=${runDir}`] });
  write(path.join("runs", "class-run", "recipe.resolved.json"), JSON.stringify(r));
  const s = await dmd2(["sample", runDir, "--prompt", "a cat"]);
  assert.equal(s.exitCode, 2);
  assert.equal(s.stderr.trim(), "error: --prompt: this run's generator is conditioned on classes (--classes), not on text; only runs with data.source prompts take prompts");
  const f = await dmd2(["sample", runDir, "--prompts-file", path.join(work, "nope.txt")]);
  assert.equal(f.exitCode, 2);
  assert.equal(f.stderr.trim(), `error: --prompts-file ${path.join(work, "nope.txt")} does not exist (give a UTF-8 text file, one prompt a line)`);
});

test("eval: a text-to-image run or pipeline is a one-line usage error naming what eval scores, before any Python starts", async () => {
  const sd = fakePipeline("eval-sd15", "StableDiffusionPipeline");
  const runDir = path.join(work, "runs", "text-run");
  const r = loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), { cwd: work, cpuCount: 2, overrides: [`run_dir=${runDir}`] });
  // what a text-to-image run's recipe.resolved.json says about its data (the rest does not matter here)
  write(path.join("runs", "text-run", "recipe.resolved.json"), JSON.stringify({ ...r, data: { ...r.data, source: "prompts" } }));
  const run = await dmd2(["eval", runDir]);
  assert.equal(run.exitCode, 2);
  assert.equal(run.stderr.trim(), `error: ${runDir}: a text-to-image run (data.source prompts): dmd2 eval scores models of an image data set (gmm, digits, folder); text-to-image runs and pipelines are not scored yet: look at their images with dmd2 sample <run> --prompt TEXT`);
  const pipe = await dmd2(["eval", sd]);
  assert.equal(pipe.exitCode, 2);
  assert.match(pipe.stderr.trim(), /^error: \S+eval-sd15: a text-to-image pipeline \(StableDiffusionPipeline\): dmd2 eval scores models of an image data set .* with dmd2 sample on a run distilled from it$/);
  assert.doesNotMatch(run.stderr + pipe.stderr, /evaluating/, "refused before the evaluation job");
});
