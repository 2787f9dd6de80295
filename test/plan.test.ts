// dmd2 plan: the plan of every shipped recipe agrees with the run loop's own functions, the parameter counts
// agree with the Python model classes (the built-in TinyUNet live, diffusers' UNet2DModel against stored
// counts), diffusers teachers and non-gmm data are sized honestly, and the CLI prints JSON or fails on a bad
// --set exactly like distill.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { parse } from "yaml";
import { UsageError } from "../src/errors.js";
import { formatPlan } from "../src/plan/format.js";
import { headBlocks, headParams, unetArch, unetParams, type UNetArch } from "../src/unet/params.js";
import { buildPlan, checkpointDiskWarning, loadPlanRecipe, scheduleRowSteps, type Plan } from "../src/plan/plan.js";
import { unet2dActivationsPerSample, unet2dArch, unet2dParams } from "../src/unet/unet2d.js";
import { loadRecipe } from "../src/recipe/load.js";
import { ROLES, type Recipe } from "../src/recipe/types.js";
import { checkpointName } from "../src/run/checkpoints.js";
import { isCheckpointStep } from "../src/schedule/schedule.js";
import { planStep } from "../src/schedule/stepPlan.js";
import { countValues } from "../src/plan/safetensors.js";
import { cliEntry, fakeTeacher, fakeTextPipeline, projectPython, projectRoot, scratchDir, STAND_IN_UNET, writeSafetensors } from "./helpers.js";

const tmp = scratchDir("dmd2-plan-");
const recipesDir = path.join(projectRoot, "recipes");
const tinyFile = path.join(recipesDir, "tiny.yaml");
const load = (file: string, overrides: string[] = []): Recipe => loadRecipe(file, { cwd: tmp, cpuCount: 2, overrides });
const plan = (r: Recipe, file = tinyFile): Plan => buildPlan(r, file, { cpuCount: 2 });

/**
 * UNet2DModel configs with the counts diffusers gave for them, obtained once (diffusers 0.42.1, torch 2.13 CPU):
 *   u = UNet2DModel(**config); params = sum(p.numel() for p in u.parameters())
 * and, for `saved` / `savedEncoder`, the float32 values per sample autograd saved in a training-mode forward
 * at batch 2 (all of it / up to the mid block's output), counted once per storage with
 * torch.autograd.graph.saved_tensors_hooks, parameters excluded.
 */
const UNET2D_FIXTURES: { name: string; config: Record<string, unknown>; params: number; saved: number; savedEncoder: number }[] = [
  {
    // what dmd2 train-teacher writes for recipes/digits-teacher.yaml (UNet2DModel.save_pretrained's config.json)
    name: "digits teacher",
    config: {
      _class_name: "UNet2DModel", _diffusers_version: "0.42.1", act_fn: "silu", add_attention: false, attention_head_dim: 8, attn_norm_num_groups: null,
      block_out_channels: [32, 64], center_input_sample: false, class_embed_type: null, down_block_types: ["DownBlock2D", "DownBlock2D"],
      downsample_padding: 1, downsample_type: "conv", dropout: 0, flip_sin_to_cos: true, freq_shift: 0, in_channels: 1, layers_per_block: 1,
      mid_block_scale_factor: 1, mid_block_type: "UNetMidBlock2D", norm_eps: 0.00001, norm_num_groups: 8, num_class_embeds: 11,
      num_train_timesteps: null, out_channels: 1, resnet_time_scale_shift: "default", sample_size: 8, time_embedding_dim: null,
      time_embedding_type: "positional", up_block_types: ["UpBlock2D", "UpBlock2D"], upsample_type: "conv",
    },
    params: 635681,
    saved: 103154,
    savedEncoder: 32354,
  },
  {
    name: "3 levels, 2 layers, mid attention, RGB, unconditional",
    config: {
      sample_size: 16, in_channels: 3, out_channels: 3, block_out_channels: [16, 32, 64], layers_per_block: 2, norm_num_groups: 8,
      down_block_types: ["DownBlock2D", "DownBlock2D", "DownBlock2D"], up_block_types: ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
      add_attention: true, attention_head_dim: 8, num_class_embeds: null,
    },
    params: 905955,
    saved: 343760,
    savedEncoder: 110944,
  },
  {
    name: "attention blocks, scale_shift, own time embedding width, resnet resamplers",
    config: {
      sample_size: 8, in_channels: 1, out_channels: 1, block_out_channels: [24, 48], layers_per_block: 1, norm_num_groups: 4,
      down_block_types: ["AttnDownBlock2D", "AttnDownBlock2D"], up_block_types: ["AttnUpBlock2D", "AttnUpBlock2D"], add_attention: true,
      attention_head_dim: null, resnet_time_scale_shift: "scale_shift", time_embedding_dim: 96, downsample_type: "resnet", upsample_type: "resnet",
      num_class_embeds: 5,
    },
    params: 473881,
    saved: 179986,
    savedEncoder: 59226,
  },
  {
    // every other key at UNet2DModel's defaults (4 levels 224-896, attention blocks)
    name: "diffusers' defaults",
    config: { sample_size: 32 },
    params: 274056163,
    saved: 26947232,
    savedEncoder: 8476704,
  },
];

