// The text form of a plan (plan.ts): sections of aligned lines, for a terminal or a log.

import path from "node:path";
import { stdoutColor as chalk } from "../colors.js";
import { formatBytes, formatCount, formatRate, table } from "../text.js";
import type { NetworkPlan } from "./network.js";
import type { Plan, Ramp, StepRow } from "./plan.js";

const ROLE_SHORT: Record<string, string> = { generator: "G", teacher: "T", fake_score: "F", discriminator: "D" };
const OP_SHORT: Record<string, string> = { generate: "gen", predict_x0: "x0", generator_gan_grad: "grad", update: "upd" };
const shortCall = (call: string) => {
  const [role = "", op = ""] = call.split(".");
  return `${ROLE_SHORT[role] ?? role}.${OP_SHORT[op] ?? op}`;
};

const shown = (p: string) => {
  const rel = path.relative(process.cwd(), p);
  return rel !== "" && !rel.startsWith("..") ? rel : p;
};
const heading = (title: string, rest = "") => chalk.bold(title) + (rest === "" ? "" : `  ${rest}`);
const bytes = (b: number | null) => (b === null ? "? (a tensor's size is unknown)" : formatBytes(b));
const classes = (k: number | null) => (k === null ? "unconditional" : `${k} classes`);

/** The data line of the header: what the data source has, or what is unknown and what the teacher expects. */
function dataText(plan: Plan): string {
  const d = plan.data;
  const n = plan.memory.network;
  if (d.imageShape !== null) return `${d.source}, ${d.imageShape.join("x")}, ${classes(d.numClasses)}`;
  const expects = n.imageShape === null ? "" : `; the teacher expects ${n.imageShape.join("x")}, ${classes(n.numClasses)} (the workers refuse a folder that differs)`;
  const folder = plan.recipe.resolved.data.folder.path;
  return `${d.source}${folder === null ? "" : ` ${shown(folder)}`}: image size and classes unknown until the worker reads it${expects}`;
}

function placementLines(plan: Plan): string[] {
  const p = plan.placement;
  // the split default, max(1, floor(cores / workers)), never oversubscribes more than one thread per process does
  const fair = Math.max(1, Math.floor(p.cores / p.processes));
  const oversubscribed = p.torchThreads > fair;
  // the default for compute-bound networks gives every worker all cores on purpose (plan/threads.ts): say why, no
  // warning; where the threads are the default's split, say why too
  const d = p.threadsDefault;
  const asDefault = p.torchThreads === d.threads && d.rule !== "one worker";
  const threadsNote = oversubscribed && !(asDefault && d.rule === "compute-bound") ? chalk.yellow(` (more threads than cores: torch_threads ${fair} avoids that)`) : asDefault ? ` (${d.reason})` : "";
  const from = { recipe: "the recipe's python key", DMD2_PYTHON: "$DMD2_PYTHON", ".venv": "the project's .venv" }[p.python.source];
  const python = p.python.path === null ? `${chalk.red("none")} (from ${from}; see Problems)` : `${p.python.path} (${from})`;
  return [
    heading("Placement", `${p.placement}, transport ${p.transport}, device ${p.device}`),
    ...table([
      ["worker", "roles", "device", "replicas", "precision", "torch threads"],
      ...p.workers.map((w) => [
        w.name + (w.join ? " (joins)" : ""),
        w.roles.join(", "),
        w.devices.join(", "),
        w.replicas === 1 ? "1" : `${w.replicas} (${w.strategy})`,
        w.precision + (w.gradientCheckpointing ? ", checkpointing" : ""),
        String(w.torchThreads),
      ]),
    ]),
    `  ${p.processes} worker process${p.processes === 1 ? "" : "es"} x ${p.torchThreads} thread${p.torchThreads === 1 ? "" : "s"} on ${p.cores} core${p.cores === 1 ? "" : "s"}${threadsNote}`,
    ...(p.workers.some((w) => w.join) ? [`  workers marked (joins) run on other hosts: dmd2 distill prints the dmd2 worker --join command (docs/cli.md)`] : []),
    `  python: ${python}`,
  ];
}

