// Sampling speed: images per second of the distilled student (the few-step generator sampler at 1, 2 and 4
// steps) and of its teacher (deterministic DDIM, 50 steps), in one Python process
// (python -m dmd2_worker.bench sample). The teacher is the tiny recipe's built-in teacher (trained, cached); the
// student's weights are the generator of the bench's tiny colocated run (speed does not depend on them).

import { runPythonBench } from "./python.js";
import { summarize, type Summary } from "./stats.js";

export interface SamplingSettings {
  n: number;
  repeats: number;
  threads: number;
  studentSteps: number[];
  teacherSteps: number[];
}

export interface SamplingRow {
  model: "student" | "teacher";
  steps: number;
  n: number;
  /** images per second over the repeats */
  images_per_s: Summary;
  times_s: number[];
}

export interface SamplingResult {
  torch_threads: number;
  guidance_scale: number;
  teacher_dir: string;
  generator_weights: string | null;
  rows: SamplingRow[];
}

interface Reply {
  rows: Array<{ model: "student" | "teacher"; steps: number; n: number; times_s: number[]; images_per_s: number[] }>;
  torch_threads: number;
  teacher_dir: string;
  generator_weights: string | null;
  guidance_scale: number;
}

export async function benchSampling(settings: SamplingSettings, resolvedRecipe: string, generatorWeights: string | null, runDir: string, env: Record<string, string>): Promise<SamplingResult> {
  const args = [
    "sample",
    "--recipe", resolvedRecipe,
    "--run-dir", runDir,
    "--n", String(settings.n),
    "--repeats", String(settings.repeats),
    "--threads", String(settings.threads),
    "--student-steps", settings.studentSteps.join(","),
    "--teacher-steps", settings.teacherSteps.join(","),
    ...(generatorWeights ? ["--generator-weights", generatorWeights] : []),
  ];
  const reply = await runPythonBench<Reply>(args, env, settings.threads);
  return {
    torch_threads: reply.torch_threads,
    guidance_scale: reply.guidance_scale,
    teacher_dir: reply.teacher_dir,
    generator_weights: reply.generator_weights,
    rows: reply.rows.map((r) => ({ model: r.model, steps: r.steps, n: r.n, images_per_s: summarize(r.images_per_s), times_s: r.times_s })),
  };
}
