// `npm run bench:quality` (node dist/src/bench/quality.js [--set key=value]... [--teacher-set key=value]...
// [--n N] [--out DIR]): the digits benchmark of docs/pipeline.md, in one invocation and through the CLI as a
// user runs it: (a) dmd2 train-teacher recipes/digits-teacher.yaml, (b) dmd2 distill recipes/digits-1step.yaml and
// recipes/digits.yaml (4 steps) from that teacher, both at once (each with half the cores: these small networks
// use two cores poorly, two runs side by side finish sooner than one after the other), (c) dmd2 eval of the teacher at 1-50 DDIM steps and the students
// at 1, 2, 4 steps (up to the steps each was trained for), with a
// picture. Writes quality.md and quality.json (default docs/bench/) and the picture (default
// docs/img/digits-compare.png; with --out, into that folder). Scratch: $DMD2_BENCH_DIR, else a new
// temporary folder; it is kept (the teacher and both runs are in it).

import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseBenchArgs, runIfMain } from "./cli.js";
import { execa } from "execa";
import { notes, textTable, type EvalResult } from "../eval/table.js";
import { PROJECT_ROOT } from "../workers/python.js";
import { describeMachine, loadAverage } from "./machine.js";
import { qualityMarkdown, tableRows, type QualityResults, type Stage } from "./qualityReport.js";

const TEACHER_STEPS = "1,2,4,10,25,50";
const cli = path.join(PROJECT_ROOT, "bin", "dmd2.js");

function usage(): string {
  return "usage: npm run bench:quality -- [--set key=value]... [--teacher-set key=value]... [--n N] [--repeats K] [--out DIR]";
}

/**
 * Runs `dmd2 <args>` in the project root, its progress on this terminal (or, `quiet`, only its errors); returns its
 * stdout (captured when asked).
 */
async function dmd2(args: string[], captureStdout: boolean, quiet = false): Promise<string> {
  const r = await execa("node", [cli, ...args, ...(quiet ? ["-q"] : [])], { cwd: PROJECT_ROOT, reject: false, stdin: "ignore", stdout: captureStdout ? "pipe" : "inherit", stderr: "inherit" });
  if (r.exitCode !== 0) throw new Error(`dmd2 ${args.join(" ")} failed with exit code ${r.exitCode ?? r.signal}`);
  return String(r.stdout ?? "");
}

/** "1-step: step 1200 of 4000, 4-step: step 900 of 2000" from the runs' metrics.jsonl files (quiet runs print nothing). */
function runProgress(runs: Array<{ name: string; dir: string }>): string {
  return runs
    .map((r) => {
      const file = path.join(r.dir, "metrics.jsonl");
      let step: number | undefined;
      try {
        const lines = existsSync(file) ? readFileSync(file, "utf8").trimEnd().split("\n") : [];
        step = (JSON.parse(lines[lines.length - 1] || "{}") as { step?: number }).step;
      } catch {
        step = undefined; // a line being written
      }
      return `${r.name}: ${step === undefined ? "starting" : `step ${step}`}`;
    })
    .join(", ");
}

