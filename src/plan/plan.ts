// `dmd2 plan`: everything `distill` would do with a recipe, worked out without starting a process: the
// placement, the step schedule, the tensors that travel, the checkpoints and a memory estimate. Built from
// the same functions the run loop uses (schedule/, run/checkpoints.ts), so the plan cannot drift from the run.
// The networks are sized from the recipe (the built-in teacher) or the diffusers teacher's unet/config.json
// (network.ts); what only a worker can find out (a folder's images) is reported as unknown.

import { existsSync, readFileSync, statfsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parse } from "yaml";
import { isDmdError, UsageError } from "../errors.js";
import { formatBytes } from "../text.js";
import { loadRecipe } from "../recipe/load.js";
import type { Recipe, Role } from "../recipe/types.js";
import { checkpointName, checkpointsDir, listCheckpoints } from "../runFolder.js";
import { roleHome, workerLayout } from "../recipe/workerLayout.js";
import {
  ganDiscriminatorWeight,
  ganGeneratorWeight,
  generatorUpdatesBefore,
  isCheckpointStep,
  isGeneratorStep,
  warmupIndex,
  warmupLr,
} from "../schedule/schedule.js";
import { planStep, routeTensors, type OpCall } from "../schedule/stepPlan.js";
import { resolvePython } from "../workers/python.js";
import { interpreterProblems } from "../doctor/interpreterProblems.js";
import type { ProbeOutcome } from "../doctor/probe.js";
import { memoryEstimate, RUNTIME_NOTE, type WorkerMemory } from "./memory.js";
import { dataPlan, imageShapeOf, networkPlan, type DataPlan, type NetworkPlan, type Shape } from "./network.js";
import { stepTraffic, type StepTraffic, type TextTensorSizes } from "./tensors.js";
import { defaultTorchThreads, type ThreadsDefault } from "../recipe/threads.js";

export interface PlanProblem {
  /** what the problem is about, e.g. "python" */
  subject: string;
  message: string;
  fix?: string;
}

export interface PythonPlan {
  /** the interpreter the workers would run, or null when there is none */
  path: string | null;
  source: "recipe" | "DMD2_PYTHON" | ".venv";
}

export interface PlacementPlan {
  placement: Recipe["placement"];
  transport: Recipe["transport"];
  /** the recipe's `device` key: where every role's networks live */
  device: string;
  torchThreads: number;
  cores: number;
  /** what the torch_threads default (a null key) gives on these cores, and why (threads.ts) */
  threadsDefault: ThreadsDefault;
  workers: PlannedWorker[];
  /** worker processes in all: a replicated role runs one per replica */
  processes: number;
  python: PythonPlan;
}

/** One worker of the layout as the recipe places it (docs/recipe.md "Placement"). */
export interface PlannedWorker {
  name: string;
  roles: Role[];
  torchThreads: number;
  /** one device per replica */
  devices: string[];
  replicas: number;
  strategy: "replicate" | "fsdp";
  precision: string;
  gradientCheckpointing: boolean;
  /** started on another host with dmd2 worker --join */
  join: boolean;
}

export interface StepRow {
  step: number;
  generatorStep: boolean;
  /** the step's op calls, phase by phase (calls within a phase may run concurrently) */
  phases: string[][];
  /** the generator's lr at this step's update; null on steps without one */
  generatorLr: number | null;
  fakeScoreLr: number;
  /** G's GAN loss weight at this step's update; null on steps without a generator update */
  ganGeneratorWeight: number | null;
  ganDiscriminatorWeight: number;
}

export interface Ramp {
  /** the value after warm-up */
  target: number;
  /** warm-up length, in the ramp's unit (0: none) */
  warmup: number;
  unit: "updates" | "steps";
  /** value at the first step it applies to */
  first: { step: number; value: number };
  /** first step with the full value, or null if the run ends before */
  fullFromStep: number | null;
  /** value at the last step it applies to */
  last: { step: number; value: number };
}