/** A diffusers teacher folder with no weights: fakeTeacher's scheduler, `unetConfig` and, unless null, dmd2_teacher.json. */
function standInTeacher(name: string, unetConfig: Record<string, unknown>, meta: Record<string, unknown> | null): string {
  const dir = fakeTeacher(path.join(tmp, "teachers", name), {});
  writeFileSync(path.join(dir, "unet", "config.json"), JSON.stringify(unetConfig));
  if (meta !== null) writeFileSync(path.join(dir, "dmd2_teacher.json"), JSON.stringify({ format: 1, ...meta }));
  return dir;
}
const digitsTeacher = standInTeacher("digits", UNET2D_FIXTURES[0]!.config, { num_classes: 10, null_class: 10, data: { source: "digits" } });

function checkPlan(p: Plan, r: Recipe, label: string) {
  assert.deepEqual(JSON.parse(JSON.stringify(p)), p, `${label}: the plan is plain JSON`);
  const roles = p.placement.workers.flatMap((w) => w.roles).sort();
  assert.deepEqual(roles, [...ROLES].sort(), `${label}: every role in exactly one worker`);
  for (const row of p.schedule.rows) {
    const expected = planStep(row.step, r).map((ph) => ph.map((c) => `${c.role}.${c.op}`));
    assert.deepEqual(row.phases, expected, `${label}: step ${row.step} ops`);
    assert.equal(row.generatorStep, row.step % r.ttur.ratio === 0);
    assert.equal(row.generatorLr === null, !row.generatorStep);
  }
  assert.equal(p.schedule.generatorUpdates, Math.ceil(r.train.steps / r.ttur.ratio));
  assert.equal(p.traffic.kinds.reduce((s, k) => s + k.count, 0), r.train.steps, `${label}: every step has a traffic kind`);
  // checkpoints: against the run loop's rule, step by step
  const all: number[] = [];
  for (let s = 0; s < r.train.steps; s++) if (isCheckpointStep(s, r)) all.push(s + 1);
  assert.equal(p.checkpoints.count, all.length, `${label}: checkpoint count`);
  assert.deepEqual(p.checkpoints.keptAtEnd, all.slice(-r.train.keep_last).map(checkpointName));
  assert.deepEqual(p.checkpoints.first, all.slice(0, 3).map(checkpointName));
  // memory: trained roles hold weights, grads and two AdamW moments; the teacher only weights
  if (r.teacher.source === "builtin") assert.equal(p.memory.params.unet, unetParams(unetArch(r)));
  else if (r.data.source === "prompts") {
    // a stand-in pipeline (helpers.fakeTextPipeline): counted from its safetensors headers
    assert.equal(p.memory.params.unet, countValues(Object.values(STAND_IN_UNET)), `${label}: the pipeline's UNet`);
  } else {
    const a = unet2dArch(JSON.parse(readFileSync(path.join(r.teacher.path!, "unet", "config.json"), "utf8")));
    assert.equal(p.memory.params.unet, "arch" in a ? unet2dParams(a.arch) : null, `${label}: the teacher's UNet2DModel`);
  }
  assert.equal(p.memory.workers.length === 0, p.memory.unknown !== null, `${label}: an estimate, or why there is none`);
  for (const m of p.memory.workers.flatMap((w) => w.roles)) {
    const sharded = r.roles[m.role === "discriminator" ? "fake_score" : m.role].strategy === "fsdp" ? r.roles[m.role === "discriminator" ? "fake_score" : m.role].replicas : 1;
    const trainedBytes = (m.trainedParams * 4) / sharded;
    assert.equal(m.weightsBytes, (m.params - m.trainedParams + m.frozenParams) * 4 + trainedBytes);
    assert.equal(m.gradsBytes, trainedBytes);
    assert.equal(m.optimizerBytes, 2 * trainedBytes);
    assert.equal(m.emaBytes, m.role === "generator" && r.generator.ema_decay > 0 ? trainedBytes : 0);
    assert.equal(m.trained, m.role !== "teacher" && (m.role !== "discriminator" || r.gan.enabled));
    assert.equal(m.trainedParams === m.params, m.trained && !(m.role === "generator" && r.generator.lora.rank !== null), `${label}: ${m.role} trains all its weights unless LoRA`);
    assert.equal(m.frozenParams > 0, m.role === "generator" && r.data.source === "prompts", `${label}: only a text-to-image generator holds frozen networks`);
  }
  assert.ok(formatPlan(p).includes("Memory per worker"), `${label}: text form`);
}

