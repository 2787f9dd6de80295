// The comparisons the benchmark reports (one row each: A, B, A/B and the target if there is one), the table
// printed on the terminal, and the markdown written next to the JSON.

import type { Machine } from "./machine.js";
import type { SamplingResult } from "./sampling.js";
import { quietSets, type StepResult, type StepVariant } from "./steps.js";
import type { Summary } from "./stats.js";
import { formatBytes, type RoundTrips, type TransportResult } from "./transport.js";

export interface Quantity {
  label: string;
  /** the number the ratio is taken of */
  value: number;
  unit: string;
  p10?: number;
  p90?: number;
  mean?: number;
}

export interface Row {
  id: string;
  group: string;
  label: string;
  a: Quantity;
  b: Quantity;
  /** a.value / b.value */
  ratio: number;
  /** step rows: the ratio of the means (whole TTUR cycles, generator steps included) */
  ratio_mean?: number;
  target?: { op: "<=" | ">="; value: number; text: string };
  meets_target?: boolean;
  note?: string;
}

export interface BenchResults {
  format: "dmd2-bench";
  version: 1;
  quick: boolean;
  created: string;
  duration_s: number;
  machine: Machine;
  /** load averages at start and end; the highest 1-minute load seen, and [seconds, 1-minute load] every 5 s */
  load: { start: number[]; end: number[]; max_1min: number; samples: Array<[number, number]> };
  settings: Record<string, unknown>;
  steps: StepResult[];
  transport: TransportResult | null;
  sampling: SamplingResult | null;
  rows: Row[];
}

// --- rows --------------------------------------------------------------------------------------------------

function stepQuantity(r: StepResult, label: string): Quantity {
  const ms = (x: number) => x * 1000;
  return { label, value: ms(r.stats.median), unit: "ms/step", p10: ms(r.stats.p10), p90: ms(r.stats.p90), mean: ms(r.stats.mean) };
}

function describeStep(r: StepResult): string {
  if (r.mode === "local") return `(c) plain loop, 1 process x ${r.torch_threads} thread(s)`;
  if (r.mode === "colocated") return `(a) colocated, 1 worker x ${r.torch_threads} thread(s)`;
  return `(b) per_role, ${r.processes} workers x ${r.torch_threads} thread(s)`;
}

function withTarget(row: Row): Row {
  if (row.target) row.meets_target = row.target.op === "<=" ? row.ratio <= row.target.value : row.ratio >= row.target.value;
  return row;
}

export function stepRows(variants: StepVariant[], results: StepResult[]): Row[] {
  const rows: Row[] = [];
  for (const v of variants) {
    const get = (key: string) => results.find((r) => r.id === `${v.id}.${key}`);
    const pair = (id: string, label: string, aKey: string, bKey: string, note: string, target?: number) => {
      const a = get(aKey);
      const b = get(bKey);
      if (!a || !b) return;
      const row: Row = {
        id: `steps.${v.id}.${id}`,
        group: `step time, ${v.id} (${v.label})`,
        label,
        a: stepQuantity(a, describeStep(a)),
        b: stepQuantity(b, describeStep(b)),
        ratio: a.stats.median / b.stats.median,
        ratio_mean: a.stats.mean / b.stats.mean,
        ...(target !== undefined ? { target: { op: "<=" as const, value: target, text: `<= ${target.toFixed(2)}` } } : {}),
        note,
      };
      rows.push(withTarget(row));
    };
    const t = get("colocated.default")?.torch_threads ?? 0;
    const fixed = v.threads !== undefined;
    pair("a_over_c", `(a) colocated / (c) plain loop, ${t} thread(s) each${fixed ? "" : " (default)"}`, "colocated.default", "local.default", "coordinator + protocol cost with all roles in one process", v.aOverCTarget);
    pair("a_over_c.t1", "(a) colocated / (c) plain loop, 1 thread each", "colocated.t1", "local.t1", "same, at 1 torch thread", v.aOverCTarget);
    pair(
      "b_over_a",
      `(b) per_role / (a) colocated, ${fixed ? "" : "default "}threads (${get("per_role.default")?.torch_threads ?? "?"} vs ${t})`,
      "per_role.default",
      "colocated.default",
      "default placements: per_role's workers get all cores each when the networks are compute-bound, else floor(cores/3); colocated gets all cores",
      v.bOverATarget,
    );
    pair("b_over_a.t1", "(b) per_role / (a) colocated, 1 thread per process", "per_role.t1", "colocated.t1", "same threads per process");
  }
  return rows;
}