export interface SchedulePlan {
  steps: number;
  ttur: number;
  generatorUpdates: number;
  fakeScoreUpdates: number;
  rows: StepRow[];
  generatorLr: Ramp;
  fakeScoreLr: Ramp;
  ganGeneratorWeight: Ramp;
  ganDiscriminatorWeight: number;
  /** the training stages (stages.ts): from which step each sets which keys; afterEnd: from_step >= train.steps */
  stages: { fromStep: number; set: Record<string, number | boolean>; afterEnd: boolean }[];
}

export interface TrafficPlan {
  batchSize: number;
  /** distinct kinds of step, each with an example step and how many steps of the run are of that kind */
  kinds: ({ kind: string; example: number; count: number } & StepTraffic)[];
  /** bytes through the coordinator over the whole run (returned + attached); null when the image size is unknown */
  runBytes: number | null;
}

export interface CheckpointPlan {
  dir: string;
  every: number;
  keepLast: number;
  /** how many checkpoints the run writes (more if it is interrupted: Ctrl-C writes one) */
  count: number;
  /** the first few folder names */
  first: string[];
  /** the folders left at the end (keep_last newest) */
  keptAtEnd: string[];
  /** estimated size of one checkpoint (trained roles' weights and optimizer state); null: unknown */
  bytesEach: number | null;
  /** estimated disk use of the run folder at the end: keep_last checkpoints and the built-in teacher's copy
   * (a diffusers teacher stays in its folder); null: unknown */
  diskBytes: number | null;
  /** the most the run folder holds at once: a new checkpoint is written before the oldest is removed, so keep_last + 1
   * of them, and the built-in teacher's copy; null: unknown */
  peakBytes: number | null;
  /** free space on the disk the run folder goes to (its nearest existing folder); null: unreadable */
  freeBytes: number | null;
  /** complete checkpoints already in the run folder */
  existing: string[];
  /** the step distill would resume from, or null for a fresh start */
  resumeFrom: number | null;
}

export interface MemoryPlan {
  estimate: true;
  /** the networks sized (network.ts): the teacher's, which generator and fake score copy */
  network: NetworkPlan;
  /** null: unknown (network.unknown says why) */
  params: { unet: number | null; discriminatorHead: number | null };
  /** empty when the sizes are unknown (see unknown) */
  workers: WorkerMemory[];
  /** why there is no estimate; null when there is one */
  unknown: string | null;
  /** why the estimate leaves the activations out (a lower bound then); null when it has them */
  activationsUnknown: string | null;
  note: string;
}

export interface Plan {
  recipe: { file: string; name: string; runDir: string; resolved: Recipe };
  /** the data source's images and classes, as far as they are known before a worker reads the data */
  data: DataPlan;
  placement: PlacementPlan;
  schedule: SchedulePlan;
  traffic: TrafficPlan;
  checkpoints: CheckpointPlan;
  memory: MemoryPlan;
  problems: PlanProblem[];
}

export interface PlanOptions {
  env?: NodeJS.ProcessEnv;
  cpuCount?: number;
  /** free bytes on the disk holding `dir` (tests); default: statfs of its nearest existing folder */
  freeBytes?: (dir: string) => number | null;
  /** the probe of the interpreter the workers would use (doctor/probeCache.ts): its problems join the plan's */
  probe?: ProbeOutcome;
}

/** Free bytes on the disk of `dir` or of its nearest existing parent; null when unreadable. */
function diskFreeBytes(dir: string): number | null {
  let d = path.resolve(dir);
  while (!existsSync(d) && path.dirname(d) !== d) d = path.dirname(d);
  try {
    const s = statfsSync(d);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return null;
  }
}

function pythonPlan(r: Recipe, env: NodeJS.ProcessEnv, problems: PlanProblem[]): PythonPlan {
  const source: PythonPlan["source"] = r.python !== null ? "recipe" : env.DMD2_PYTHON ? "DMD2_PYTHON" : ".venv";
  try {
    return { path: resolvePython(r.python, { env }), source };
  } catch (e) {
    if (!isDmdError(e)) throw e;
    problems.push({ subject: "python", message: e.message, ...(e.hint === undefined ? {} : { fix: e.hint }) });
    return { path: null, source };
  }
}

