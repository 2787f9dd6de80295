// Order statistics of repeated timings: median and the p10/p90 spread, plus the mean (which, for training steps,
// averages over whole TTUR cycles and so includes the rarer generator steps).

export interface Summary {
  n: number;
  median: number;
  p10: number;
  p90: number;
  mean: number;
  min: number;
  max: number;
}

/** The q-quantile (0..1) of already sorted values, linear between order statistics (numpy's default). */
export function quantileSorted(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) throw new Error("quantile of no values");
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

export function summarize(values: readonly number[]): Summary {
  if (values.length === 0) throw new Error("summary of no values");
  const sorted = [...values].sort((a, b) => a - b);
  return {
    n: sorted.length,
    median: quantileSorted(sorted, 0.5),
    p10: quantileSorted(sorted, 0.1),
    p90: quantileSorted(sorted, 0.9),
    mean: sorted.reduce((s, v) => s + v, 0) / sorted.length,
    min: sorted[0]!,
    max: sorted[sorted.length - 1]!,
  };
}

/** Scales every statistic (e.g. seconds -> milliseconds). */
export function scaleSummary(s: Summary, k: number): Summary {
  return { n: s.n, median: s.median * k, p10: s.p10 * k, p90: s.p90 * k, mean: s.mean * k, min: s.min * k, max: s.max * k };
}