test("plan: every recipe in recipes/ plans, per_role and colocated, consistent with the run loop", () => {
  const files = readdirSync(recipesDir).filter((f) => f.endsWith(".yaml"));
  assert.ok(files.length >= 1);
  // teacher recipes (*-teacher.yaml) are dmd2 train-teacher's: plan refuses them with one line naming that command
  for (const f of files.filter((f) => f.endsWith("-teacher.yaml"))) {
    assert.throws(() => loadPlanRecipe(path.join(recipesDir, f), []), (e: unknown) => e instanceof UsageError && e.exitCode === 2 && /is a teacher recipe/.test(e.message) && /dmd2 train-teacher/.test(e.hint ?? ""));
  }
  // a distillation recipe with a diffusers teacher gets a stand-in folder (what train-teacher writes, without weights)
  // and a text-to-image recipe (data.source prompts) a stand-in pipeline of its family, which plan cannot size yet
  const text = { sd15: fakeTextPipeline(path.join(tmp, "plan-sd15"), "StableDiffusionPipeline"), sdxl: fakeTextPipeline(path.join(tmp, "plan-sdxl"), "StableDiffusionXLPipeline") };
  for (const f of files.filter((f) => !f.endsWith("-teacher.yaml"))) {
    const raw = parse(readFileSync(path.join(recipesDir, f), "utf8")) as { teacher?: { source?: string }; data?: { source?: string } };
    const textToImage = raw.data?.source === "prompts";
    const diffusers = raw.teacher?.source === "diffusers";
    const stand = textToImage ? text[f.startsWith("sdxl") ? "sdxl" : "sd15"] : diffusers ? [`teacher.path=${digitsTeacher}`] : [];
    for (const placement of ["per_role", "colocated"]) {
      // a recipe placing roles on several devices (sdxl-4step) is a per_role one: colocated means one device
      const placementSet = placement === "colocated" ? ["placement=colocated", "roles.teacher.device=null", "roles.generator.device=null", "roles.fake_score.device=null"] : [`placement=${placement}`];
      const r = load(path.join(recipesDir, f), [...placementSet, ...stand]);
      const p = plan(r, path.join(recipesDir, f));
      checkPlan(p, r, `${f} ${placement}`);
      const moved = p.traffic.kinds.flatMap((k) => k.transfers);
      if (placement === "colocated") assert.equal(moved.length, 0, "one process: nothing travels");
      else assert.ok(moved.length > 0);
      assert.deepEqual(p.problems.filter((x) => x.subject !== "python"), [], `${f}: no problem with the recipe's networks`);
      assert.equal(p.memory.unknown, null, `${f}: every shipped recipe is sized`);
      // a UNet2DConditionModel's activations are not modelled: said, and the totals are lower bounds
      assert.equal(p.memory.activationsUnknown !== null, textToImage, `${f}: activations unknown only for text-to-image`);
      if (textToImage) assert.match(formatPlan(p), /per worker: .*>= /);
    }
  }
});

test("plan: odd schedules (GAN warm-up, ratio 1, steps not a multiple of checkpoint_every)", () => {
  const cases = [
    ["gan.warmup_steps=50", "train.steps=1003", "train.keep_last=3"],
    ["ttur.ratio=1", "train.steps=7", "train.checkpoint_every=3"],
    ["ttur.ratio=100", "train.steps=150", "gan.enabled=false", "optim.warmup_steps=0"],
    ["train.steps=1", "train.checkpoint_every=1000"],
  ];
  for (const c of cases) {
    const r = load(tinyFile, c);
    checkPlan(plan(r), r, c.join(" "));
  }
  // with G's GAN weight at 0 on step 0, step 0 sends no gan_grad but later generator steps do
  const p = plan(load(tinyFile, ["gan.warmup_steps=50", "optim.warmup_unit=updates"]));
  const names = (k: Plan["traffic"]["kinds"][number]) => k.transfers.map((t) => t.tensor);
  assert.deepEqual(p.traffic.kinds.map((k) => [k.kind, k.count]), [["first generator step", 1], ["generator step", 39], ["fake-score-only step", 160]]);
  assert.ok(!names(p.traffic.kinds[0]!).includes("gan_grad"));
  assert.ok(names(p.traffic.kinds[1]!).includes("gan_grad"));
  assert.equal(p.schedule.ganGeneratorWeight.fullFromStep, 50);
  assert.equal(p.schedule.generatorLr.fullFromStep, 95); // its 20th update, at step 19 * 5
});