function placementPlan(r: Recipe, opts: PlanOptions, problems: PlanProblem[]): PlacementPlan {
  const layout = workerLayout(r.placement);
  const cores = opts.cpuCount ?? os.availableParallelism();
  const workers = layout.map((w): PlannedWorker => {
    // the worker follows its first placed role (per_role: its only one; the discriminator follows fake_score)
    const p = r.roles[w.roles[0] === "discriminator" ? "fake_score" : w.roles[0]!];
    const placed = w.roles.map((role) => r.roles[role === "discriminator" ? "fake_score" : role]);
    return {
      name: w.name,
      roles: [...w.roles],
      torchThreads: r.torch_threads,
      devices: [...new Set(placed.flatMap((x) => x.device))],
      replicas: Math.max(...placed.map((x) => x.replicas)),
      strategy: p.strategy,
      precision: [...new Set(placed.map((x) => x.precision))].join("/"),
      gradientCheckpointing: placed.some((x) => x.gradient_checkpointing),
      join: placed.some((x) => x.join),
    };
  });
  return {
    placement: r.placement,
    transport: r.transport,
    device: r.device,
    torchThreads: r.torch_threads,
    cores,
    threadsDefault: defaultTorchThreads(r, cores),
    workers,
    processes: workers.reduce((n, w) => n + w.replicas, 0),
    python: pythonPlan(r, opts.env ?? process.env, problems),
  };
}

/** Steps shown in the schedule table: through the third generator step, or excerpts around the first ones. */
export function scheduleRowSteps(steps: number, ratio: number): number[] {
  const wanted = 2 * ratio + 1 <= 12 ? Array.from({ length: 2 * ratio + 1 }, (_, i) => i) : [0, 1, 2, ratio - 1, ratio, ratio + 1, 2 * ratio];
  return [...new Set(wanted)].filter((s) => s >= 0 && s < steps).sort((a, b) => a - b);
}

const callName = (c: OpCall) => `${c.role}.${c.op}`;

function stepRow(step: number, r: Recipe): StepRow {
  const phases = planStep(step, r);
  const calls = phases.flat();
  const find = (role: Role, op: string) => calls.find((c) => c.role === role && c.op === op);
  const genUpdate = find("generator", "update");
  const fakeUpdate = find("fake_score", "update")!;
  return {
    step,
    generatorStep: isGeneratorStep(step, r.ttur.ratio),
    phases: phases.map((p) => p.map(callName)),
    generatorLr: genUpdate ? (genUpdate.args.lr as number) : null,
    fakeScoreLr: fakeUpdate.args.lr as number,
    ganGeneratorWeight: genUpdate ? ((find("discriminator", "generator_gan_grad")?.args.weight as number | undefined) ?? 0) : null,
    ganDiscriminatorWeight: fakeUpdate.args.gan_weight as number,
  };
}