function rttQuantity(r: RoundTrips, label: string): Quantity {
  const us = (x: number) => x * 1e6;
  return { label, value: us(r.stats.median), unit: "us", p10: us(r.stats.p10), p90: us(r.stats.p90), mean: us(r.stats.mean) };
}

function throughputQuantity(r: RoundTrips, label: string): Quantity {
  const mib = (x: number) => x / 2 ** 20;
  const t = r.throughput!;
  return { label, value: mib(t.sustained), unit: "MiB/s", p10: mib(t.p10), p90: mib(t.p90) };
}

export function transportRows(t: TransportResult): Row[] {
  const rows: Row[] = [
    withTarget({
      id: "transport.control_rtt",
      group: "transport (ipc)",
      label: "control round trip: protocol / bare (time)",
      a: rttQuantity(t.control.protocol, "WorkerClient.op -> dmd2_worker server"),
      b: rttQuantity(t.control.bare, "zeromq.js DEALER <-> pyzmq DEALER echo"),
      ratio: t.control.protocol.stats.median / t.control.bare.stats.median,
      target: { op: "<=", value: 2, text: "<= 2x" },
      note: "op request with no tensors and its reply",
    }),
  ];
  for (const p of t.payloads) {
    const size = formatBytes(p.bytes);
    rows.push(
      withTarget({
        id: `transport.throughput.${p.bytes}`,
        group: "transport (ipc)",
        label: `${size} tensor echo: protocol / bare (throughput)`,
        a: throughputQuantity(p.protocol, "protocol"),
        b: throughputQuantity(p.bare, "bare"),
        ratio: p.protocol.throughput!.sustained / p.bare.throughput!.sustained,
        ...(p.bytes === 16 * 2 ** 20 ? { target: { op: ">=" as const, value: 0.8, text: ">= 0.80" } } : {}),
        note: `${size} out and back per round trip (2x counted); sustained over ${p.reps} round trips, [p10-p90] of the per-request rate`,
      }),
    );
  }
  return rows;
}

function imagesQuantity(s: Summary, label: string): Quantity {
  return { label, value: s.median, unit: "img/s", p10: s.p10, p90: s.p90, mean: s.mean };
}

export function samplingRows(s: SamplingResult): Row[] {
  const rows: Row[] = [];
  for (const teacher of s.rows.filter((r) => r.model === "teacher")) {
    for (const student of s.rows.filter((r) => r.model === "student")) {
      rows.push({
        id: `sampling.student${student.steps}_over_teacher${teacher.steps}`,
        group: `sampling (${s.torch_threads} thread, batch ${student.n})`,
        label: `student ${student.steps} step(s) / teacher DDIM ${teacher.steps} (images/s)`,
        a: imagesQuantity(student.images_per_s, `student, ${student.steps} step(s)`),
        b: imagesQuantity(teacher.images_per_s, `teacher, DDIM ${teacher.steps}`),
        ratio: student.images_per_s.median / teacher.images_per_s.median,
        note: `network evaluations ${teacher.steps} vs ${student.steps}: ideal speed-up ${(teacher.steps / student.steps).toFixed(0)}x`,
      });
    }
  }
  return rows;
}

// --- formatting --------------------------------------------------------------------------------------------

function num(x: number): string {
  const a = Math.abs(x);
  if (a >= 1000) return x.toFixed(0);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toFixed(3);
}

export function formatQuantity(q: Quantity): string {
  const spread = q.p10 !== undefined && q.p90 !== undefined ? ` [${num(q.p10)}-${num(q.p90)}]` : "";
  return `${num(q.value)}${spread} ${q.unit}`;
}

function formatRatio(row: Row): string {
  const r = `${row.ratio.toFixed(2)}x`;
  return row.ratio_mean !== undefined ? `${r} (mean ${row.ratio_mean.toFixed(2)}x)` : r;
}

function formatTarget(row: Row): string {
  if (!row.target) return "";
  return `${row.target.text} ${row.meets_target ? "met" : "MISSED"}`;
}

const HEADERS = ["comparison", "A [p10-p90]", "B [p10-p90]", "A/B", "target"];

function cells(row: Row): string[] {
  return [row.label, formatQuantity(row.a), formatQuantity(row.b), formatRatio(row), formatTarget(row)];
}

