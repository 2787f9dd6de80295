// The default torch_threads (src/recipe/threads.ts, docs/recipe.md): one worker gets all cores; per_role splits
// them for small networks and gives each worker all cores when compute dominates, sized from the recipe or the
// diffusers teacher's unet/config.json; an explicit torch_threads is kept; `dmd2 plan` says why instead of
// warning about the deliberate oversubscription.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { benchSettings } from "../src/bench/main.js";
import { formatPlan } from "../src/plan/format.js";
import { unetMacsPerSample } from "../src/unet/params.js";
import { buildPlan } from "../src/plan/plan.js";
import { COMPUTE_BOUND_MACS, defaultTorchThreads, forwardWork } from "../src/recipe/threads.js";
import { unet2dArch, unet2dMacsPerSample } from "../src/unet/unet2d.js";
import { loadRecipe } from "../src/recipe/load.js";
import type { Recipe } from "../src/recipe/types.js";
import { fakeTeacher, projectRoot, scratchDir } from "./helpers.js";

const tmp = scratchDir("dmd2-threads-");
const tinyFile = path.join(projectRoot, "recipes", "tiny.yaml");
const digitsFile = path.join(projectRoot, "recipes", "digits.yaml");
const load = (file: string, overrides: string[] = [], cpuCount = 2): Recipe => loadRecipe(file, { cwd: tmp, cpuCount, overrides });

const bench = benchSettings(false).variants;
const setsOf = (id: string) => bench.find((v) => v.id === id)!.sets;

/** recipes/digits-teacher.yaml's network as UNet2DModel.save_pretrained writes it (test/plan.test.ts has the full config) */
const DIGITS_UNET = {
  _class_name: "UNet2DModel", add_attention: false, block_out_channels: [32, 64], down_block_types: ["DownBlock2D", "DownBlock2D"],
  up_block_types: ["UpBlock2D", "UpBlock2D"], in_channels: 1, out_channels: 1, layers_per_block: 1, norm_num_groups: 8, num_class_embeds: 11, sample_size: 8,
};
/** a narrower one: blocks [8, 16] */
const SMALL_UNET = { ...DIGITS_UNET, block_out_channels: [8, 16], norm_num_groups: 4 };

function teacher(name: string, unetConfig: Record<string, unknown> | string): string {
  const dir = fakeTeacher(path.join(tmp, "teachers", name), {});
  writeFileSync(path.join(dir, "unet", "config.json"), typeof unetConfig === "string" ? unetConfig : JSON.stringify(unetConfig));
  writeFileSync(path.join(dir, "dmd2_teacher.json"), JSON.stringify({ format: 1, num_classes: 10, null_class: 10, data: { source: "digits" } }));
  return dir;
}

