// Small line charts as inline SVG strings: a few series against the step, axes with round ticks, a log y axis
// when the values are positive and span more than two decades. Noisy series (many points) are drawn faint, with
// an exponential moving average over them (TensorBoard's debiased smoothing). A missing value (a step on which the
// metric was not logged) is stepped over; a null (non-finite) value breaks the line.

export interface Series {
  name: string;
  /** [step, value]; null: non-finite */
  points: Array<[number, number | null]>;
}

export interface ChartOptions {
  title: string;
  width?: number;
  height?: number;
  /** the x range, shared by all charts of a page so that they line up */
  xDomain?: [number, number];
}

export const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const MAX_POINTS = 1500;
const SMOOTH_FROM = 30;

export const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);

/** Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about `count` of them. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const steps = [0.5, 1, 2, 5, 10].map((k) => k * mag);
  let i = steps.findIndex((st) => st >= raw * (1 - 1e-9));
  if (i < 0) i = steps.length - 1;
  let best: number[] = [];
  // the smallest round step of at least `raw`; finer while that gives fewer than 3 ticks
  for (; i >= 0; i--) {
    const step = steps[i]!;
    const out: number[] = [];
    for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) out.push(k === 0 ? 0 : Number((k * step).toPrecision(12)));
    best = out;
    if (out.length >= 3) break;
  }
  return best;
}

export function formatTick(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(0).replace("e+", "e");
  return String(Number(v.toPrecision(4)));
}

/** TensorBoard's smoothing: an exponential moving average, debiased at the start. Nulls pass through. */
export function smooth(values: Array<number | null>, weight: number): Array<number | null> {
  let last = 0;
  let n = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return null;
    last = last * weight + (1 - weight) * v;
    n++;
    return last / (1 - weight ** n);
  });
}

function stride<T>(xs: T[], max: number): T[] {
  if (xs.length <= max) return xs;
  const k = Math.ceil(xs.length / max);
  const out = xs.filter((_, i) => i % k === 0);
  if (out[out.length - 1] !== xs[xs.length - 1]) out.push(xs[xs.length - 1]!);
  return out;
}

const minOf = (xs: number[]) => xs.reduce((a, b) => (b < a ? b : a), Infinity);
const maxOf = (xs: number[]) => xs.reduce((a, b) => (b > a ? b : a), -Infinity);

/** The chart as an SVG element; `log`: whether the y axis is logarithmic. */
export function lineChart(series: Series[], opts: ChartOptions): { svg: string; log: boolean } {
  const W = opts.width ?? 380;
  const H = opts.height ?? 210;
  const m = { l: 50, r: 10, t: 10, b: 26 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const finite = series.flatMap((s) => s.points.map((p) => p[1]).filter((v): v is number => v !== null && Number.isFinite(v)));
  const steps = series.flatMap((s) => s.points.map((p) => p[0]));
  const [x0, x1] = opts.xDomain ?? (steps.length ? [minOf(steps), maxOf(steps)] : [0, 1]);
  let lo = finite.length ? minOf(finite) : 0;
  let hi = finite.length ? maxOf(finite) : 1;
  // a log axis when the positive values span more than two decades and (nearly) all values are positive; at most
  // six decades are shown, smaller values sit on the bottom edge
  const positive = finite.filter((v) => v > 0);
  const minPos = minOf(positive);
  const log = positive.length > 0 && positive.length >= 0.95 * finite.length && hi / minPos > 100;
  if (log) lo = Math.max(minPos, hi / 1e6);
  if (!log && hi - lo < 1e-12) {
    const pad = Math.abs(hi) > 0 ? Math.abs(hi) * 0.1 : 1;
    lo -= pad;
    hi += pad;
  } else if (!log) {
    const pad = (hi - lo) * 0.04;
    lo -= pad;
    hi += pad;
  }
  const ty = log ? (v: number) => Math.log10(v) : (v: number) => v;
  const [ylo, yhi] = log ? [Math.floor(Math.log10(lo)), Math.ceil(Math.log10(hi))] : [lo, hi];
  const sx = (x: number) => m.l + (x1 > x0 ? ((x - x0) / (x1 - x0)) * pw : pw / 2);
  const sy = (v: number) => m.t + ph - ((Math.min(yhi, Math.max(ylo, ty(v))) - ylo) / (yhi - ylo)) * ph;
  const f = (n: number) => n.toFixed(1);

  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${escapeHtml(opts.title)}">`);
  parts.push(`<title>${escapeHtml(opts.title)}</title>`);
  // grid and axes
  const yTicks = log ? Array.from({ length: yhi - ylo + 1 }, (_, i) => 10 ** (ylo + i)) : niceTicks(lo, hi, 4);
  for (const v of yTicks) {
    const y = sy(v);
    parts.push(`<line class="grid" x1="${m.l}" x2="${W - m.r}" y1="${f(y)}" y2="${f(y)}"/>`);
    parts.push(`<text class="tick" x="${m.l - 4}" y="${f(y + 3)}" text-anchor="end">${formatTick(v)}</text>`);
  }
  for (const v of niceTicks(x0, x1, 5).filter((v) => Number.isInteger(v))) {
    const x = sx(v);
    parts.push(`<line class="grid" x1="${f(x)}" x2="${f(x)}" y1="${m.t}" y2="${m.t + ph}"/>`);
    parts.push(`<text class="tick" x="${f(x)}" y="${H - 8}" text-anchor="middle">${formatTick(v)}</text>`);
  }
  parts.push(`<rect class="frame" x="${m.l}" y="${m.t}" width="${pw}" height="${ph}"/>`);
  // series
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length]!;
    const smoothed = s.points.length >= SMOOTH_FROM;
    const draw = (pts: Array<[number, number | null]>, cls: string) => {
      let d = "";
      let pen = false;
      let n = 0;
      for (const [x, v] of stride(pts, MAX_POINTS)) {
        if (v === null || !Number.isFinite(v)) {
          pen = false;
          continue;
        }
        d += `${pen ? "L" : "M"}${f(sx(x))},${f(sy(v))}`;
        pen = true;
        n++;
      }
      if (n === 1) d += "h0.01"; // a single point: a dot (round caps make it visible)
      if (n > 0) parts.push(`<path class="series ${cls}" data-metric="${escapeHtml(s.name)}" data-points="${n}" stroke="${color}" d="${d}"/>`);
    };
    draw(s.points, smoothed ? "raw faint" : "raw");
    if (smoothed) {
      const sm = smooth(s.points.map((p) => p[1]), 0.8);
      draw(s.points.map((p, j) => [p[0], sm[j]!]), "smooth");
    }
  });
  parts.push("</svg>");
  return { svg: parts.join(""), log };
}
