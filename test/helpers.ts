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

/**
 * The JSON files of a text-to-image pipeline folder the CLI reads (no weights), a prompts file and an (empty) image
 * folder beside it: the `--set` overrides that make a `data.source: prompts` recipe load without a real pipeline.
 */
export function fakeTextPipeline(dir: string, className: "StableDiffusionPipeline" | "StableDiffusionXLPipeline"): string[] {
  mkdirSync(path.join(dir, "unet"), { recursive: true });
  mkdirSync(path.join(dir, "scheduler"), { recursive: true });
  mkdirSync(path.join(dir, "real-images"), { recursive: true });
  writeFileSync(path.join(dir, "model_index.json"), JSON.stringify({ _class_name: className }));
  writeFileSync(path.join(dir, "unet", "config.json"), JSON.stringify({ _class_name: "UNet2DConditionModel", sample_size: className === "StableDiffusionPipeline" ? 64 : 128 }));
  writeFileSync(path.join(dir, "scheduler", "scheduler_config.json"), JSON.stringify({ _class_name: "PNDMScheduler", num_train_timesteps: 1000, beta_schedule: "scaled_linear", beta_start: 0.00085, beta_end: 0.012 }));
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
