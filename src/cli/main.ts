// The entry point: the only top-level catch and the only process.exit. Commands throw DmdError subclasses
// carrying their exit code (docs/cli.md: 0 ok, 2 bad input, 1 failure, 130 interrupted).

import { existsSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { color as chalk } from "../colors.js";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { DmdError, RecipeError, shortenValue, UsageError, WorkerDiedError, WorkerError } from "../errors.js";
import type { Features } from "../eval/spec.js";
import { Reporter, type OutputMode } from "../run/reporter.js";

const here = path.dirname(fileURLToPath(import.meta.url));
export const projectRoot = path.resolve(here, "..", "..", "..");

function version(): string {
  try {
    return (JSON.parse(readFileSync(path.join(projectRoot, "package.json"), "utf8")) as { version: string }).version;
  } catch {
    return "unknown";
  }
}

/** The recipe argument's default: recipes/tiny.yaml here, else the project's own (dmd2 run from any folder). */
const DEFAULT_RECIPE = "recipes/tiny.yaml";
export function recipeArgument(file: string): string {
  return file === DEFAULT_RECIPE && !existsSync(file) ? path.join(projectRoot, DEFAULT_RECIPE) : file;
}

/** camelCase keys as snake_case: every --json event names its fields one way (run_dir, resumed_from, ...). */
export function snakeKeys(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), v]));
}

/** The --json result event of a command. */
const resultEvent = (res: object) => JSON.stringify({ event: "result", ...snakeKeys(res as Record<string, unknown>) }) + "\n";