/** The terminal table: one line per comparison, grouped. */
export function textTable(rows: Row[]): string {
  const body = rows.map(cells);
  const widths = HEADERS.map((h, i) => Math.max(h.length, ...body.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => x.padEnd(widths[i]!)).join(" | ").trimEnd();
  const out: string[] = [line(HEADERS), widths.map((w) => "-".repeat(w)).join("-+-")];
  let group = "";
  for (let i = 0; i < rows.length; i++) {
    if (rows[i]!.group !== group) {
      group = rows[i]!.group;
      out.push(`${group}:`);
    }
    out.push(line(body[i]!));
  }
  return out.join("\n");
}

function mdEscape(s: string): string {
  return s.replace(/\|/g, "\\|");
}

export function markdownTable(rows: Row[]): string {
  const out = [`| ${HEADERS.join(" | ")} |`, `|${HEADERS.map(() => "---").join("|")}|`];
  let group = "";
  for (const row of rows) {
    if (row.group !== group) {
      group = row.group;
      out.push(`| **${mdEscape(group)}** | | | | |`);
    }
    out.push(`| ${cells(row).map(mdEscape).join(" | ")} |`);
  }
  return out.join("\n");
}

function ms(x: number): string {
  return num(x * 1000);
}

export function markdownReport(res: BenchResults, variants: StepVariant[]): string {
  const m = res.machine;
  const lines: string[] = [];
  lines.push("# dmd2 benchmark results", "");
  lines.push(
    `Written by \`npm run bench\`${res.quick ? " --quick (smoke mode: tiny sizes, numbers mean nothing)" : ""} on ${res.created} ` +
      `(${res.duration_s.toFixed(0)} s). Raw numbers: \`results.json\` next to this file. Timings on a shared machine are noisy: ` +
      `compare ratios measured in the same run, not absolute times across runs.`,
    "",
  );
  lines.push("## Machine", "");
  lines.push(`| | |`, `|---|---|`);
  lines.push(`| CPU | ${mdEscape(m.cpu_model)}, ${m.cores} cores |`);
  lines.push(`| memory | ${m.memory_gib} GiB |`);
  lines.push(`| OS | ${m.os} |`);
  lines.push(`| node | ${m.node}, zeromq.js ${m.zeromq_js} |`);
  lines.push(`| Python | ${m.python.python}, torch ${m.python.torch} (${m.python.torch_parallel}), pyzmq ${m.python.pyzmq}, libzmq ${m.python.libzmq} |`);
  lines.push(
    `| load average (1/5/15 min) | start ${res.load.start.join(" / ")}, end ${res.load.end.join(" / ")}; ` +
      `highest 1-minute load during the run ${res.load.max_1min} (sampled every 5 s) |`,
    "",
  );

  lines.push("## Comparisons", "");
  lines.push(
    "Each row compares two things measured side by side in this run. Times are medians with the [p10-p90] spread; " +
      "for step times the ratio of the means (whole TTUR cycles, so generator steps included) is given too; throughput is " +
      "sustained (total bytes over total time) with the [p10-p90] of the per-request rate.",
    "",
  );
  lines.push(markdownTable(res.rows), "");

  if (res.steps.length > 0) {
    lines.push("## Step times", "");
    for (const v of variants) {
      const prep = v.prepare
        ? ` after \`dmd2 train-teacher ${v.prepare.recipe} --out <scratch>/${v.id}-teacher${v.prepare.sets.map((s) => ` --set ${s}`).join("")}\` (once, untimed), with \`--set teacher.path=<scratch>/${v.id}-teacher\``
        : "";
      const sets = v.sets.map((s) => `\`--set ${s}\``).join(" ");
      lines.push(
        `- **${v.id}**: \`dmd2 distill ${v.recipe}\`${sets ? " with " + sets : ""}${prep}; ` +
          `${v.warmup} warm-up steps skipped, ${v.steps} steps timed, ${v.rounds} round(s) of all configurations interleaved` +
          `${v.threads !== undefined ? `, ${v.threads} torch thread(s) per process everywhere` : ""}` +
          `${v.aOverCTarget !== undefined ? `; target (a)/(c) <= ${v.aOverCTarget.toFixed(2)}` : ""}${v.bOverATarget !== undefined ? `, (b)/(a) at the default threads <= ${v.bOverATarget.toFixed(2)}` : ""}.`,
      );
    }
    const common = ["run_dir=<scratch>", "placement=colocated|per_role", "train.steps=<warm-up + timed>", "train.checkpoint_every=<past the end>", "train.log_every=<past the end>", "sample.num=4", ...quietSets()];
    lines.push(
      "",
      "(a) and (b) are `step_time_s` from the run's `metrics.jsonl` (the coordinator's clock around each step) of " +
        `\`node bin/dmd2.js distill <recipe> --json ${common.map((x) => `--set ${x}`).join(" ")}\` plus the variant's settings ` +
        "(and `--set torch_threads=1` for the 1-thread colocated rows); the only checkpoint is written after the last step. " +
        "(c) is `python -m dmd2_worker.bench local` on the colocated run's `recipe.resolved.json` (`local_loop.train_step`: " +
        "the same role code in one process, no coordinator, no sockets), with OMP_NUM_THREADS and torch.set_num_threads as stated.",
      "",
    );
    lines.push("| configuration | processes x threads | median ms | p10 | p90 | mean | generator steps (median) | other steps (median) | steps |");
    lines.push("|---|---|---|---|---|---|---|---|---|");
    for (const r of res.steps) {
      lines.push(
        `| ${r.id} | ${r.processes} x ${r.torch_threads} | ${ms(r.stats.median)} | ${ms(r.stats.p10)} | ${ms(r.stats.p90)} | ${ms(r.stats.mean)} | ` +
          `${r.generator_steps ? ms(r.generator_steps.median) : "-"} | ${r.other_steps ? ms(r.other_steps.median) : "-"} | ${r.stats.n} |`,
      );
    }
    lines.push("");
  }

  if (res.transport) {
    const t = res.transport;
    lines.push("## Transport", "");
    lines.push(
      `Over ${t.transport}, in alternating blocks of back-to-back requests (protocol block, bare block, several rounds per size). ` +
        "Round trips are medians; throughput is sustained (bytes both ways over the total time of all round trips), because " +
        "zeromq.js hands received payloads to V8 as external memory and a GC pause lands on every second or third large round " +
        "trip, which makes per-request medians jump between two modes. Protocol: `WorkerClient.op` to the real `dmd2_worker` server " +
        "hosting the bench-only echo role (`python -m dmd2_worker.bench_worker`). Bare: a zeromq.js DEALER and a pyzmq DEALER " +
        "(`python -m dmd2_worker.bench bare-echo`) sending the same frames back untouched. Throughput counts the payload both ways.",
      "",
    );
    lines.push("| payload | protocol round trip (median ms) | bare (median ms) | protocol MiB/s (sustained) | bare MiB/s (sustained) | protocol / bare | reps |");
    lines.push("|---|---|---|---|---|---|---|");
    lines.push(
      `| control (${t.control.header_bytes} B header) | ${ms(t.control.protocol.stats.median)} | ${ms(t.control.bare.stats.median)} | - | - | ` +
        `${(t.control.protocol.stats.median / t.control.bare.stats.median).toFixed(2)}x time | ${t.control.reps} |`,
    );
    for (const p of t.payloads) {
      const mib = (r: RoundTrips) => num(r.throughput!.sustained / 2 ** 20);
      lines.push(
        `| ${formatBytes(p.bytes)} | ${ms(p.protocol.stats.median)} | ${ms(p.bare.stats.median)} | ${mib(p.protocol)} | ${mib(p.bare)} | ` +
          `${(p.protocol.throughput!.sustained / p.bare.throughput!.sustained).toFixed(2)}x throughput | ${p.reps} |`,
      );
    }
    lines.push("");
  }

  if (res.sampling) {
    const s = res.sampling;
    lines.push("## Sampling", "");
    lines.push(
      `\`python -m dmd2_worker.bench sample\`: ${s.torch_threads} torch thread, the tiny recipe's built-in teacher ` +
        `(DDIM, eta 0, guidance ${s.guidance_scale}) and the bench run's generator (few-step sampler).`,
      "",
    );
    lines.push("| model | steps | batch | images/s median [p10-p90] | ms per batch (median) |");
    lines.push("|---|---|---|---|---|");
    for (const r of s.rows) {
      const i = r.images_per_s;
      lines.push(`| ${r.model} | ${r.steps} | ${r.n} | ${num(i.median)} [${num(i.p10)}-${num(i.p90)}] | ${ms(r.n / i.median)} |`);
    }
    lines.push("");
  }
  return lines.join("\n");
}