test("multiply-accumulates per sample equal torch's FlopCounterMode count (+ attention's two pixel x pixel products)", () => {
  // torch.utils.flop_counter.FlopCounterMode's total FLOPs / 2 for one no-grad forward at batch 1 (torch 2.13 CPU,
  // diffusers 0.42.1); on CPU it does not count scaled_dot_product_attention, which the estimate includes
  const tiny: [number, number, number | null, number][] = [[16, 8, 4, 275_520], [64, 16, 4, 16_302_336], [32, 16, null, 4_149_376], [24, 32, 10, 9_384_288]];
  for (const [channels, imageSize, numClasses, counted] of tiny) {
    assert.equal(unetMacsPerSample({ inChannels: 1, imageSize, channels, channelMult: [1, 2], numClasses }), counted, `TinyUNet c ${channels}, ${imageSize}x${imageSize}`);
  }
  const unet2d: [string, Record<string, unknown>, number, number][] = [
    ["digits teacher", DIGITS_UNET, 15_003_648, 0],
    ["3 levels, mid attention, RGB", {
      sample_size: 16, in_channels: 3, out_channels: 3, block_out_channels: [16, 32, 64], layers_per_block: 2, norm_num_groups: 8, add_attention: true, attention_head_dim: 8,
      down_block_types: ["DownBlock2D", "DownBlock2D", "DownBlock2D"], up_block_types: ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    }, 32_219_136, 32_768],
    ["attention blocks, resnet resamplers, scale_shift", {
      sample_size: 16, in_channels: 1, out_channels: 1, block_out_channels: [16, 32], layers_per_block: 1, norm_num_groups: 8, attention_head_dim: null,
      down_block_types: ["AttnDownBlock2D", "AttnDownBlock2D"], up_block_types: ["AttnUpBlock2D", "AttnUpBlock2D"], downsample_type: "resnet", upsample_type: "resnet", resnet_time_scale_shift: "scale_shift",
    }, 19_346_432, 7_340_032],
    ["3 levels, attention at 16x16, own time embedding width", {
      sample_size: 32, in_channels: 3, out_channels: 3, block_out_channels: [32, 64, 64], layers_per_block: 2, norm_num_groups: 8, attention_head_dim: 16, time_embedding_dim: 96,
      down_block_types: ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"], up_block_types: ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    }, 381_717_504, 45_088_768],
  ];
  for (const [name, config, counted, attention] of unet2d) {
    const a = unet2dArch(config);
    assert.ok("arch" in a, name);
    assert.equal(unet2dMacsPerSample(a.arch, a.arch.imageSize!), counted + attention, name);
  }
});

test("the threshold: recipes/tiny.yaml and the bench's tiny variant split the cores, the bench's compute variant and recipes/digits.yaml give each worker all of them", () => {
  const tiny = load(tinyFile);
  assert.equal(tiny.torch_threads, 1, "2 cores / 3 workers, at least 1");
  const t = defaultTorchThreads(tiny, 2);
  assert.deepEqual([t.rule, t.forwardMacs], ["split", 275_520 * 32]);
  assert.match(t.reason, /^split between the 3 workers: small networks, 9M multiply-accumulates per forward at batch 32 \(all cores from 134M\)$/);
  assert.ok(t.forwardMacs! * 8 < COMPUTE_BOUND_MACS, "tiny is far below the threshold");
  assert.equal(load(tinyFile, setsOf("tiny")).torch_threads, 1);

  const compute = load(tinyFile, setsOf("compute"));
  assert.equal(compute.torch_threads, 2);
  const c = defaultTorchThreads(compute, 2);
  assert.deepEqual([c.rule, c.forwardMacs], ["compute-bound", 16_302_336 * 256]);
  assert.ok(c.forwardMacs! > 16 * COMPUTE_BOUND_MACS, "the compute variant is far above the threshold");
  assert.match(c.reason, /^all cores: compute-bound networks, 4,173M multiply-accumulates per forward at batch 256; the roles mostly take turns$/);
  assert.equal(load(tinyFile, setsOf("compute"), 8).torch_threads, 8, "all cores, whatever their number");
  assert.equal(load(tinyFile, [], 8).torch_threads, 2, "tiny on 8 cores: floor(8 / 3)");

  // the size measure is work per forward: the batch counts, so does the image size
  assert.equal(load(tinyFile, ["teacher.builtin.channels=64", "data.gmm.image_size=16", "train.batch_size=4"]).torch_threads, 1);
  assert.equal(load(tinyFile, ["teacher.builtin.channels=64", "data.gmm.image_size=8", "train.batch_size=256"]).torch_threads, 2);
});

test("an explicit torch_threads is kept; colocated gets all cores at any size", () => {
  assert.equal(load(tinyFile, [...setsOf("compute"), "torch_threads=1"]).torch_threads, 1);
  assert.equal(load(tinyFile, ["torch_threads=3"]).torch_threads, 3);
  for (const sets of [[], setsOf("compute")]) {
    for (const cores of [1, 2, 6]) {
      const r = load(tinyFile, [...sets, "placement=colocated"], cores);
      assert.equal(r.torch_threads, cores);
      assert.equal(defaultTorchThreads(r, cores).rule, "one worker");
    }
  }
  assert.equal(load(tinyFile, [], 1).torch_threads, 1, "at least 1");
});

test("a diffusers teacher is sized from its unet/config.json; a folder that cannot be sized splits the cores", () => {
  const big = teacher("digits", DIGITS_UNET);
  const r = load(digitsFile, [`teacher.path=${big}`]);
  assert.deepEqual(forwardWork(r), { macsPerSample: 15_003_648, batch: 64, macs: 15_003_648 * 64 });
  assert.equal(r.torch_threads, 2, "recipes/digits.yaml: ~960M per forward");
  assert.equal(load(digitsFile, [`teacher.path=${big}`, "train.batch_size=8"]).torch_threads, 1, "the same network at batch 8: ~120M");

  const small = teacher("small", SMALL_UNET);
  const s = load(digitsFile, [`teacher.path=${small}`]);
  assert.equal(s.torch_threads, 1);
  assert.equal(defaultTorchThreads(s, 2).rule, "split");
  assert.equal(load(digitsFile, [`teacher.path=${small}`, "placement=colocated"]).torch_threads, 2);

  // no sample_size: the data's image size (digits: 8x8)
  const { sample_size: _, ...unsized } = DIGITS_UNET;
  assert.equal(load(digitsFile, [`teacher.path=${teacher("unsized", unsized)}`]).torch_threads, 2);

  // what the plan cannot size, or cannot read, falls back to the split (other code reports a bad folder)
  const cases: [string, Record<string, unknown> | string, RegExp][] = [
    ["cross-attention", { ...DIGITS_UNET, down_block_types: ["CrossAttnDownBlock2D", "DownBlock2D"] }, /block type CrossAttnDownBlock2D is not modelled/],
    ["broken", "{ not json", /config\.json is not readable JSON/],
  ];
  for (const [name, config, why] of cases) {
    const b = load(digitsFile, [`teacher.path=${teacher(name, config)}`]);
    assert.equal(b.torch_threads, 1, name);
    const d = defaultTorchThreads(b, 2);
    assert.deepEqual([d.rule, d.forwardMacs], ["split", null], name);
    assert.match(d.reason, why, name);
  }
});

test("a device other than the CPU keeps the split: the accelerator does the compute", () => {
  const r = { ...load(tinyFile, setsOf("compute")), device: "cuda" };
  const d = defaultTorchThreads(r, 2);
  assert.deepEqual([d.threads, d.rule], [1, "split"]);
  assert.match(d.reason, /device cuda does the compute/);
});

test("dmd2 plan: the all-cores default is explained, not warned about; an oversubscription the user chose still is", () => {
  const line = (r: Recipe) => formatPlan(buildPlan(r, tinyFile, { cpuCount: 2 })).split("\n").find((l) => /worker process/.test(l))!;
  const compute = line(load(tinyFile, setsOf("compute")));
  assert.match(compute, /3 worker processes x 2 threads on 2 cores \(all cores: compute-bound networks, 4,173M multiply-accumulates per forward at batch 256; the roles mostly take turns\)$/);
  assert.doesNotMatch(compute, /more threads than cores/);
  assert.equal(line(load(tinyFile)), "  3 worker processes x 1 thread on 2 cores (split between the 3 workers: small networks, 9M multiply-accumulates per forward at batch 32 (all cores from 134M))");
  assert.match(line(load(tinyFile, ["torch_threads=2"])), /3 worker processes x 2 threads on 2 cores \(more threads than cores: torch_threads 1 avoids that\)/);
  assert.match(line(load(tinyFile, [...setsOf("compute"), "torch_threads=4"])), /more threads than cores: torch_threads 1 avoids that/);
  assert.equal(line(load(tinyFile, ["placement=colocated"])), "  1 worker process x 2 threads on 2 cores");
  const p = buildPlan(load(tinyFile, setsOf("compute")), tinyFile, { cpuCount: 2 });
  assert.deepEqual([p.placement.threadsDefault.rule, p.placement.threadsDefault.threads], ["compute-bound", 2]);
});