function schedulePlan(r: Recipe): SchedulePlan {
  const steps = r.train.steps;
  const ratio = r.ttur.ratio;
  const G = generatorUpdatesBefore(steps, ratio);
  const lastGenStep = (G - 1) * ratio;
  const lrWarm = r.optim.warmup_steps;
  const within = (s: number) => (s < steps ? s : null);
  const ganWarm = r.gan.warmup_steps;
  // G's GAN weight only applies at generator steps: the first one at or after the end of its warm-up
  const ganFull = r.gan.enabled ? Math.ceil(ganWarm / ratio) * ratio : null;
  return {
    steps,
    ttur: ratio,
    generatorUpdates: G,
    fakeScoreUpdates: steps,
    rows: scheduleRowSteps(steps, ratio).map((s) => stepRow(s, r)),
    generatorLr: {
      target: r.generator.lr,
      warmup: lrWarm,
      unit: r.optim.warmup_unit,
      first: { step: 0, value: warmupLr(r.generator.lr, 0, lrWarm) },
      // its update at step warmup - 1 (steps; the first generator step from there) or its warmup-th update (updates)
      fullFromStep: within(r.optim.warmup_unit === "steps" ? Math.ceil(Math.max(0, lrWarm - 1) / ratio) * ratio : Math.max(0, lrWarm - 1) * ratio),
      last: { step: lastGenStep, value: warmupLr(r.generator.lr, warmupIndex(lastGenStep, "generator", r), lrWarm) },
    },
    fakeScoreLr: {
      target: r.fake_score.lr,
      warmup: lrWarm,
      unit: r.optim.warmup_unit, // the fake score updates every step: both units count the same
      first: { step: 0, value: warmupLr(r.fake_score.lr, 0, lrWarm) },
      fullFromStep: within(Math.max(0, lrWarm - 1)),
      last: { step: steps - 1, value: warmupLr(r.fake_score.lr, steps - 1, lrWarm) },
    },
    ganGeneratorWeight: {
      target: r.gan.enabled ? r.gan.generator_weight : 0,
      warmup: r.gan.enabled ? ganWarm : 0,
      unit: "steps",
      first: { step: 0, value: ganGeneratorWeight(0, r) },
      fullFromStep: ganFull === null ? 0 : within(ganFull),
      last: { step: lastGenStep, value: ganGeneratorWeight(lastGenStep, r) },
    },
    ganDiscriminatorWeight: ganDiscriminatorWeight(r),
    stages: r.stages.map((st) => ({ fromStep: st.from_step, set: { ...st.set }, afterEnd: st.from_step >= steps })),
  };
}

function trafficPlan(r: Recipe, shape: Shape | null, text: TextTensorSizes | null): TrafficPlan {
  const home = roleHome(workerLayout(r.placement));
  const steps = r.train.steps;
  const ratio = r.ttur.ratio;
  const traffic = (step: number) => stepTraffic(routeTensors(planStep(step, r), home), home, r, shape, text);
  // Steps of one kind send the same tensors. Generator steps differ from step 0 only when G's GAN weight warms up
  // from 0 (no gan_grad at step 0), and a training stage may change them from its step on (the GAN on or off):
  // so one example per stretch between stage boundaries, and stretches that send the same are merged.
  const bounds = [...new Set([0, ...r.stages.map((st) => st.from_step).filter((s) => s > 0 && s < steps), steps])];
  const generatorSteps = (a: number, b: number) => Math.max(0, generatorUpdatesBefore(b, ratio) - generatorUpdatesBefore(a, ratio));
  const found: { generator: boolean; example: number; count: number; t: ReturnType<typeof traffic> }[] = [];
  const add = (generator: boolean, example: number, count: number) => {
    if (count <= 0) return;
    const t = traffic(example);
    const same = found.find((k) => k.generator === generator && JSON.stringify(k.t.transfers) === JSON.stringify(t.transfers));
    if (same) same.count += count;
    else found.push({ generator, example, count, t });
  };
  add(true, 0, 1);
  for (let i = 0; i + 1 < bounds.length; i++) {
    const [a, b] = [bounds[i]!, bounds[i + 1]!];
    const from = Math.max(a, 1);
    const firstGen = Math.ceil(from / ratio) * ratio;
    if (firstGen < b) add(true, firstGen, generatorSteps(from, b));
    let firstFake = a;
    while (firstFake < b && isGeneratorStep(firstFake, ratio)) firstFake++;
    if (firstFake < b) add(false, firstFake, b - a - generatorSteps(a, b));
  }
  const gens = found.filter((k) => k.generator);
  const fakes = found.filter((k) => !k.generator);
  const name = (k: (typeof found)[number]): string => {
    const group = k.generator ? gens : fakes;
    const base = k.generator ? "generator step" : "fake-score-only step";
    if (group.length === 1) return base;
    if (k.generator && k.example === 0 && k.count === 1) return "first generator step";
    const rest = group.filter((x) => !(x.generator && x.example === 0 && x.count === 1));
    return rest[0] === k ? base : `${base} (as at step ${k.example})`;
  };
  const kinds: TrafficPlan["kinds"] = [...gens, ...fakes].map((k) => ({ kind: name(k), example: k.example, count: k.count, ...k.t }));
  const known = kinds.every((k) => k.returnedBytes !== null && k.attachedBytes !== null);
  return {
    batchSize: r.train.batch_size,
    kinds,
    runBytes: known ? kinds.reduce((s, k) => s + k.count * (k.returnedBytes! + k.attachedBytes!), 0) : null,
  };
}

