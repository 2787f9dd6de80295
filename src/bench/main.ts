// `npm run bench` (node dist/src/bench/main.js [--quick] [--out DIR] [--only steps,transport,sampling]
// [--variants tiny,compute,digits] [--keep]; --help says what each does): measures, side by side in one
// invocation, the step time of the orchestrated run against the plain Python loop and between placements, the
// transport against a bare ZeroMQ pair, and sampling speed; prints one table of ratios and writes results.json
// and results.md (default: docs/bench/; with --quick: a temporary folder).

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseBenchArgs, runIfMain } from "./cli.js";
import { PROJECT_ROOT } from "../workers/python.js";
import { describeMachine, loadAverage } from "./machine.js";
import { markdownReport, samplingRows, stepRows, textTable, transportRows, type BenchResults, type Row } from "./report.js";
import { benchSampling, type SamplingResult, type SamplingSettings } from "./sampling.js";
import { benchVariant, type StepResult, type StepVariant } from "./steps.js";
import { benchTransport, type TransportResult, type TransportSettings } from "./transport.js";

const SECTIONS = ["steps", "transport", "sampling"] as const;
type Section = (typeof SECTIONS)[number];

export interface BenchSettings {
  quick: boolean;
  variants: StepVariant[];
  transport: TransportSettings;
  sampling: SamplingSettings;
}

const MiB = 2 ** 20;

/** The compute-dominated variant: the tiny recipe with a wider network on larger images and a larger batch. */
const COMPUTE_SETS = ["teacher.builtin.channels=64", "data.gmm.image_size=16", "train.batch_size=256", "teacher.builtin.train_steps=50"];

/**
 * The digits recipe (a diffusers UNet2DModel teacher, GAN on, 4-step generator, TTUR 5): its teacher is trained
 * for a few steps into the scratch folder first (step time does not depend on how well it is trained). 5 warm-up
 * steps and 20 timed (one and four TTUR cycles), 2 rounds: about 2 minutes on 2 cores.
 */
export const DIGITS_VARIANT: StepVariant = {
  id: "digits",
  label: "recipes/digits.yaml, teacher trained 20 steps",
  recipe: "recipes/digits.yaml",
  sets: [],
  prepare: { kind: "train-teacher", recipe: "recipes/digits-teacher.yaml", sets: ["train.steps=20", "train.log_every=20"] },
  aOverCTarget: 1.25,
  warmup: 5,
  steps: 20,
  rounds: 2,
};

export function benchSettings(quick: boolean): BenchSettings {
  if (quick) {
    return {
      quick,
      // Tiny recipe only, a few steps, a barely trained teacher, 1 thread per process: the smoke test must stay
      // well under a minute also on a busy machine.
      variants: [{ id: "tiny", label: "recipes/tiny.yaml (quick: teacher barely trained)", recipe: "recipes/tiny.yaml", sets: ["teacher.builtin.train_steps=10"], warmup: 5, steps: 5, rounds: 1, threads: 1 }],
      transport: { controlReps: 50, rounds: 1, payloads: [[64 * 1024, 3], [MiB, 3], [16 * MiB, 2], [64 * MiB, 1]] },
      sampling: { n: 16, repeats: 2, threads: 1, studentSteps: [1, 2, 4], teacherSteps: [50] },
    };
  }
  return {
    quick,
    variants: [
      { id: "tiny", label: "recipes/tiny.yaml", recipe: "recipes/tiny.yaml", sets: [], warmup: 10, steps: 100, rounds: 2 },
      { id: "compute", label: "channels 64, 16x16 images, batch 256", recipe: "recipes/tiny.yaml", sets: COMPUTE_SETS, warmup: 5, steps: 15, rounds: 1, aOverCTarget: 1.05, bOverATarget: 1.1 },
      DIGITS_VARIANT,
    ],
    transport: { controlReps: 2000, rounds: 8, payloads: [[64 * 1024, 400], [MiB, 200], [16 * MiB, 128], [64 * MiB, 40]] },
    sampling: { n: 256, repeats: 5, threads: 1, studentSteps: [1, 2, 4], teacherSteps: [50] },
  };
}