interface OutputFlags {
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

function reporterFor(flags: OutputFlags): Reporter {
  const mode: OutputMode | undefined = flags.json ? "json" : undefined;
  return new Reporter({ mode, quiet: flags.quiet, verbose: flags.verbose });
}

const collect = (v: string, prev: string[]) => [...prev, v];
function intArg(name: string) {
  return (v: string) => {
    if (!/^-?\d+$/.test(v)) throw new InvalidArgumentError(`${name} must be a whole number, got "${v}"`);
    return Number(v);
  };
}
function stepList(name: string, max: number) {
  return (v: string) => {
    const parts = v.split(",").map((s) => s.trim());
    if (parts.some((p) => !/^\d+$/.test(p) || Number(p) < 1 || Number(p) > max)) {
      throw new InvalidArgumentError(`${name} takes comma-separated step counts from 1 to ${max}, like 1,2,4 — got "${v}"`);
    }
    return [...new Set(parts.map(Number))];
  };
}
function featuresArg(v: string): Features {
  if (v === "classifier") return { kind: "classifier" };
  for (const kind of ["torchscript", "inception"] as const) {
    if (v.startsWith(`${kind}:`) && v.length > kind.length + 1) return { kind, path: path.resolve(v.slice(kind.length + 1)) };
  }
  throw new InvalidArgumentError(`expected classifier, torchscript:<file.pt> or inception:<inception-2015-12-05.pt>, got "${v}"`);
}
function classList(v: string): number[] {
  const parts = v.split(",").map((s) => s.trim());
  if (parts.some((p) => !/^\d+$/.test(p))) throw new InvalidArgumentError(`expected comma-separated class numbers like 0,1,2 — got "${v}"`);
  return parts.map(Number);
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name("dmd2")
    .description("Distill a many-step diffusion model into a 1-4 step generator with DMD2.")
    .version(version(), "-V, --version")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();

  const outputOptions = (c: Command) =>
    c
      .addOption(new Option("--json", "print one JSON object per event on stdout (for scripts)"))
      .addOption(new Option("-q, --quiet", "print only errors"))
      .addOption(new Option("-v, --verbose", "print debug lines and Python tracebacks"));

  outputOptions(
    program
      .command("distill")
      .description("run a distillation recipe (resumes from the run folder's newest checkpoint if there is one)")
      .argument("[recipe]", "recipe YAML file (default: the project's recipes/tiny.yaml)", DEFAULT_RECIPE)
      .option("--set <key=value>", "override a recipe key, e.g. --set train.steps=50 (repeatable)", collect, [])
      .option("--fresh", "start the run folder over: the old one is kept aside as <run_dir>.old-<time> (default: resume from its newest checkpoint)")
      .addHelpText("after", "\nExamples:\n  dmd2 distill recipes/tiny.yaml\n  dmd2 distill recipes/tiny.yaml --set placement=colocated --set train.steps=50\n  dmd2 distill recipes/tiny.yaml --set generator.lr=1e-5 --fresh"),
  ).action(async (recipeArg: string, opts: OutputFlags & { set: string[]; fresh?: boolean }) => {
    const recipeFile = recipeArgument(recipeArg);
    const { loadRecipe } = await import("../recipe/load.js");
    const { distillWithRestarts } = await import("../run/supervise.js");
    const { onInterrupt } = await import("../run/interrupt.js");
    const recipe = loadRecipe(recipeFile, { overrides: opts.set });
    const reporter = reporterFor(opts);
    const interrupt = onInterrupt(reporter, "finishing the current step and writing a checkpoint");
    const { checkpointDiskWarning } = await import("../plan/plan.js");
    const diskWarning = () => checkpointDiskWarning(recipe, recipeFile);
    const res = await distillWithRestarts(recipe, reporter, { signal: interrupt.signal, recipeFile, fresh: opts.fresh === true, diskWarning });
    if (opts.json) process.stdout.write(resultEvent(res));
    if (res.interrupted) process.exitCode = 130;
  });

  outputOptions(
    program
      .command("sample")
      .description("write images from a run's distilled generator: PNG files and a grid")
      .argument("<run_dir>", "the run folder of a dmd2 distill run, e.g. runs/tiny")
      .option("--checkpoint <name>", "checkpoint folder name (step-00000200) or step number; default: the newest")
      .option("--steps <n>", "sampling steps, 1-4 (default: the steps it was trained with)", intArg("--steps"))
      .option("--num <n>", "number of images (default: 16, or one per prompt given)", intArg("--num"))
      .option("--seed <n>", "random seed", intArg("--seed"), 0)
      .option("--classes <list>", "class labels, e.g. 0,1,2 (default: cycles through the classes)", classList)
      .option("--prompt <text>", "a text prompt, for a run distilled from a Stable Diffusion teacher (repeatable; cycled through --num images)", collect, [])
      .option("--prompts-file <file>", "prompts from a UTF-8 file, one a line (blank lines and # comments skipped)")
      .option("--out <dir>", "output folder (default: <run_dir>/samples/<checkpoint>-<steps>step-seed<seed>)")
      .option("--set <key=value>", "override a key of the run's recipe for sampling, e.g. --set device=cuda (repeatable)", collect, [])
      .addHelpText("after", '\nExamples:\n  dmd2 sample runs/tiny\n  dmd2 sample runs/tiny --steps 1 --num 64 --seed 7 --classes 0,1,2,3\n  dmd2 sample runs/sd15-1step --prompt "a photo of a cat" --prompt "a red bicycle" --num 8'),
  ).action(async (runDir: string, opts: OutputFlags & { checkpoint?: string; steps?: number; num?: number; seed: number; classes?: number[]; prompt: string[]; promptsFile?: string; out?: string; set: string[] }) => {
    if (opts.num !== undefined && (opts.num < 1 || opts.num > 4096)) throw new UsageError(`--num ${opts.num}: must be between 1 and 4096`);
    const { sample } = await import("../run/sample.js");
    const res = await sample(runDir, opts, reporterFor(opts));
    if (opts.json) process.stdout.write(resultEvent(res));
  });

  outputOptions(
    program
      .command("export")
      .description("write a run's distilled generator as a diffusers folder (the teacher's pipeline with the student's UNet and a scheduler that samples it) or, with --lora, a LoRA file")
      .argument("<run_dir>", "the run folder of a dmd2 distill run whose teacher is a diffusers folder")
      .requiredOption("--out <dir>", "the folder to write")
      .option("--checkpoint <name>", "checkpoint folder name (step-00000200) or step number; default: the newest")
      .option("--lora", "write only the LoRA adapters (pytorch_lora_weights.safetensors) of a LoRA student")
      .option("--force", "replace --out if it exists")
      .addHelpText("after", "\nExamples:\n  dmd2 export runs/digits --out exports/digits-4step\n  dmd2 export runs/sdxl-4step-lora --out exports/sdxl-lora --lora"),
  ).action(async (runDir: string, opts: OutputFlags & { out: string; checkpoint?: string; lora?: boolean; force?: boolean }) => {
    const { exportCommand } = await import("./commands/export.js");
    process.exitCode = await exportCommand(runDir, opts, reporterFor(opts));
  });

  outputOptions(
    program
      .command("train-teacher")
      .description("train a diffusion teacher (a diffusers UNet2DModel) on a data source; writes a folder distill reads with teacher.source: diffusers")
      .argument("<recipe>", "teacher recipe YAML file, e.g. recipes/digits-teacher.yaml")
      .option("--set <key=value>", "override a recipe key, e.g. --set train.steps=500 (repeatable)", collect, [])
      .option("--out <dir>", "the folder to write (default: the recipe's out, else teachers/<name>)")
      .option("--force", "replace the folder if it exists")
      .addHelpText("after", "\nExamples:\n  dmd2 train-teacher recipes/digits-teacher.yaml\n  dmd2 train-teacher recipes/digits-teacher.yaml --set train.steps=500 --out /tmp/teacher --force"),
  ).action(async (recipeFile: string, opts: OutputFlags & { set: string[]; out?: string; force?: boolean }) => {
    const { trainTeacherCommand } = await import("./commands/trainTeacher.js");
    process.exitCode = await trainTeacherCommand(recipeFile, opts, reporterFor(opts));
  });

  outputOptions(
    program
      .command("worker")
      .description("run one worker of a run on this host: the coordinator (dmd2 distill on another host) hands it out")
      .requiredOption("--join <address>", "the coordinator's join channel, tcp://HOST:PORT, as dmd2 distill printed it")
      .option("--key-file <file>", "read the run's key from this file (default: $DMD2_JOIN_KEY)")
      .option("--worker <name>", "which worker to take, e.g. teacher (default: the next one waiting)")
      .option("--timeout <s>", "seconds to wait for the coordinator's answer", intArg("--timeout"), 30)
      .option("--python <path>", "the interpreter to run it with (default: $DMD2_PYTHON, else the project's .venv)")
      .addHelpText("after", "\nExamples:\n  DMD2_JOIN_KEY=<key> dmd2 worker --join tcp://10.0.0.5:41234\n  dmd2 worker --join tcp://10.0.0.5:41234 --key-file /shared/runs/sd15/join.key --worker teacher"),
  ).action(async (opts: OutputFlags & { join: string; keyFile?: string; worker?: string; timeout: number; python?: string }) => {
    const { workerCommand } = await import("./commands/worker.js");
    process.exitCode = await workerCommand(opts, reporterFor(opts));
  });

  program
    .command("eval")
    .description("score teacher folders and distilled runs against held-out data: Fréchet distance, class accuracy, images/s")
    .argument("<path...>", "teacher folders (model_index.json or unet/) and run folders of dmd2 distill (recipe.resolved.json)")
    .option("--data-from <recipe>", "take the data group from this recipe (default: what the folders say they learnt)")
    .addOption(new Option("--steps <list>", "sampling steps of each distilled run (default: 1, 2, 4 up to the steps it was trained for)").argParser(stepList("--steps", 4)))
    .addOption(new Option("--teacher-steps <list>", "DDIM steps of each teacher").argParser(stepList("--teacher-steps", 1000)).default([1, 2, 4, 10, 25, 50], "1,2,4,10,25,50"))
    .option("--n <n>", "samples per model and step count", intArg("--n"), 1000)
    .option("--seed <n>", "random seed of the samples", intArg("--seed"), 0)
    .option("--repeats <k>", "draws of --n samples per model and step count, with seeds seed, seed+1, ...: FD is their mean, shown with its standard deviation", intArg("--repeats"), 1)
    .addOption(new Option("--features <kind>", "feature space: classifier (trained on the data's train split, cached), torchscript:<file.pt> or inception:<inception-2015-12-05.pt> (a local copy of the FID Inception detector)").argParser(featuresArg).default({ kind: "classifier" }, "classifier"))
    .option("--picture <file>", "also write a PNG: real images, then each teacher at its most steps, each run at its fewest and most")
    .option("--checkpoint <name>", "score this checkpoint of each distilled run: folder name (step-00000200) or step number; a comma list of them or all: one row each (label@step); default: the newest")
    .option("--raw-weights", "score the generator's raw weights, not the average the run kept (generator.ema_decay > 0), which is the default and what dmd2 sample uses")
    .option("--device <device>", "cpu, cuda or cuda:N", "cpu")
    .addOption(new Option("--torch-threads <n>", "torch threads").argParser(intArg("--torch-threads")).default(os.availableParallelism(), "all cores"))
    .option("--json", "print the result as one JSON object (for scripts)")
    .addOption(new Option("-q, --quiet", "print only errors and the result"))
    .addOption(new Option("-v, --verbose", "print the Python process's output"))
    .addHelpText("after", "\nExamples:\n  dmd2 eval teachers/digits-teacher runs/digits\n  dmd2 eval runs/digits --steps 1,4 --n 2000 --picture /tmp/digits.png\n  dmd2 eval teachers/digits-teacher --teacher-steps 10,50 --json | jq .rows\n  dmd2 eval runs/digits --checkpoint 3500 --raw-weights\n  dmd2 eval runs/digits --checkpoint all --steps 4")
    .action(async (paths: string[], opts: OutputFlags & { dataFrom?: string; steps: number[]; teacherSteps: number[]; n: number; seed: number; repeats: number; features: Features; picture?: string; checkpoint?: string; rawWeights?: boolean; device: string; torchThreads: number }) => {
      if (opts.n < 2 || opts.n > 1_000_000) throw new UsageError(`--n ${opts.n}: must be between 2 and 1000000`);
      if (opts.repeats < 1 || opts.repeats > 1000) throw new UsageError(`--repeats ${opts.repeats}: must be between 1 and 1000`);
      if (opts.torchThreads < 1 || opts.torchThreads > 256) throw new UsageError(`--torch-threads ${opts.torchThreads}: must be between 1 and 256`);
      if (!/^(cpu|cuda(:\d+)?)$/.test(opts.device)) throw new UsageError(`--device ${opts.device}: use cpu, cuda or cuda:N`);
      const { evalCommand } = await import("./commands/eval.js");
      process.exitCode = await evalCommand(paths, opts, new Reporter({ quiet: opts.quiet, verbose: opts.verbose }));
    });

  program
    .command("plan")
    .description("show what distill would do with a recipe: placement, schedule, tensors, checkpoints, memory; starts nothing")
    .argument("[recipe]", "recipe YAML file (default: the project's recipes/tiny.yaml)", DEFAULT_RECIPE)
    .option("--set <key=value>", "override a recipe key, as for distill (repeatable)", collect, [])
    .option("--json", "print the plan as one JSON object (for scripts)")
    .addHelpText("after", "\nExamples:\n  dmd2 plan recipes/tiny.yaml\n  dmd2 plan recipes/tiny.yaml --set placement=colocated --set ttur.ratio=10\n  dmd2 plan --json | jq .memory.workers")
    .action(async (recipeArg: string, opts: { set: string[]; json?: boolean }) => {
      const { planCommand } = await import("./commands/plan.js");
      await planCommand(recipeArgument(recipeArg), opts);
    });

  program
    .command("report")
    .description("write one self-contained HTML page about a run: loss curves, sample grids over time, the recipe")
    .argument("<run_dir>", "the run folder of a dmd2 distill run (finished or still training), e.g. runs/tiny")
    .option("--out <file>", "the HTML file to write (default: <run_dir>/report.html)")
    .option("--json", "print the result as one JSON object (for scripts)")
    .addHelpText("after", "\nThe page needs no network: charts are inline SVG, images are inline.\n\nExamples:\n  dmd2 report runs/tiny\n  dmd2 report runs/tiny --out /tmp/tiny.html")
    .action(async (runDir: string, opts: { out?: string; json?: boolean }) => {
      const { reportCommand } = await import("../report/report.js");
      reportCommand(runDir, opts);
    });

  program
    .command("doctor")
    .description("check that this machine can run dmd2, and say how to fix what is missing")
    .option("--python <path>", "the interpreter to check (default: $DMD2_PYTHON, else the project's .venv)")
    .option("--json", "print the checks as one JSON object (for scripts)")
    .addHelpText("after", "\nExit code 0 when no check is a problem, 1 otherwise.\n\nExamples:\n  dmd2 doctor\n  dmd2 doctor --python /opt/conda/bin/python\n  dmd2 doctor --json | jq '.checks[] | select(.status == \"problem\")'")
    .action(async (opts: { python?: string; json?: boolean }) => {
      const { doctorCommand } = await import("./commands/doctor.js");
      process.exitCode = await doctorCommand(opts);
    });

  return program;
}

function printError(e: DmdError, verbose: boolean) {
  const out = (line: string) => process.stderr.write(line + "\n");
  const err = chalk.red("error: ");
  if (e instanceof RecipeError) {
    for (const line of e.lines()) out(err + line);
    if (e.hint) out(chalk.dim(e.hint));
    return;
  }
  out(err + shortenValue(e.message)); // a 200,000-character path is shown by its ends
  if (e instanceof WorkerError && verbose && e.traceback.trim()) out(chalk.dim(e.traceback.trimEnd()));
  else if (e instanceof WorkerDiedError && e.stderrTail.length > 0) {
    const tail = e.stderrTail.filter((l) => l.trim() !== "").slice(verbose ? -40 : -8);
    out(chalk.dim(`last lines of worker "${e.worker}" stderr:`));
    for (const l of tail) out(chalk.dim("  " + l));
    if (e.hint) out(chalk.dim(e.hint));
  } else if (e.hint) out(chalk.dim(shortenValue(e.hint)));
}

/** An error as a --json event on stdout (the text lines still go to stderr, for a person watching). */
export function errorEvent(e: DmdError): string {
  const ev: Record<string, unknown> = { event: "error", time: Date.now() / 1000, code: e.code, exit_code: e.exitCode, message: e.message };
  if (e.hint !== undefined) ev.hint = e.hint;
  if (e instanceof RecipeError) ev.issues = e.issues;
  return JSON.stringify(ev) + "\n";
}

export async function main(argv: string[]): Promise<number> {
  const verbose = argv.includes("--verbose") || argv.includes("-v");
  try {
    await buildProgram().parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.code === "commander.help") return 0;
      return 2; // commander already printed the message
    }
    if (e instanceof DmdError) {
      if (argv.includes("--json")) process.stdout.write(errorEvent(e));
      printError(e, verbose);
      return e.exitCode;
    }
    process.stderr.write(chalk.red("internal error: ") + String((e as Error)?.message ?? e) + "\n");
    if (verbose) process.stderr.write(String((e as Error)?.stack ?? "") + "\n");
    else process.stderr.write(chalk.dim("(run with --verbose for the stack trace; please report this)") + "\n");
    return 1;
  }
}