/** The first or last `n` checkpoints (as steps completed): every `checkpoint_every` steps and the last step. */
function checkpointSteps(r: Recipe, which: "first" | "last", n: number): number[] {
  const every = r.train.checkpoint_every;
  const steps = r.train.steps;
  const multiples = Math.floor(steps / every);
  const lo = which === "first" ? 1 : Math.max(1, multiples - n + 1);
  const hi = which === "first" ? Math.min(n, multiples) : multiples;
  const list = Array.from({ length: Math.max(0, hi - lo + 1) }, (_, i) => (lo + i) * every);
  if (steps % every !== 0) list.push(steps);
  // the run loop's own rule has the last word; the arithmetic above only proposes candidates
  return (which === "first" ? list.slice(0, n) : list.slice(-n)).filter((done) => isCheckpointStep(done - 1, r));
}

function checkpointPlan(r: Recipe, memory: WorkerMemory[] | null, freeBytes: (dir: string) => number | null, problems: PlanProblem[]): CheckpointPlan {
  const every = r.train.checkpoint_every;
  const steps = r.train.steps;
  const count = Math.floor(steps / every) + (steps % every === 0 ? 0 : 1);
  const roles = memory?.flatMap((w) => w.roles) ?? null;
  // each trained role saves what it trains (a LoRA generator: its adapters), AdamW's two moments and the
  // generator's average; the discriminator saves its head; the teacher nothing. Whole tensors, also when sharded
  const saved = (m: WorkerMemory["roles"][number]) => m.trainedParams * 4 * (3 + (m.emaBytes > 0 ? 1 : 0));
  const bytesEach = roles === null ? null : roles.filter((m) => m.role !== "teacher").reduce((s, m) => s + saved(m), 0);
  // the built-in teacher is copied into <run_dir>/teacher/; a diffusers teacher is read where it is
  const teacherBytes = r.teacher.source === "builtin" ? (roles?.find((m) => m.role === "teacher")?.weightsBytes ?? 0) : 0;
  const existing = listCheckpoints(r.run_dir);
  const keptAtEnd = checkpointSteps(r, "last", r.train.keep_last).map(checkpointName);
  const peakBytes = bytesEach === null ? null : Math.min(count, r.train.keep_last + 1) * bytesEach + teacherBytes;
  const free = freeBytes(r.run_dir);
  // checkpoints already there are replaced as the run goes, so they count as room
  const room = free === null ? null : free + existing.length * (bytesEach ?? 0);
  if (peakBytes !== null && room !== null && peakBytes > room) {
    problems.push({
      subject: "train.keep_last",
      message: `the checkpoints need up to ~${formatBytes(peakBytes)} (${Math.min(count, r.train.keep_last + 1)} of ~${formatBytes(bytesEach!)} while the newest is written), the disk of ${r.run_dir} has ${formatBytes(free!)} free`,
      fix: "free some space, lower train.keep_last, or point run_dir at a disk with more room",
    });
  }
  return {
    dir: checkpointsDir(r.run_dir),
    every,
    keepLast: r.train.keep_last,
    count,
    first: checkpointSteps(r, "first", 3).map(checkpointName),
    keptAtEnd,
    bytesEach,
    diskBytes: bytesEach === null ? null : keptAtEnd.length * bytesEach + teacherBytes,
    peakBytes,
    freeBytes: free,
    existing: existing.map((c) => path.basename(c.dir)),
    resumeFrom: existing.length > 0 ? existing[existing.length - 1]!.step : null,
  };
}

