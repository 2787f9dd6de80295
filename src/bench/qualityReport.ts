// What `npm run bench:quality` writes: quality.json (everything measured) and quality.md (the table of the
// evaluation, the noise floor, the picture, the machine, the wall time of each stage, the command).

import path from "node:path";
import { floorLine, markdownTable, speedups, trainLine, type EvalResult } from "../eval/table.js";
import type { Machine } from "./machine.js";
import { checkTargets, targetsMarkdown } from "./qualityTargets.js";

export interface Stage {
  name: string;
  /** the dmd2 command line, with the scratch folder written as $WORK */
  command: string;
  seconds: number;
}

export interface QualityResults {
  format: "dmd2-bench-quality";
  version: 1;
  created: string;
  /** how the benchmark was invoked */
  command: string;
  work_dir: string;
  machine: Machine;
  /** load averages (1, 5, 15 minutes) at start and end */
  load: { start: number[]; end: number[] };
  stages: Stage[];
  total_s: number;
  picture: string;
  evaluation: EvalResult;
  /** the table: one row per model and step count */
  rows: Array<{ model: string; steps: number; fd: number; accuracy: number | null; images_per_s: number; speed_up: number | null }>;
}

export function tableRows(result: EvalResult): QualityResults["rows"] {
  const ups = speedups(result.rows);
  return result.rows.map((r, i) => ({ model: r.label, steps: r.steps, fd: r.fd, accuracy: r.accuracy, images_per_s: r.images_per_s, speed_up: ups[i]! }));
}

const seconds = (s: number) => (s >= 120 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(0)} s`);

/** quality.md; `mdFile` is where it is written (the picture is linked relative to it). */
/** "5000 samples per row", or with several draws "3 draws of 5000 samples per row (seeds 0, 1, 2; FD: their mean ± standard deviation)". */
function drawsText(ev: EvalResult): string {
  const k = ev.repeats ?? 1;
  if (k === 1) return `${ev.n} samples per row`;
  return `${k} draws of ${ev.n} samples per row (consecutive seeds, the same for every row; FD: the draws' mean ± standard deviation)`;
}

export function qualityMarkdown(res: QualityResults, mdFile: string): string {
  const m = res.machine;
  const picture = path.relative(path.dirname(mdFile), res.picture);
  const train = trainLine(res.evaluation);
  const stageRows = res.stages.map((s) => `| ${s.name} | \`${s.command}\` | ${seconds(s.seconds)} |`);
  return [
    "# Quality benchmark: handwritten digits",
    "",
    `Written by \`${res.command}\` on ${res.created}. A class-conditional teacher is trained on the train split of ` +
      "scikit-learn's 8x8 digits (`recipes/digits-teacher.yaml`), distilled into a 1-step generator " +
      "(`recipes/digits-1step.yaml`) and a 4-step one (`recipes/digits.yaml`), and all are scored on the held-out split by `dmd2 eval` " +
      `(docs/pipeline.md §4): ${drawsText(res.evaluation)}, each scored as the 8-bit image a user gets (clamped to the data's range), Fréchet distance (FD, lower is better) in the ` +
      `${res.evaluation.features} feature space, the share of samples classified as the class asked for, and ` +
      `sampling speed. The teacher samples with DDIM. Raw numbers: \`${path.basename(mdFile, ".md")}.json\` next to this file.`,
    "",
    markdownTable(res.evaluation),
    "",
    `${floorLine(res.evaluation)}.`,
    ...(train === null ? [] : ["", `${train}.`]),
    "",
    "## Targets",
    "",
    ...targetsMarkdown(checkTargets(res.evaluation, res.total_s)),
    "",
    `![rows: real held-out digits, teacher 50 steps, student 1 step, student 4 steps](${picture})`,
    "",
    "## Machine",
    "",
    "| | |",
    "|---|---|",
    `| CPU | ${m.cpu_model}, ${m.cores} cores |`,
    `| memory | ${m.memory_gib} GiB |`,
    `| OS | ${m.os} |`,
    `| node | ${m.node} |`,
    `| Python | ${m.python.python}, torch ${m.python.torch} (${m.python.torch_parallel}) |`,
    `| load average (1/5/15 min) | start ${res.load.start.join(" / ")}, end ${res.load.end.join(" / ")} |`,
    "",
    "## Wall time",
    "",
    `\`$WORK\` was ${res.work_dir}. The two distillations run side by side, so their times overlap.`,
    "",
    "| stage | command | wall time |",
    "|---|---|---:|",
    ...stageRows,
    `| total | \`${res.command}\` | ${seconds(res.total_s)} |`,
    "",
  ].join("\n");
}