function rampText(name: string, ramp: Ramp, steps: number): string {
  const t = formatRate(ramp.target);
  if (ramp.warmup <= 0 || ramp.first.value === ramp.target) return `${name}: ${t} throughout`;
  const full = ramp.fullFromStep === null ? `not reached within ${steps} steps (${formatRate(ramp.last.value)} at step ${ramp.last.step})` : `${t} from step ${ramp.fullFromStep} on`;
  const over = ramp.unit === "updates" ? `its first ${ramp.warmup} updates` : `the first ${ramp.warmup} steps`;
  return `${name}: ${t}, linear warm-up over ${over}: ${formatRate(ramp.first.value)} at step ${ramp.first.step}, ${full}`;
}

function scheduleLines(plan: Plan): string[] {
  const s = plan.schedule;
  // one column per op, in step order: an op missing from earlier rows goes right after its predecessor
  const calls: string[] = [];
  for (const row of s.rows) {
    row.phases.flat().forEach((c, i, all) => {
      if (calls.includes(c)) return;
      const before = all.slice(0, i).reverse().find((p) => calls.includes(p));
      calls.splice(before === undefined ? 0 : calls.indexOf(before) + 1, 0, c);
    });
  }
  const cell = (v: number | null) => (v === null ? "-" : formatRate(v));
  const rowCells = (row: StepRow) => [
    String(row.step),
    ...calls.map((c) => (row.phases.flat().includes(c) ? "x" : ".")),
    cell(row.generatorLr),
    cell(row.fakeScoreLr),
    cell(row.ganGeneratorWeight),
    cell(row.ganDiscriminatorWeight),
  ];
  const rows: string[][] = [["step", ...calls.map(shortCall), "G lr", "F lr", "G GAN w", "D GAN w"]];
  s.rows.forEach((row, i) => {
    if (i > 0 && row.step !== s.rows[i - 1]!.step + 1) rows.push(["...", ...calls.map(() => ""), "", "", "", ""]);
    rows.push(rowCells(row));
  });
  const shownSteps = s.rows.length === 0 ? "" : ` (steps ${s.rows[0]!.step}-${s.rows[s.rows.length - 1]!.step} shown)`;
  return [
    heading("Step schedule", `${s.steps} steps${shownSteps}; the generator updates when step % ${s.ttur} == 0: ${s.generatorUpdates} generator updates, ${s.fakeScoreUpdates} fake score updates`),
    ...table(rows),
    `  ops: ${calls.map((c) => `${shortCall(c)} = ${c}`).join(", ")}`,
    `  ${rampText("generator lr", s.generatorLr, s.steps)}`,
    `  ${rampText("fake score lr", s.fakeScoreLr, s.steps)}`,
    `  ${rampText("G's GAN weight", s.ganGeneratorWeight, s.steps)}${s.ganGeneratorWeight.target > 0 ? " (at generator steps)" : ""}`,
    `  D's GAN weight: ${formatRate(s.ganDiscriminatorWeight)} throughout`,
  ];
}

function trafficLines(plan: Plan): string[] {
  const t = plan.traffic;
  const lines = [heading("Tensors between processes", `batch ${t.batchSize}; each goes worker -> coordinator -> worker(s), untouched`)];
  if (t.kinds.every((k) => k.transfers.length === 0)) {
    lines.push("  none: the roles that exchange tensors share a process");
    return lines;
  }
  for (const k of t.kinds) {
    const steps = `${k.count} step${k.count === 1 ? "" : "s"}, e.g. step ${k.example}`;
    if (k.transfers.length === 0) {
      lines.push(`  ${k.kind} (${steps}): nothing (the roles that exchange tensors share a process)`);
      continue;
    }
    lines.push(`  ${k.kind} (${steps}): ${bytes(k.returnedBytes)} returned, ${bytes(k.attachedBytes)} sent on`);
    lines.push(
      ...table(
        k.transfers.map((x) => [
          x.tensor,
          x.dtype ?? "?",
          x.shape === null ? "?" : `[${x.shape.join(",")}]`,
          x.bytes === null ? "?" : formatBytes(x.bytes),
          `${x.from.call} -> ${x.to.map((c) => c.call).join(", ")}`,
        ]),
        4,
      ),
    );
  }
  lines.push(`  whole run: ${bytes(t.runBytes)} through the coordinator`);
  return lines;
}