function memoryPlan(r: Recipe, network: NetworkPlan): { plan: MemoryPlan; workers: WorkerMemory[] | null } {
  const workers = memoryEstimate(workerLayout(r.placement), r, network);
  return {
    workers,
    plan: {
      estimate: true,
      network,
      params: { unet: network.params, discriminatorHead: network.discriminatorHeadParams },
      workers: workers ?? [],
      unknown: workers === null ? (network.unknown ?? "the networks' sizes are unknown") : null,
      activationsUnknown: workers !== null && workers.some((w) => !w.complete) ? network.activationsUnknown : null,
      note: RUNTIME_NOTE,
    },
  };
}

/** The plan of a loaded, resolved recipe (recipe/load.ts). Reads the run folder's checkpoints; starts nothing. */
export function buildPlan(recipe: Recipe, file: string, opts: PlanOptions = {}): Plan {
  const problems: PlanProblem[] = [];
  const data = dataPlan(recipe);
  const net = networkPlan(recipe, data);
  problems.push(...net.problems);
  const placement = placementPlan(recipe, opts, problems);
  if (opts.probe !== undefined && placement.python.path !== null) problems.push(...interpreterProblems(recipe, placement.python.path, opts.probe, file));
  const memory = memoryPlan(recipe, net.network);
  return {
    recipe: { file, name: recipe.name, runDir: recipe.run_dir, resolved: recipe },
    data,
    placement,
    schedule: schedulePlan(recipe),
    traffic: trafficPlan(recipe, imageShapeOf(data, net.network), net.network.textTensors),
    checkpoints: checkpointPlan(recipe, memory.workers, opts.freeBytes ?? diskFreeBytes, problems),
    memory: memory.plan,
    problems,
  };
}

/**
 * The one-line warning `dmd2 distill` prints before it starts when the checkpoints would not fit on the run folder's
 * disk (the plan's train.keep_last problem), or null. Advisory: a plan that cannot be made gives no warning.
 */
export function checkpointDiskWarning(recipe: Recipe, file: string, freeBytes?: (dir: string) => number | null): string | null {
  try {
    const p = buildPlan(recipe, file, freeBytes === undefined ? {} : { freeBytes }).problems.find((x) => x.subject === "train.keep_last");
    return p === undefined ? null : `${p.message}: ${p.fix} (dmd2 plan shows the sizes)`;
  } catch {
    return null;
  }
}

/** Whether a recipe file is a teacher recipe (dmd2 train-teacher's: it has `model:` and no `generator:`); false when it cannot be read. */
export function isTeacherRecipeFile(file: string): boolean {
  try {
    const raw = parse(readFileSync(file, "utf8")) as unknown;
    return typeof raw === "object" && raw !== null && "model" in raw && !("generator" in raw);
  } catch {
    return false;
  }
}

/**
 * Loads a distillation recipe for `dmd2 plan` exactly as distill does. A teacher recipe is bad input with one
 * clear line: plan covers distillation recipes; a teacher recipe is run with dmd2 train-teacher.
 */
export function loadPlanRecipe(file: string, overrides: string[]): Recipe {
  if (isTeacherRecipeFile(file)) {
    const shown = path.relative(process.cwd(), file) || file;
    throw new UsageError(`${shown} is a teacher recipe (it has model:): dmd2 plan covers distillation recipes`, {
      code: "PLAN_TEACHER_RECIPE",
      hint: `train the teacher with dmd2 train-teacher ${shown}, then plan a distillation recipe that uses it (teacher.source: diffusers, e.g. recipes/digits.yaml)`,
    });
  }
  return loadRecipe(file, { overrides });
}