test("plan: the schedule table shows through the third generator step, or excerpts of long ratios", () => {
  assert.deepEqual(scheduleRowSteps(200, 5), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(scheduleRowSteps(200, 1), [0, 1, 2]);
  assert.deepEqual(scheduleRowSteps(1000, 100), [0, 1, 2, 99, 100, 101, 200]);
  assert.deepEqual(scheduleRowSteps(4, 5), [0, 1, 2, 3]);
});

test("plan: tiny's tensors, sizes and memory", () => {
  const p = plan(load(tinyFile));
  const gen = p.traffic.kinds.find((k) => k.kind === "generator step")!;
  assert.equal(gen.count, 40);
  const x = gen.transfers.find((t) => t.tensor === "x_gen")!;
  assert.deepEqual([x.dtype, x.shape, x.bytes], ["float32", [32, 1, 8, 8], 32 * 64 * 4]);
  assert.deepEqual(x.from, { worker: "generator", call: "generator.generate" });
  assert.deepEqual(x.to.map((t) => t.call), ["discriminator.generator_gan_grad", "fake_score.update"]);
  assert.deepEqual(p.memory.params, { unet: 45733, discriminatorHead: 16513 });
  assert.deepEqual(p.memory.workers.map((w) => w.worker), ["teacher", "generator", "fake_score"]);
  assert.equal(p.memory.estimate, true);
});

test("plan: checkpoints that would not fit on the run folder's disk are a problem line", () => {
  const r = load(tinyFile, ["train.checkpoint_every=20"]);
  const roomy = buildPlan(r, tinyFile, { cpuCount: 2, freeBytes: () => 1e12 });
  const c = roomy.checkpoints;
  // written before the oldest is removed: keep_last + 1 at once (tiny writes more than that), the built-in teacher's copy beside them
  assert.ok(c.count > r.train.keep_last + 1);
  assert.equal(c.peakBytes! - c.diskBytes!, c.bytesEach);
  assert.equal(c.freeBytes, 1e12);
  assert.deepEqual(roomy.problems.filter((x) => x.subject === "train.keep_last"), []);
  const tight = buildPlan(r, tinyFile, { cpuCount: 2, freeBytes: () => c.peakBytes! - 1 });
  const p = tight.problems.filter((x) => x.subject === "train.keep_last");
  assert.equal(p.length, 1);
  assert.match(p[0]!.message, new RegExp(`need up to ~\\S+ \\S+ \\(${r.train.keep_last + 1} of ~\\S+ \\S+ while the newest is written\\), the disk of \\S+ has \\S+ \\S+ free`));
  assert.match(p[0]!.fix ?? "", /lower train\.keep_last/);
  assert.match(formatPlan(tight), /disk +\S+ \S+ free; up to ~\S+ \S+ while the newest checkpoint is written/);
  // what dmd2 distill warns before it starts (run/distill.ts), from the same problem
  assert.equal(checkpointDiskWarning(r, tinyFile, () => c.peakBytes! - 1), `${p[0]!.message}: ${p[0]!.fix} (dmd2 plan shows the sizes)`);
  assert.equal(checkpointDiskWarning(r, tinyFile, () => 1e12), null);
  // unreadable free space: said so, no problem invented
  const unknown = buildPlan(r, tinyFile, { cpuCount: 2, freeBytes: () => null });
  assert.equal(unknown.checkpoints.freeBytes, null);
  assert.deepEqual(unknown.problems.filter((x) => x.subject === "train.keep_last"), []);
});

test("plan: a missing interpreter is a problem line, not a failure; an image size the UNet refuses is a recipe error", () => {
  assert.throws(() => load(tinyFile, ["data.gmm.image_size=6"]), /data\.gmm\.image_size: must be a multiple of 4/);
  const r = load(tinyFile, []);
  const p = buildPlan(r, tinyFile, { env: { DMD2_PYTHON: path.join(tmp, "no-python") } });
  assert.equal(p.placement.python.path, null);
  assert.equal(p.placement.python.source, "DMD2_PYTHON");
  assert.deepEqual(p.problems.map((x) => x.subject), ["python"]);
  assert.ok(p.problems.every((x) => x.fix !== undefined));
  const text = formatPlan(p);
  assert.match(text, /problem python: DMD2_PYTHON=\S+ is not an executable file/);
});

test("plan: a run folder with checkpoints is where distill would resume", () => {
  const runDir = path.join(tmp, "resumable");
  for (const step of [100, 200]) {
    mkdirSync(path.join(runDir, "checkpoints", checkpointName(step)), { recursive: true });
    writeFileSync(path.join(runDir, "checkpoints", checkpointName(step), "manifest.json"), "{}");
  }
  mkdirSync(path.join(runDir, "checkpoints", checkpointName(300) + ".tmp")); // incomplete: not counted
  const p = plan(load(tinyFile, [`run_dir=${runDir}`, "train.steps=400"]));
  assert.deepEqual(p.checkpoints.existing, ["step-00000100", "step-00000200"]);
  assert.equal(p.checkpoints.resumeFrom, 200);
  assert.match(formatPlan(p), /existing +step-00000100, step-00000200: distill resumes from step 200\n/);
  assert.equal(plan(load(tinyFile, [`run_dir=${path.join(tmp, "fresh")}`])).checkpoints.resumeFrom, null);
});

test("plan: the TinyUNet and head parameter formulas equal what the Python classes count", () => {
  const archs: UNetArch[] = [];
  for (const channels of [8, 16, 24, 33])
    for (const numClasses of [2, 4, 10, null])
      for (const imageSize of [4, 8, 16, 32])
        for (const channelMult of [[1, 2], [1, 2, 2], [1]])
          if (imageSize % 2 ** channelMult.length === 0) archs.push({ inChannels: channels === 24 ? 3 : 1, imageSize, channels, channelMult, numClasses });
  const script = `
import json, sys
from dmd2_worker.models.tiny_unet import TinyUNet
from dmd2_worker.models.discriminator_head import DiscriminatorHead
out = []
for a in json.loads(sys.argv[1]):
    net = TinyUNet({"in_channels": a["inChannels"], "image_size": a["imageSize"], "channels": a["channels"],
                    "channel_mult": a["channelMult"], "num_classes": a["numClasses"]})
    head = DiscriminatorHead(net.feature_channels, net.feature_size)
    out.append([sum(p.numel() for p in net.parameters()), sum(p.numel() for p in head.parameters())])
print(json.dumps(out))
`;
  const counts = JSON.parse(execFileSync(projectPython, ["-c", script, JSON.stringify(archs)], { encoding: "utf8" })) as [number, number][];
  archs.forEach((a, i) => {
    const L = a.channelMult.length;
    const [unet, head] = counts[i]!;
    assert.equal(unetParams(a), unet, `unet ${JSON.stringify(a)}`);
    assert.equal(headParams(a.channels * a.channelMult[L - 1]!, Math.floor(a.imageSize / 2 ** L)), head, `head ${JSON.stringify(a)}`);
  });
  // the closed form in params.ts's comment, for the default arch
  for (const c of [8, 16, 64]) for (const K of [2, 4, 10]) assert.equal(unetParams({ inChannels: 1, imageSize: 8, channels: c, channelMult: [1, 2], numClasses: K }), 170 * c * c + 118 * c + 4 * c * (K + 1) + 5);
  assert.deepEqual([1, 2, 3, 4, 8].map(headBlocks), [0, 1, 1, 2, 3]);
});

test("plan: the UNet2DModel formulas equal what diffusers counted for the fixture configs", () => {
  for (const f of UNET2D_FIXTURES) {
    const a = unet2dArch(f.config);
    assert.ok("arch" in a, `${f.name}: ${"unknown" in a ? a.unknown : ""}`);
    assert.equal(unet2dParams(a.arch), f.params, `${f.name}: parameters`);
    // the activations are an estimate: within 10% of what autograd saved (it was 94-102% when written)
    const size = a.arch.imageSize!;
    for (const [est, real, what] of [[unet2dActivationsPerSample(a.arch, size), f.saved, "forward"], [unet2dActivationsPerSample(a.arch, size, true), f.savedEncoder, "encoder"]] as const) {
      assert.ok(Math.abs(est / real - 1) < 0.1, `${f.name}: ${what} activations ${est} vs ${real} saved`);
    }
  }
});

test("plan: a diffusers teacher on digits is sized from its unet/config.json; a folder's images are unknown until the worker reads them", () => {
  const digitsFile = path.join(recipesDir, "digits.yaml");
  const p = plan(load(digitsFile, [`teacher.path=${digitsTeacher}`]), digitsFile);
  assert.deepEqual(p.data, { source: "digits", imageShape: [1, 8, 8], numClasses: 10, classesKnown: true, note: "scikit-learn's load_digits()" });
  const n = p.memory.network;
  assert.deepEqual([n.kind, n.imageShape, n.numClasses, n.nullClass, n.params], ["diffusers", [1, 8, 8], 10, true, 635681]);
  assert.deepEqual(n.features, { channels: 64, size: 4 }); // the mid block's output: 8 / 2^(2 - 1)
  assert.deepEqual(p.memory.params, { unet: 635681, discriminatorHead: headParams(64, 4) });
  const x = p.traffic.kinds[0]!.transfers.find((t) => t.tensor === "x_gen")!;
  assert.deepEqual(x.shape, [64, 1, 8, 8]);
  // the teacher is read where it is, not copied into the run folder
  // (each checkpoint: the trained weights, AdamW's two moments and the generator's average, generator.ema_decay)
  const trained = p.memory.workers.flatMap((w) => w.roles).filter((m) => m.role !== "teacher");
  assert.equal(p.checkpoints.diskBytes, 2 * trained.reduce((s, m) => s + m.weightsBytes + m.optimizerBytes + m.emaBytes, 0));
  assert.ok(trained.some((m) => m.emaBytes > 0), "digits.yaml averages the generator's weights");
  const text = formatPlan(p);
  assert.match(text, /data +digits, 1x8x8, 10 classes/);
  assert.match(text, /UNet2DModel\(blocks \[32, 64\], 1 layer per block, 10 classes \+ null class, 1x8x8\) 635,681 params/);
  assert.match(text, /the teacher stays in its folder/);

  // folder data: the CLI does not read images; the teacher says what the workers will insist on
  const images = path.join(tmp, "images");
  mkdirSync(images, { recursive: true });
  const f = plan(load(digitsFile, [`teacher.path=${digitsTeacher}`, "data.source=folder", `data.folder.path=${images}`]), digitsFile);
  assert.deepEqual([f.data.imageShape, f.data.numClasses, f.data.classesKnown], [null, null, false]);
  assert.deepEqual(f.memory.network.imageShape, [1, 8, 8]);
  assert.deepEqual(f.problems.filter((x) => x.subject !== "python"), []);
  assert.match(formatPlan(f), /data +folder \S+: image size and classes unknown until the worker reads it; the teacher expects 1x8x8, 10 classes/);

  // a teacher trained on other data is a problem line, as the workers would refuse it
  const rgb = standInTeacher("rgb16", UNET2D_FIXTURES[1]!.config, null);
  const m = plan(load(digitsFile, [`teacher.path=${rgb}`]), digitsFile);
  assert.deepEqual(m.memory.network.numClasses, null); // no dmd2_teacher.json, no class embedding: unconditional
  assert.deepEqual(m.problems.filter((x) => x.subject === "teacher").map((x) => x.message), [
    "the teacher makes 3x16x16 images but data.source digits has 1x8x8; the workers will refuse it",
    "the teacher has no classes but data.source digits has 10; the workers will refuse it",
  ]);
  assert.equal(m.memory.params.unet, 905955);
});

test("plan: a UNet2DModel with block types the plan does not model is unknown, not a wrong number", () => {
  const digitsFile = path.join(recipesDir, "digits.yaml");
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ ...UNET2D_FIXTURES[0]!.config, down_block_types: ["CrossAttnDownBlock2D", "DownBlock2D"] }, /block type CrossAttnDownBlock2D is not modelled/],
    [{ ...UNET2D_FIXTURES[0]!.config, mid_block_type: "UNetMidBlock2DCrossAttn" }, /block type UNetMidBlock2DCrossAttn is not modelled/],
    [{ ...UNET2D_FIXTURES[0]!.config, time_embedding_type: "fourier" }, /time_embedding_type fourier is not modelled/],
    [{ ...UNET2D_FIXTURES[0]!.config, block_out_channels: "wide" }, /block_out_channels is "wide", expected a non-empty list/],
  ];
  cases.forEach(([config, why], i) => {
    const dir = standInTeacher(`odd-${i}`, config, { num_classes: 10, null_class: 10 });
    const p = plan(load(digitsFile, [`teacher.path=${dir}`]), digitsFile);
    assert.deepEqual(p.memory.params, { unet: null, discriminatorHead: null });
    assert.deepEqual(p.memory.workers, []);
    assert.match(p.memory.unknown ?? "", why);
    assert.equal(p.checkpoints.bytesEach, null);
    assert.deepEqual(p.memory.network.numClasses, 10, "the classes still come from dmd2_teacher.json");
    const text = formatPlan(p);
    assert.match(text, /size unknown/);
    assert.match(text, /unknown: .*not modelled|unknown: .*expected/);
    assert.ok(!/ params;/.test(text.split("Memory per worker")[1]!), "no parameter count is shown");
    // the plan's other sections are unaffected
    checkPlan(p, load(digitsFile, [`teacher.path=${dir}`]), `odd ${i}`);
  });
});

