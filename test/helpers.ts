// Shared by the tests: paths and the project's Python.
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { RecipeError } from "../src/errors.js";

/** Tests are compiled to dist/test/; the project root is two levels up. */
export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const projectPython = process.env.DMD2_PYTHON ?? path.join(projectRoot, ".venv", "bin", "python");
export const cliEntry = path.join(projectRoot, "bin", "dmd2.js");

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";

const scratch: string[] = [];
process.on("exit", () => {
  if (process.env.DMD2_KEEP_TEST_DIRS) return;
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

/** A new folder under the OS temp folder, removed when the test process exits (kept with DMD2_KEEP_TEST_DIRS=1, to look into a failure). */
export function scratchDir(prefix: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  scratch.push(dir);
  return dir;
}

/** The files of a diffusers teacher folder the CLI reads (no weights): the default scheduler of a recipe, with `scheduler` on top. */
export function fakeTeacher(dir: string, scheduler: Record<string, unknown>): string {
  const defaults = { num_train_timesteps: 1000, beta_schedule: "scaled_linear", beta_start: 0.00085, beta_end: 0.012, prediction_type: "epsilon" };
  mkdirSync(path.join(dir, "unet"), { recursive: true });
  mkdirSync(path.join(dir, "scheduler"), { recursive: true });
  writeFileSync(path.join(dir, "model_index.json"), JSON.stringify({ _class_name: "DDPMPipeline", unet: ["diffusers", "UNet2DModel"], scheduler: ["diffusers", "DDPMScheduler"] }));
  writeFileSync(path.join(dir, "unet", "config.json"), JSON.stringify({ _class_name: "UNet2DModel", sample_size: 8 }));
  writeFileSync(path.join(dir, "scheduler", "scheduler_config.json"), JSON.stringify({ _class_name: "DDPMScheduler", ...defaults, ...scheduler }));
  return dir;
}

/** Writes a float32 safetensors file of zeros with these tensors (test-only: a stand-in for real weights). */
export function writeSafetensors(file: string, tensors: Record<string, number[]>): void {
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const [name, shape] of Object.entries(tensors)) {
    const bytes = 4 * shape.reduce((a, b) => a * b, 1);
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, Buffer.concat([len, json, Buffer.alloc(offset)]));
}

/**
 * Stand-in UNet tensors with one layer of every kind the default LoRA targets name (an SD-like naming, tiny
 * shapes): 2-d Linear weights, 4-d Conv2d weights, and biases and norms LoRA leaves alone.
 */
export const STAND_IN_UNET: Record<string, number[]> = {
  "conv_in.weight": [8, 4, 3, 3],
  "down_blocks.0.resnets.0.conv1.weight": [8, 8, 3, 3],
  "down_blocks.0.resnets.0.conv1.bias": [8],
  "down_blocks.0.resnets.0.conv2.weight": [8, 8, 3, 3],
  "down_blocks.0.resnets.0.norm1.weight": [8],
  "down_blocks.0.attentions.0.proj_in.weight": [8, 8, 1, 1],
  "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight": [8, 8],
  "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": [8, 12],
  "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight": [8, 12],
  "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.weight": [8, 8],
  "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.bias": [8],
  "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight": [64, 8],
  "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight": [8, 32],
  "down_blocks.0.attentions.0.proj_out.weight": [8, 8, 1, 1],
  "conv_out.weight": [4, 8, 3, 3],
};

/**
 * The files of a text-to-image pipeline folder the CLI reads (stand-in weights: STAND_IN_UNET and one small
 * tensor per text encoder and VAE, so that dmd2 plan can size it), a prompts file and an (empty) image folder
 * beside it: the `--set` overrides that make a `data.source: prompts` recipe load without a real pipeline.
 */
export function fakeTextPipeline(dir: string, className: "StableDiffusionPipeline" | "StableDiffusionXLPipeline"): string[] {
  mkdirSync(path.join(dir, "unet"), { recursive: true });
  mkdirSync(path.join(dir, "scheduler"), { recursive: true });
  mkdirSync(path.join(dir, "real-images"), { recursive: true });
  writeFileSync(path.join(dir, "model_index.json"), JSON.stringify({ _class_name: className }));
  // SD 1.5's and SDXL's text widths: 768; 2048 with a 1280-wide pooled embedding beside 6 time ids of 256
  const text = className === "StableDiffusionPipeline" ? { cross_attention_dim: 768 } : { cross_attention_dim: 2048, addition_embed_type: "text_time", projection_class_embeddings_input_dim: 2816, addition_time_embed_dim: 256 };
  writeFileSync(path.join(dir, "unet", "config.json"), JSON.stringify({ _class_name: "UNet2DConditionModel", sample_size: className === "StableDiffusionPipeline" ? 64 : 128, ...text }));
  writeFileSync(path.join(dir, "scheduler", "scheduler_config.json"), JSON.stringify({ _class_name: "PNDMScheduler", num_train_timesteps: 1000, beta_schedule: "scaled_linear", beta_start: 0.00085, beta_end: 0.012 }));
  mkdirSync(path.join(dir, "tokenizer"), { recursive: true });
  writeFileSync(path.join(dir, "tokenizer", "tokenizer_config.json"), JSON.stringify({ model_max_length: 77 }));
  writeSafetensors(path.join(dir, "unet", "diffusion_pytorch_model.safetensors"), STAND_IN_UNET);
  const encoders = className === "StableDiffusionPipeline" ? ["text_encoder"] : ["text_encoder", "text_encoder_2"];
  for (const e of encoders) writeSafetensors(path.join(dir, e, "model.safetensors"), { "text_model.embeddings.token_embedding.weight": [10, 4] });
  writeSafetensors(path.join(dir, "vae", "diffusion_pytorch_model.safetensors"), { "decoder.conv_out.weight": [3, 4, 3, 3] });
  writeFileSync(path.join(dir, "prompts.txt"), "a photo of a cat\n");
  return [`teacher.path=${dir}`, `data.prompts.file=${path.join(dir, "prompts.txt")}`, `data.prompts.images=${path.join(dir, "real-images")}`];
}

/** Reads a float32 safetensors file into name -> Float32Array (test-only; the coordinator never reads tensors). */
export function readSafetensors(file: string): Map<string, Float32Array> {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, Float32Array>();
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (info.dtype !== "F32") throw new Error(`${file}: ${name} is ${info.dtype}, expected F32`);
    const [a, b] = info.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    out.set(name, new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)));
  }
  return out;
}

/** Largest absolute difference between two state dicts with the same keys and shapes. */
export function maxAbsDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  if ([...a.keys()].sort().join() !== [...b.keys()].sort().join()) throw new Error("state dicts have different keys");
  let m = 0;
  for (const [k, x] of a) {
    const y = b.get(k)!;
    if (x.length !== y.length) throw new Error(`${k}: sizes differ`);
    for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]! - y[i]!));
  }
  return m;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The problem lines of the RecipeError (exit code 2) that `fn` must throw. */
export function issuesOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof RecipeError, `expected RecipeError, got ${e}`);
    assert.equal(e.exitCode, 2);
    return e.lines();
  }
  assert.fail("expected the recipe to be rejected");
}
