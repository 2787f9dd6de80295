// The numbers of a metrics.jsonl row, and the family each belongs to. TensorBoard tags are `<family>/<name>`
// and `dmd2 report` draws one chart per family, so both group the metrics the same way.

/** Row fields that are not metrics: the step itself and the wall-clock time it ended. */
const NOT_METRICS = new Set(["step", "time"]);

export type MetricFamily = "loss" | "grad_norm" | "discriminator" | "lr" | "time" | "schedule" | "alarm" | "other";

export function metricFamily(name: string): MetricFamily {
  if (name.startsWith("loss_")) return "loss";
  if (name.endsWith("grad_norm")) return "grad_norm";
  if (/^d_(real|fake)/.test(name)) return "discriminator";
  if (name.startsWith("lr_")) return "lr";
  if (name.startsWith("alarm_")) return "alarm"; // src/run/alarms.ts: 1 at the step an alarm was raised
  if (name.endsWith("_time_s")) return "time";
  if (name === "gen_updates" || name === "gen_k") return "schedule"; // the schedule's counters and draws
  return "other";
}

/** The metrics of one row: every number (null stands for a NaN or infinite value), without step and time. */
export function rowMetrics(row: Record<string, unknown>): Array<[string, number | null]> {
  const out: Array<[string, number | null]> = [];
  for (const [k, v] of Object.entries(row)) {
    if (NOT_METRICS.has(k)) continue;
    if (typeof v === "number" || v === null) out.push([k, v]);
  }
  return out;
}

export const metricTag = (name: string) => `${metricFamily(name)}/${name}`;