export async function main(argv: string[]): Promise<number> {
  const values = parseBenchArgs(
    argv,
    {
      set: { type: "string", multiple: true, default: [] },
      "teacher-set": { type: "string", multiple: true, default: [] },
      // with 1000 samples a model's FD moved by up to 0.7 between sampling seeds (1-step student 1.86 / 1.69 / 1.14
      // at seeds 0 / 1 / 2), and even at 5000 one draw's FD moves by ~0.17 (sd over 10 seeds; 1-step student
      // 0.96-1.45), as much as the 4-step vs 1-step difference. So every row is the mean over 2 draws of 4000
      // (seeds 0 and 1; paired: the same noise for every model). 3 draws of 4000 took the whole pipeline to
      // 20.2 minutes (evaluation 223 s), over its 20-minute budget
      n: { type: "string", default: "4000" },
      repeats: { type: "string", default: "2" },
      out: { type: "string" },
    },
    usage(),
  );
  if (typeof values === "number") return values;
  if (!/^\d+$/.test(values.n) || Number(values.n) < 2) {
    process.stderr.write(`--n ${values.n}: expected a whole number >= 2\n${usage()}\n`);
    return 2;
  }
  if (!/^\d+$/.test(values.repeats) || Number(values.repeats) < 1) {
    process.stderr.write(`--repeats ${values.repeats}: expected a whole number >= 1\n${usage()}\n`);
    return 2;
  }
  const outDir = path.resolve(values.out ?? path.join(PROJECT_ROOT, "docs", "bench"));
  const picture = values.out === undefined ? path.join(PROJECT_ROOT, "docs", "img", "digits-compare.png") : path.join(outDir, "digits-compare.png");
  const work = path.resolve(process.env.DMD2_BENCH_DIR ?? mkdtempSync(path.join(os.tmpdir(), "dmd2-quality-")));
  const teacher = path.join(work, "teacher");
  const runs = [
    { name: "distill 1-step", recipe: "recipes/digits-1step.yaml", dir: path.join(work, "student-1step") },
    { name: "distill 4-step", recipe: "recipes/digits.yaml", dir: path.join(work, "student-4step") },
  ];
  const command = ["npm run bench:quality", ...(argv.length > 0 ? ["--", ...argv] : [])].join(" ");
  const log = (line: string) => process.stderr.write(`${line}\n`);
  // the stages run in the project root: paths below it are written relative to it
  const fromRoot = (p: string) => (path.relative(PROJECT_ROOT, p).startsWith("..") ? p : path.relative(PROJECT_ROOT, p));
  const asWork = (args: string[]) => `dmd2 ${args.join(" ").split(work).join("$WORK")}`;

  // the two distillations run side by side, each as one colocated worker process (the same roles and the same
  // numbers as per_role, test/e2e.test.ts) with its share of the cores: on 2 cores three processes per run
  // mostly wait on each other, and one process per run was ~25% faster for the 4-step run
  const threads = Math.max(1, Math.floor(os.cpus().length / runs.length));
  type PlannedStage = { name: string; args: string[]; capture: boolean };
  const plan: PlannedStage[][] = [
    [
      {
        name: "train teacher",
        args: ["train-teacher", "recipes/digits-teacher.yaml", "--out", teacher, "--force", ...values["teacher-set"].flatMap((s) => ["--set", s])],
        capture: false,
      },
    ],
    runs.map((r) => ({
      name: r.name,
      args: ["distill", r.recipe, "--set", `run_dir=${r.dir}`, "--set", `teacher.path=${teacher}`, "--set", "placement=colocated", "--set", `torch_threads=${threads}`, ...values.set.flatMap((s) => ["--set", s])],
      capture: false,
    })),
    [
      {
        name: "evaluate",
        // each student at 1, 2, 4 steps up to the steps it was trained for
        args: ["eval", teacher, ...runs.map((r) => r.dir), "--teacher-steps", TEACHER_STEPS, "--n", values.n, "--repeats", values.repeats, "--picture", fromRoot(picture), "--json"],
        capture: true,
      },
    ],
  ];

  try {
    const loadStart = loadAverage();
    const machine = await describeMachine();
    log(`dmd2 bench:quality: scratch ${work}`);
    mkdirSync(path.dirname(picture), { recursive: true });
    for (const r of runs) rmSync(r.dir, { recursive: true, force: true }); // a run folder left from before would be resumed, not trained
    const t0 = performance.now();
    const stages: Stage[] = [];
    let stdout = "";
    for (const phase of plan) {
      const together = phase.length > 1;
      for (const step of phase) log(`\n== ${step.name}${together ? " (alongside the others below)" : ""}: ${asWork(step.args)}`);
      const progress = together ? setInterval(() => log(`   ${runProgress(runs)}`), 30_000) : undefined;
      try {
        const done = await Promise.all(
          phase.map(async (step) => {
            const t = performance.now();
            const out = await dmd2(step.args, step.capture, together);
            return { out, stage: { name: step.name, command: asWork(step.args), seconds: (performance.now() - t) / 1000 } };
          }),
        );
        stages.push(...done.map((d) => d.stage));
        stdout = done[done.length - 1].out;
      } finally {
        clearInterval(progress);
      }
    }
    const evaluation = JSON.parse(stdout) as EvalResult;
    const results: QualityResults = {
      format: "dmd2-bench-quality",
      version: 1,
      created: new Date().toISOString(),
      command,
      work_dir: work,
      machine,
      load: { start: loadStart, end: loadAverage() },
      stages,
      total_s: (performance.now() - t0) / 1000,
      picture,
      evaluation,
      rows: tableRows(evaluation),
    };
    mkdirSync(outDir, { recursive: true });
    const md = path.join(outDir, "quality.md");
    writeFileSync(path.join(outDir, "quality.json"), JSON.stringify(results, null, 1) + "\n");
    writeFileSync(md, qualityMarkdown(results, md));
    process.stdout.write(`\n${textTable(evaluation)}\n${notes(evaluation)}\n\n`);
    process.stdout.write(`${stages.map((s) => `${s.name} ${s.seconds.toFixed(0)} s`).join(", ")}; total ${results.total_s.toFixed(0)} s\n`);
    process.stdout.write(`wrote ${path.relative(process.cwd(), md) || md}, quality.json and ${path.relative(process.cwd(), picture) || picture}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`bench:quality failed: ${(error as Error).message}\n(scratch kept: ${work})\n`);
    return 1;
  }
}

runIfMain(import.meta.url, main, "bench:quality");