/** Indented JSON, but arrays of numbers on one line, and times and rates to 6 significant digits. */
function toJson(value: unknown): string {
  const text = JSON.stringify(value, (_key, v: unknown) => (typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(6)) : v), 1);
  return text.replace(/\[(\s*-?[\d.e+-]+(?:,\s*-?[\d.e+-]+)*\s*)\]/g, (_m, body: string) => `[${body.trim().split(/,\s*/).join(", ")}]`);
}

function usage(): string {
  return [
    "usage: node dist/src/bench/main.js [--quick] [--out DIR] [--only steps,transport,sampling] [--variants IDS] [--keep]",
    "  --quick           the smoke mode: tiny sizes, 1 thread, results in a temporary folder",
    "  --out DIR         where results.json and results.md go (default docs/bench/; with --quick a temporary folder)",
    "  --only SECTIONS   run only these sections, comma-separated: steps, transport, sampling (default all)",
    "  --variants IDS    the step-time section runs only these variants, comma-separated: tiny, compute, digits",
    "                    (--quick: tiny) (default all)",
    "  --keep            keep the scratch folder",
    "a run of some sections or variants writes results.json and results.md too: give --out to keep docs/bench/ as it is",
  ].join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const values = parseBenchArgs(
    argv,
    {
      quick: { type: "boolean", default: false },
      out: { type: "string" },
      only: { type: "string" },
      variants: { type: "string" },
      keep: { type: "boolean", default: false },
    },
    usage(),
  );
  if (typeof values === "number") return values;
  const quick = values.quick ?? false;
  const only = new Set<Section>();
  for (const s of (values.only ?? SECTIONS.join(",")).split(",").map((x) => x.trim()).filter(Boolean)) {
    if (!(SECTIONS as readonly string[]).includes(s)) {
      process.stderr.write(`--only: unknown section "${s}" (sections: ${SECTIONS.join(", ")})\n`);
      return 2;
    }
    only.add(s as Section);
  }
  const settings = benchSettings(quick);
  const ids = settings.variants.map((v) => v.id);
  const wanted = values.variants === undefined ? ids : values.variants.split(",").map((x) => x.trim()).filter(Boolean);
  const unknown = wanted.filter((id) => !ids.includes(id));
  if (unknown.length > 0 || wanted.length === 0) {
    process.stderr.write(`--variants: ${unknown.length > 0 ? `unknown variant "${unknown[0]}"` : "none given"} (variants${quick ? " with --quick" : ""}: ${ids.join(", ")})\n`);
    return 2;
  }
  const variants = settings.variants.filter((v) => wanted.includes(v.id));
  const outDir = path.resolve(values.out ?? (quick ? path.join(os.tmpdir(), "dmd2-bench-quick") : path.join(PROJECT_ROOT, "docs", "bench")));
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const env: Record<string, string> = { NO_COLOR: "1" };
  const work = mkdtempSync(path.join(os.tmpdir().length < 60 ? os.tmpdir() : "/tmp", "dmd2-bench-"));
  const t0 = performance.now();
  const loadStart = loadAverage();
  const cores = os.availableParallelism();
  log(`dmd2 bench${quick ? " --quick" : ""}: ${cores} cores, load average ${loadStart.join(" / ")}; scratch ${work}`);
  if (loadStart[0] > cores / 2) log(`  note: the machine is busy (1-minute load ${loadStart[0]} on ${cores} cores): timings will be noisy`);
  // The 1-minute load every 5 s: other programs starting mid-run show up here (and make a rerun worth it).
  const loadSamples: Array<[number, number]> = [[0, loadStart[0]]];
  const sampler = setInterval(() => loadSamples.push([Math.round((performance.now() - t0) / 1000), loadAverage()[0]]), 5000);
  sampler.unref();

  try {
    const machine = await describeMachine();
    const steps: StepResult[] = [];
    let resolvedTiny = "";
    let tinyCheckpoint = "";
    if (only.has("steps") || only.has("sampling")) {
      // Sampling needs the tiny variant's resolved recipe and a generator checkpoint: when tiny is not timed here,
      // a short colocated tiny run gives them.
      const tiny = settings.variants.find((v) => v.id === "tiny")!;
      const runs = [
        ...(only.has("steps") ? variants.map((v) => ({ v, timed: true })) : []),
        ...(only.has("sampling") && !(only.has("steps") && variants.includes(tiny)) ? [{ v: { ...tiny, warmup: 0, steps: 5, rounds: 1 }, timed: false }] : []),
      ];
      for (const { v, timed } of runs) {
        log(`step time, ${v.id}: ${v.recipe}${v.sets.length ? " " + v.sets.join(" ") : " (as is)"}${v.prepare ? `, after dmd2 ${v.prepare.kind} ${v.prepare.recipe}` : ""}`);
        const configs = timed ? undefined : [{ key: "colocated.default", mode: "colocated" as const, threads: null }];
        const outcome = await benchVariant(v, work, env, Math.max(1, cores), log, configs);
        if (timed) steps.push(...outcome.results);
        if (v.id === "tiny") {
          resolvedTiny = outcome.resolvedRecipe;
          tinyCheckpoint = outcome.checkpointDir;
        }
      }
    }
    let transport: TransportResult | null = null;
    if (only.has("transport")) {
      log("transport (ipc): protocol vs bare ZeroMQ pair");
      const dir = path.join(work, "transport");
      mkdirSync(dir, { recursive: true });
      transport = await benchTransport(settings.transport, dir, env, log);
    }
    let sampling: SamplingResult | null = null;
    if (only.has("sampling")) {
      log("sampling: student 1/2/4 steps vs teacher DDIM 50");
      sampling = await benchSampling(settings.sampling, resolvedTiny, path.join(tinyCheckpoint, "generator.safetensors"), path.join(work, "sampling"), env);
      for (const r of sampling.rows) log(`  ${r.model} ${r.steps} step(s): ${r.images_per_s.median.toFixed(0)} images/s`);
    }

    const rows: Row[] = [
      ...stepRows(variants, steps),
      ...(transport ? transportRows(transport) : []),
      ...(sampling ? samplingRows(sampling) : []),
    ];
    const results: BenchResults = {
      format: "dmd2-bench",
      version: 1,
      quick,
      created: new Date().toISOString(),
      duration_s: (performance.now() - t0) / 1000,
      machine,
      load: { start: loadStart, end: loadAverage(), max_1min: Math.max(...loadSamples.map(([, l]) => l)), samples: loadSamples },
      settings: { ...settings, variants, sections: [...only] } as unknown as Record<string, unknown>,
      steps,
      transport,
      sampling,
      rows,
    };
    mkdirSync(outDir, { recursive: true });
    writeFileSync(path.join(outDir, "results.json"), toJson(results) + "\n");
    writeFileSync(path.join(outDir, "results.md"), markdownReport(results, only.has("steps") ? variants : []) + "\n");

    process.stdout.write(`\n${textTable(rows)}\n\n`);
    process.stdout.write(
      `${machine.cpu_model}, ${machine.cores} cores; node ${machine.node}, Python ${machine.python.python}, torch ${machine.python.torch}; ` +
        `load average ${results.load.start.join("/")} at start, ${results.load.end.join("/")} at end; ${results.duration_s.toFixed(0)} s\n`,
    );
    // This run itself keeps up to `cores` threads busy; more than that is other programs.
    if (results.load.max_1min > cores + 0.5) {
      process.stdout.write(
        `note: the 1-minute load reached ${results.load.max_1min} on ${cores} cores during the run (other programs): ` +
          "configurations with as many torch threads as cores suffer most; rerun when the machine is idle\n",
      );
    }
    process.stdout.write(`wrote ${path.relative(process.cwd(), path.join(outDir, "results.json")) || "results.json"} and results.md\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`bench failed: ${(error as Error).stack ?? error}\n`);
    return 1;
  } finally {
    clearInterval(sampler);
    if (values.keep) log(`scratch kept: ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

runIfMain(import.meta.url, main, "bench");