async function cli(args: string[]) {
  const r = await execa("node", [cliEntry, ...args], { cwd: projectRoot, reject: false, env: { NO_COLOR: "1" }, timeout: 30_000 });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}

test("plan: a text-to-image pipeline is sized from its safetensors headers, LoRA adapters counted; activations said unknown", () => {
  const file = path.join(recipesDir, "sd15-1step.yaml");
  const dir = path.join(tmp, "text-sized");
  const sets = fakeTextPipeline(dir, "StableDiffusionPipeline");
  const p = plan(load(file, [...sets, "generator.lora.rank=4", "generator.ema_decay=0.99", "stages=[]"]), file); // the GAN on from step 0
  const n = p.memory.network;
  // STAND_IN_UNET: 2,968 values; the default targets adapt 10 of its layers at rank 4, rank * (in * kh * kw + out) each:
  // conv1, conv2 4*(72+8) = 320 each; proj_in, proj_out, to_q, to_out.0 4*(8+8) = 64 each; to_k, to_v 4*(12+8) = 80 each;
  // ff.net.0.proj 4*(8+64) = 288; ff.net.2 4*(32+8) = 160; conv_in and conv_out are no target
  assert.deepEqual([n.kind, n.params, n.imageShape, n.features], ["text-to-image", 2968, [4, 64, 64], { channels: 1280, size: 8 }]);
  assert.deepEqual([n.lora?.params, n.lora?.layers, n.lora?.unmatched], [1504, 10, []]);
  // target_modules null means lora.py's defaults
  const pyTargets = JSON.parse(execFileSync(projectPython, ["-c", "import json; from dmd2_worker.lora import DEFAULT_TARGET_MODULES as T; print(json.dumps(list(T)))"], { encoding: "utf8" })) as string[];
  assert.deepEqual(n.lora?.targets, pyTargets);
  assert.deepEqual(n.frozen, [{ name: "text_encoder", params: 40 }, { name: "vae", params: 108 }]);
  assert.deepEqual(p.problems.filter((x) => x.subject !== "python"), []);
  const role = (r: string) => p.memory.workers.flatMap((w) => w.roles).find((x) => x.role === r)!;
  const g = role("generator");
  assert.deepEqual([g.params, g.trainedParams, g.frozenParams, g.frozenBasis], [2968 + 1504, 1504, 148, "text_encoder + vae"]);
  assert.deepEqual([g.weightsBytes, g.gradsBytes, g.optimizerBytes, g.emaBytes, g.activationBytes], [(2968 + 148 + 1504) * 4, 1504 * 4, 2 * 1504 * 4, 1504 * 4, null]);
  assert.equal(g.totalBytes, g.weightsBytes + g.gradsBytes + g.optimizerBytes + g.emaBytes);
  assert.deepEqual([role("fake_score").trainedParams, role("teacher").trainedParams, role("teacher").frozenParams], [2968, 0, 0]);
  // a checkpoint: the generator's adapters, AdamW's moments and their average; the whole fake score and head with theirs
  assert.equal(p.checkpoints.bytesEach, 1504 * 4 * 4 + 2968 * 4 * 3 + headParams(1280, 8) * 4 * 3);
  assert.ok(p.memory.workers.every((w) => !w.complete));
  // the step tensors: latents, and the prompts' hidden states (tokenizer's 77 x the UNet's cross_attention_dim 768)
  const B = p.recipe.resolved.train.batch_size;
  const sent = (q: Plan) => Object.fromEntries(q.traffic.kinds[0]!.transfers.map((x) => [x.tensor, x.shape]));
  assert.deepEqual(sent(p), { cond_hidden: [B, 77, 768], x_gen: [B, 4, 64, 64], t_dmd: [B], x_t_dmd: [B, 4, 64, 64], x0_real: [B, 4, 64, 64], x0_fake: [B, 4, 64, 64], gan_grad: [B, 4, 64, 64] });
  assert.notEqual(p.traffic.runBytes, null);
  const text = formatPlan(p);
  assert.match(text, /SD 1\.5 UNet2DConditionModel \(latents 4x64x64\) 2,968 params \(counted from \S+diffusion_pytorch_model\.safetensors\)/);
  assert.match(text, /generator\.lora: rank 4 on 10 layers \(to_q, .*\): 1,504 trained params \(50\.7% of the UNet\)/);
  assert.match(text, /generator's weights include the frozen text_encoder \+ vae \(148 params\)/);
  assert.match(text, /activations \S*\?\S*: what a UNet2DConditionModel's forward pass keeps is not modelled/);

  // a target the UNet lacks is a problem line: the generator would refuse it
  const odd = plan(load(file, [...sets, "generator.lora.rank=4", "generator.lora.target_modules=[to_q, add_k_proj]"]), file);
  assert.deepEqual(odd.memory.network.lora?.params, 64); // to_q alone
  assert.deepEqual(odd.problems.filter((x) => x.subject !== "python").map((x) => x.subject), ["generator.lora.target_modules"]);
  assert.match(odd.problems.find((x) => x.subject !== "python")!.message, /"add_k_proj" matches no Linear or Conv2d layer/);

  // SDXL: two text encoders; a sharded UNet (an index and its shards) counts the same
  const xl = path.join(tmp, "text-sharded");
  const xlSets = fakeTextPipeline(xl, "StableDiffusionXLPipeline");
  const entries = Object.entries(STAND_IN_UNET);
  const halves = [Object.fromEntries(entries.slice(0, 7)), Object.fromEntries(entries.slice(7))];
  rmSync(path.join(xl, "unet", "diffusion_pytorch_model.safetensors"));
  halves.forEach((h, i) => writeSafetensors(path.join(xl, "unet", `diffusion_pytorch_model-0000${i + 1}-of-00002.safetensors`), h));
  const weightMap = Object.fromEntries(halves.flatMap((h, i) => Object.keys(h).map((k) => [k, `diffusion_pytorch_model-0000${i + 1}-of-00002.safetensors`])));
  writeFileSync(path.join(xl, "unet", "diffusion_pytorch_model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  const xp = plan(load(path.join(recipesDir, "sdxl-4step.yaml"), xlSets), path.join(recipesDir, "sdxl-4step.yaml"));
  assert.deepEqual([xp.memory.network.params, xp.memory.network.frozen.map((f) => f.name), xp.memory.network.text?.weightFiles.length], [2968, ["text_encoder", "text_encoder_2", "vae"], 2]);
  const xb = xp.recipe.resolved.train.batch_size;
  assert.deepEqual([sent(xp).cond_hidden, sent(xp).cond_pooled, sent(xp).cond_time_ids], [[xb, 77, 2048], [xb, 1280], [xb, 6]]);

  // what cannot be read is unknown, with the file and why: a download cut short, a .bin-only UNet
  const cut = path.join(dir, "text_encoder", "model.safetensors");
  truncateSync(cut, statSync(cut).size - 4);
  const t = plan(load(file, sets), file);
  assert.deepEqual(t.memory.workers, []);
  assert.match(t.memory.unknown ?? "", /text_encoder\/model\.safetensors: truncated \(its header describes \d+ bytes, the file has \d+\); download it again/);
  rmSync(path.join(dir, "unet", "diffusion_pytorch_model.safetensors"));
  writeFileSync(path.join(dir, "unet", "diffusion_pytorch_model.bin"), "");
  const b = plan(load(file, sets), file);
  assert.match(b.memory.unknown ?? "", /diffusion_pytorch_model\.safetensors is missing \(the plan reads safetensors headers/);
  assert.match(formatPlan(b), /SD 1\.5 UNet2DConditionModel from \S+: size unknown/);

  // a pipeline saved with variant="fp16": the workers cannot load it, a problem line says so before anything starts
  const v = path.join(tmp, "text-variant");
  const vSets = fakeTextPipeline(v, "StableDiffusionPipeline");
  renameSync(path.join(v, "unet", "diffusion_pytorch_model.safetensors"), path.join(v, "unet", "diffusion_pytorch_model.fp16.safetensors"));
  const vp = plan(load(file, vSets), file);
  assert.match(vp.memory.unknown ?? "", /diffusion_pytorch_model\.safetensors is missing: only variant weights are there \(diffusion_pytorch_model\.fp16\.safetensors\)/);
  const vprob = vp.problems.filter((x) => x.subject === "teacher");
  assert.equal(vprob.length, 1);
  assert.match(vprob[0]!.message, /unet has only variant weights \(diffusion_pytorch_model\.fp16\.safetensors\); the workers load the default files and will refuse it/);
  assert.match(vprob[0]!.fix ?? "", /without variant=/);
});

test("plan at full size: SD 1.5's published parameter counts from a skeleton folder (headers over sparse holes)", async () => {
  // scripts/sd_pipelines.py skeleton: the published configs built on the meta device, safetensors headers only
  const dir = path.join(tmp, "sd15-skeleton");
  const built = await execa(projectPython, [path.join(projectRoot, "scripts", "sd_pipelines.py"), "skeleton", "sd15", dir], { reject: false, env: { ...process.env, HF_HUB_OFFLINE: "1" } });
  assert.equal(built.exitCode, 0, built.stderr);
  mkdirSync(path.join(dir, "real"));
  writeFileSync(path.join(dir, "prompts.txt"), "a cat\n");
  const file = path.join(recipesDir, "sd15-1step.yaml");
  const sets = [`teacher.path=${dir}`, `data.prompts.file=${path.join(dir, "prompts.txt")}`, `data.prompts.images=${path.join(dir, "real")}`];
  const p = plan(load(file, [...sets, "generator.lora.rank=64"]), file);
  const n = p.memory.network;
  // runwayml/stable-diffusion-v1-5: UNet 859,520,964, CLIP ViT-L/14 text encoder 123,060,480, VAE 83,653,863;
  // lora.py's default targets at rank 64: 58,466,304 (docs/adapters.md §7: 58.5M, 6.8%)
  assert.deepEqual([n.params, n.frozen, n.lora?.params], [859520964, [{ name: "text_encoder", params: 123060480 }, { name: "vae", params: 83653863 }], 58466304]);
  assert.deepEqual([n.imageShape, n.textTensors], [[4, 64, 64], { seqLen: 77, hiddenDim: 768, pooledDim: null }]);
  assert.deepEqual(p.problems.filter((x) => x.subject !== "python"), []);
});

test("plan CLI: --json prints one JSON object; nothing is started", async () => {
  const r = await cli(["plan", "recipes/tiny.yaml", "--json"]);
  assert.equal(r.exitCode, 0, r.stderr);
  const p = JSON.parse(r.stdout) as Plan;
  assert.equal(p.recipe.name, "tiny");
  assert.equal(p.recipe.resolved.train.steps, 200);
  assert.deepEqual(p.schedule.rows[0]!.phases.flat(), ["generator.generate", "teacher.predict_x0", "fake_score.predict_x0", "discriminator.generator_gan_grad", "generator.update", "fake_score.update"]);
  assert.equal(p.memory.params.unet, 45733);
  assert.equal(r.stderr, "");
});

test("plan CLI: a teacher recipe is refused in one line naming dmd2 train-teacher", async () => {
  const r = await cli(["plan", "recipes/digits-teacher.yaml"]);
  assert.equal(r.exitCode, 2);
  assert.equal(r.stdout, "");
  assert.deepEqual(r.stderr.trim().split("\n"), [
    "error: recipes/digits-teacher.yaml is a teacher recipe (it has model:): dmd2 plan covers distillation recipes",
    "train the teacher with dmd2 train-teacher recipes/digits-teacher.yaml, then plan a distillation recipe that uses it (teacher.source: diffusers, e.g. recipes/digits.yaml)",
  ]);
});

test("plan CLI: a bad --set exits 2 with distill's one-line message", async () => {
  const r = await cli(["plan", "recipes/tiny.yaml", "--set", "train.stepz=5"]);
  assert.equal(r.exitCode, 2);
  assert.equal(r.stdout, "");
  assert.deepEqual(r.stderr.trim().split("\n"), ['error: --set: train.stepz: unknown key (did you mean "steps"?)']);
  const range = await cli(["plan", "recipes/tiny.yaml", "--set", "train.steps=0"]);
  assert.equal(range.exitCode, 2);
  assert.deepEqual(range.stderr.trim().split("\n"), ["error: --set: train.steps: 0 is out of range (must be >= 1)"]);
});

test("plan shows the placement per role: devices, replicas and strategy, processes; memory per rank", () => {
  const base = plan(load(tinyFile));
  const p = plan(load(tinyFile, ["roles.generator.replicas=2", "roles.fake_score.replicas=2", "roles.fake_score.strategy=fsdp", "precision=bf16"]));
  assert.equal(p.placement.processes, 5);
  assert.deepEqual(p.placement.workers.map((w) => [w.name, w.replicas, w.strategy, w.precision]), [
    ["teacher", 1, "replicate", "bf16"],
    ["generator", 2, "replicate", "bf16"],
    ["fake_score", 2, "fsdp", "bf16"],
  ]);
  const role = (q: Plan, worker: string, r: string) => q.memory.workers.find((w) => w.worker === worker)!.roles.find((x) => x.role === r)!;
  // a replica sees half the batch; fsdp holds half of what it trains, replicate all of it
  assert.equal(role(p, "generator", "generator").activationBytes, role(base, "generator", "generator").activationBytes! / 2);
  assert.equal(role(p, "generator", "generator").weightsBytes, role(base, "generator", "generator").weightsBytes);
  assert.equal(role(p, "fake_score", "fake_score").optimizerBytes, role(base, "fake_score", "fake_score").optimizerBytes / 2);
  const text = formatPlan(p);
  assert.match(text, /fake_score\s+fake_score, discriminator\s+cpu\s+2 \(fsdp\)\s+bf16/);
  assert.match(text, /5 worker processes x 1 thread on 2 cores/);
});

test("plan counts the whole chain's graph in the generator's memory with generator.backprop_through_chain", () => {
  const role = (q: Plan, r: string) => q.memory.workers.flatMap((w) => w.roles).find((x) => x.role === r)!;
  const base = plan(load(tinyFile));
  const chain = plan(load(tinyFile, ["generator.backprop_through_chain=true"]));
  const steps = load(tinyFile).generator.steps;
  assert.ok(steps > 1);
  assert.equal(role(chain, "generator").activationBytes, steps * role(base, "generator").activationBytes!);
  assert.match(role(chain, "generator").activationBasis, new RegExp(`^${steps} forwards \\+ backward at batch \\d+ \\(generator.backprop_through_chain`));
  assert.equal(role(chain, "fake_score").activationBytes, role(base, "fake_score").activationBytes);
});