function checkpointLines(plan: Plan): string[] {
  const c = plan.checkpoints;
  const written = c.count <= c.first.length ? c.first.join(", ") : `${c.first.join(", ")}, ...`;
  const existing =
    c.resumeFrom === null
      ? "none: distill starts from step 0"
      : `${c.existing.join(", ")}: distill resumes from step ${c.resumeFrom}${c.resumeFrom >= plan.schedule.steps ? " (the run is finished: it only samples)" : ""}`;
  return [
    heading("Checkpoints", `${shown(c.dir)}, every ${c.every} steps and at the end, keep_last ${c.keepLast}`),
    ...table([
      ["written", `${written} (${c.count} in all; Ctrl-C writes one more)`],
      ["kept", c.keptAtEnd.join(", ")],
      [
        "size",
        c.bytesEach === null || c.diskBytes === null
          ? "unknown (the networks' sizes are unknown, see Memory)"
          : `~${formatBytes(c.bytesEach)} each; ~${formatBytes(c.diskBytes)} at the end${plan.recipe.resolved.teacher.source === "builtin" ? " with the teacher's copy" : " (the teacher stays in its folder)"} (estimate)`,
      ],
      ["disk", c.freeBytes === null ? "free space unknown" : `${formatBytes(c.freeBytes)} free${c.peakBytes === null ? "" : `; up to ~${formatBytes(c.peakBytes)} while the newest checkpoint is written`}`],
      ["existing", existing],
    ]),
  ];
}

/** One line on the networks: the architecture, its size, where it comes from. */
function networkText(n: NetworkPlan): string {
  const count = (x: number | null) => (x === null ? "unknown" : formatCount(x));
  const shape = n.imageShape === null ? "image size unknown" : n.imageShape.join("x");
  if (n.tiny !== null) {
    const a = n.tiny;
    return `TinyUNet(channels ${a.channels}, mult [${a.channelMult.join(", ")}], ${a.numClasses ?? "no"} classes, ${shape}) ${count(n.params)} params; discriminator head ${count(n.discriminatorHeadParams)}`;
  }
  const from = `from ${shown(n.from)}`;
  if (n.kind === "text-to-image") {
    const family = n.text?.family === "sdxl" ? "SDXL" : n.text?.family === "sd3" ? "SD3" : n.text?.family === "flux" ? "Flux" : n.text?.family === "sana" ? "Sana" : "SD 1.5";
    if (n.params === null) return `${family} UNet2DConditionModel ${from}: size unknown`;
    const files = n.text === null ? "" : ` (counted from ${n.text.weightFiles.map(shown).join(", ")})`;
    const frozen = n.frozen.map((f) => `${f.name} ${count(f.params)}`).join(", ");
    return `${family} UNet2DConditionModel (latents ${shape}) ${count(n.params)} params${files}; discriminator head ${count(n.discriminatorHeadParams)}; frozen beside the generator: ${frozen}`;
  }
  const a = n.unet2d;
  if (a === null) return `diffusers UNet2DModel ${from}: size unknown`;
  const attn = a.addAttention && a.midBlockType !== null ? ", mid attention" : "";
  const cls = n.numClasses === null ? "unconditional" : `${n.numClasses} classes${n.nullClass ? " + null class" : ""}`;
  return `UNet2DModel(blocks [${a.blockOutChannels.join(", ")}], ${a.layersPerBlock} layer${a.layersPerBlock === 1 ? "" : "s"} per block${attn}, ${cls}, ${shape}) ${count(n.params)} params; discriminator head ${count(n.discriminatorHeadParams)}; ${from}`;
}

