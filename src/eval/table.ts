// The evaluation's result (docs/pipeline.md §4) as a table: one row per model and step count, with the
// speed-up over the teacher's 50 steps when a teacher was run at 50. Used by `dmd2 eval` (text) and by the
// quality benchmark (markdown).

export interface EvalRow {
  label: string;
  kind: "teacher" | "student";
  steps: number;
  /** the mean over the draws (repeats) */
  fd: number;
  /** the draws' standard deviation; null with one draw */
  fd_sd: number | null;
  /** each draw's FD */
  fd_draws: number[];
  /** the mean over the draws of the same distance to the whole train split (absent in results written before it
   * existed; null when a draw diverged) */
  fd_train?: number | null;
  /** null with torchscript or inception features */
  accuracy: number | null;
  images_per_s: number;
  seconds: number;
}

export interface EvalResult {
  noise_floor: number;
  /** the size of the train split fd_train is measured against (absent in results written before it existed) */
  train_images?: number;
  heldout_accuracy: number | null;
  features: string;
  n: number;
  /** draws of n samples per row (absent in results written before it existed: 1) */
  repeats?: number;
  rows: EvalRow[];
}

const REFERENCE_STEPS = 50;

const COLUMNS = ["model", "steps", "FD", "FD to train split", "class accuracy", `images/s`, `speed-up over teacher ${REFERENCE_STEPS} steps`] as const;

/** images/s of each row over those of the first teacher row at 50 steps; null without one. */
export function speedups(rows: readonly EvalRow[]): Array<number | null> {
  const ref = rows.find((r) => r.kind === "teacher" && r.steps === REFERENCE_STEPS);
  return rows.map((r) => (ref === undefined ? null : r.images_per_s / ref.images_per_s));
}

const number4 = (x: number) => (x >= 1000 ? x.toFixed(0) : x.toPrecision(4));

/** "1.262", or with several draws "1.262 ± 0.169" (mean ± standard deviation of the draws). */
function fdText(r: EvalRow): string {
  const mean = number4(r.fd);
  return r.fd_sd === null || r.fd_sd === undefined ? mean : `${mean} ± ${r.fd_sd.toPrecision(2)}`;
}

const percent = (x: number | null) => (x === null ? "-" : `${(x * 100).toFixed(1)}%`);

/** The table's cells, as text, one array per row. */
function cells(result: EvalResult): string[][] {
  const ups = speedups(result.rows);
  return result.rows.map((r, i) => [
    r.label,
    String(r.steps),
    fdText(r),
    r.fd_train === null || r.fd_train === undefined ? "-" : number4(r.fd_train),
    percent(r.accuracy),
    r.images_per_s >= 100 ? r.images_per_s.toFixed(0) : r.images_per_s.toPrecision(3),
    ups[i] === null ? "-" : `${ups[i]!.toFixed(1)}x`,
  ]);
}

/** What a perfect model would score at this sample size. */
export function floorLine(result: EvalResult): string {
  const acc = result.heldout_accuracy === null ? "" : `; the classifier's accuracy on held-out images: ${percent(result.heldout_accuracy)}`;
  return `Noise floor (train vs held-out images, ${result.features} features): FD ${result.noise_floor.toPrecision(4)}${acc}`;
}

/** What the "FD to train split" column measures; null for results written before it existed. */
export function trainLine(result: EvalResult): string | null {
  if (result.train_images === undefined) return null;
  return `FD to train split: the same distance to the ${result.train_images} training images (what the teacher and the GAN ` +
    "learnt from); a model much closer to them than to the held-out images reproduces its training images' statistics, " +
    "and its held-out FD then moves with the direction of its remaining error more than with its quality";
}

/** The lines under the text table: the noise floor and, when measured, what "FD to train split" is. */
export function notes(result: EvalResult): string {
  const train = trainLine(result);
  return train === null ? floorLine(result) : `${floorLine(result)}\n${train}`;
}

export function textTable(result: EvalResult): string {
  const rows = [[...COLUMNS], ...cells(result)];
  const widths = COLUMNS.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const line = (r: string[]) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  ");
  return [line(rows[0]!), ...rows.slice(1).map(line)].join("\n");
}

export function markdownTable(result: EvalResult): string {
  const line = (r: readonly string[]) => `| ${r.join(" | ")} |`;
  return [line(COLUMNS), line(COLUMNS.map((_, c) => (c === 0 ? "---" : "---:"))), ...cells(result).map(line)].join("\n");
}