function memoryLines(plan: Plan): string[] {
  const m = plan.memory;
  const head = heading("Memory per worker process", `an estimate, float32, on ${plan.placement.device}${plan.placement.processes > plan.placement.workers.length ? "; a replicated role: one rank" : ""}`);
  if (m.unknown !== null) return [head, `  networks: ${networkText(m.network)}`, `  unknown: ${m.unknown}`];
  const dash = (b: number) => (b === 0 ? "-" : formatBytes(b));
  const roles = m.workers.flatMap((w) => w.roles);
  const ema = roles.some((r) => r.emaBytes > 0);
  const rows: string[][] = [["worker", "role", "params", "trained", "weights", "grads", "AdamW", ...(ema ? ["EMA"] : []), "activations", "total"]];
  for (const w of m.workers) {
    w.roles.forEach((r, i) => {
      const trained = r.trainedParams === r.params ? "all" : r.trainedParams === 0 ? "-" : formatCount(r.trainedParams);
      const acts = r.activationBytes === null ? "?" : dash(r.activationBytes);
      const total = (r.activationBytes === null ? ">= " : "") + formatBytes(r.totalBytes);
      rows.push([i === 0 ? w.worker : "", r.role, formatCount(r.params), trained, formatBytes(r.weightsBytes), dash(r.gradsBytes), dash(r.optimizerBytes), ...(ema ? [dash(r.emaBytes)] : []), acts, total]);
    });
  }
  const lora = m.network.lora;
  const frozen = roles.filter((r) => r.frozenParams > 0);
  return [
    head,
    `  networks: ${networkText(m.network)}`,
    ...(lora === null ? [] : [`  generator.lora: rank ${lora.rank} on ${lora.layers} layers (${lora.targets.join(", ")}): ${formatCount(lora.params)} trained params (${((100 * lora.params) / (m.params.unet ?? lora.params)).toFixed(1)}% of the UNet)`]),
    ...table(rows),
    `  per worker: ${m.workers.map((w) => `${w.worker} ${w.complete ? "~" : ">= "}${formatBytes(w.totalBytes)}`).join(", ")}`,
    ...frozen.map((r) => `  ${r.role}'s weights include the frozen ${r.frozenBasis} (${formatCount(r.frozenParams)} params)`),
    ...(m.activationsUnknown === null ? [] : [`  activations ${chalk.yellow("?")}: ${m.activationsUnknown}; the totals are lower bounds`]),
    `  trained networks: weights + grads + AdamW's 2 moments${ema ? " (+ the generator's average, generator.ema_decay)" : ""}; activations: what one forward keeps for the backward`,
    "  at the batch size (a replica's share), x2 for the backward (the roles' peaks added as if simultaneous); fsdp",
    "  divides weights, grads and AdamW by the replicas (plus one block gathered at a time); bf16 autocast and",
    "  gradient checkpointing lower the activations, not counted here",
    `  ${m.note}`,
  ];
}

function problemLines(plan: Plan): string[] {
  if (plan.problems.length === 0) return [heading("Problems", "none")];
  return [
    heading("Problems", String(plan.problems.length)),
    ...plan.problems.flatMap((p) => [`  ${chalk.red("problem")} ${p.subject}: ${p.message}`, ...(p.fix === undefined ? [] : [`          fix: ${p.fix}`])]),
  ];
}

export function formatPlan(plan: Plan): string {
  const r = plan.recipe.resolved;
  const sections = [
    [
      `${chalk.bold("dmd2 plan")} ${shown(plan.recipe.file)}: a dry run, nothing was started`,
      ...table([
        ["name", r.name],
        ["run folder", shown(r.run_dir)],
        ["data", dataText(plan)],
        ["teacher", r.teacher.source === "builtin" ? "built-in TinyUNet (teacher.builtin), trained and cached at set-up" : `diffusers folder ${shown(r.teacher.path!)}`],
        ["generator", `${r.generator.steps} step${r.generator.steps === 1 ? "" : "s"}, timesteps [${r.generator.timesteps.join(", ")}]`],
        ["training", `${r.train.steps} steps, batch ${r.train.batch_size}, seed ${r.seed}`],
      ]),
      "  (dmd2 plan --json gives the resolved recipe with every default, as recipe.resolved)",
    ],
    placementLines(plan),
    scheduleLines(plan),
    trafficLines(plan),
    checkpointLines(plan),
    memoryLines(plan),
    problemLines(plan),
  ];
  return sections.map((s) => s.join("\n")).join("\n\n") + "\n";
}
