// The report page: one HTML file with everything inline (SVG charts, PNG grids as data: URIs, CSS, a few lines of
// script), so it can be mailed or opened anywhere; its Content-Security-Policy forbids every network request.

import { readFileSync } from "node:fs";
import path from "node:path";
import { metricFamily, rowMetrics, type MetricFamily } from "../run/metrics.js";
import { pngInfo } from "../run/tensorboard.js";
import { escapeHtml, formatTick, lineChart, PALETTE, type Series } from "./chart.js";
import { evenlySpaced, type RunData } from "./data.js";

/** Chart per family, in this order. `schedule` (gen_updates, gen_k) is left out: the update count and the backward-simulation draw are no training signal. */
const FAMILIES: Array<{ family: MetricFamily; title: string }> = [
  { family: "loss", title: "Losses" },
  { family: "grad_norm", title: "Gradient norms" },
  { family: "discriminator", title: "Discriminator logits" },
  { family: "lr", title: "Learning rates" },
  { family: "time", title: "Step time (s)" },
  { family: "alarm", title: "Collapse alarms (1 at the step raised)" },
  { family: "other", title: "Other" },
];

export const MAX_TRAINING_GRIDS = 24;

const CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'";

const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1240px;padding:0 16px;color:#1b1f24;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.sub{color:#59636e;margin:0 0 12px} code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
table.facts{border-collapse:collapse} table.facts td{padding:2px 14px 2px 0;vertical-align:top} table.facts td:first-child{color:#59636e}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:14px}
.card{border:1px solid #e3e6ea;border-radius:6px;padding:8px 10px}
.card h3{font-size:14px;margin:0 0 4px}
svg.chart{display:block;max-width:100%;height:auto}
svg .grid{stroke:#eef0f2;stroke-width:1} svg .frame{fill:none;stroke:#c9ced4;stroke-width:1}
svg .tick{font-size:10px;fill:#59636e} svg .series{fill:none;stroke-width:1.6;stroke-linejoin:round;stroke-linecap:round}
svg .faint{stroke-opacity:.28;stroke-width:1}
.legend{display:flex;flex-wrap:wrap;gap:2px 12px;font-size:12px;margin-top:4px}
.legend .sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.legend .v{color:#59636e} .legend .bad{color:#b42318}
.grids{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;display:inline-block} figcaption{font-size:12px;color:#59636e;text-align:center}
.grids img{max-width:280px;height:auto} img{image-rendering:pixelated;border:1px solid #e3e6ea;max-width:100%}
pre.recipe{background:#f6f8fa;border:1px solid #e3e6ea;border-radius:6px;padding:10px;overflow:auto;max-height:520px}
.empty{color:#59636e;font-style:italic}
`;

// Marks each image once decoded (data-loaded = its natural width) and each chart line with its drawn length, so
// that a headless browser's DOM dump shows the page really rendered.
const SCRIPT = `
(() => {
  const imgs = Array.from(document.images);
  Promise.all(imgs.map((img) => img.decode().then(
    () => { img.dataset.loaded = String(img.naturalWidth); },
    () => { img.dataset.loaded = "error"; })))
    .then(() => { document.body.dataset.imagesLoaded = String(imgs.filter((i) => i.naturalWidth > 0).length); });
  for (const p of document.querySelectorAll("svg path.series")) p.dataset.length = p.getTotalLength().toFixed(1);
})();
`;

function dataUri(file: string): { uri: string; width: number; height: number } {
  const png = readFileSync(file);
  const { width, height } = pngInfo(png);
  return { uri: `data:image/png;base64,${png.toString("base64")}`, width, height };
}

function fmt(v: number | null | undefined): string {
  if (v === null || v === undefined) return "nan";
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(3).replace(/\.?0+e/, "e").replace("e+", "e");
  return String(Number(v.toPrecision(4)));
}

function charts(data: RunData): string[] {
  const { rows } = data;
  if (rows.length === 0) return [];
  const names: string[] = [];
  for (const r of rows) for (const [k] of rowMetrics(r)) if (!names.includes(k)) names.push(k);
  const xDomain: [number, number] = [Math.min(rows[0]!.step, 0), rows[rows.length - 1]!.step];
  const out: string[] = [];
  for (const { family, title } of FAMILIES) {
    const members = names.filter((n) => metricFamily(n) === family);
    if (members.length === 0) continue;
    const series: Series[] = members.map((name) => ({
      name,
      points: rows.filter((r) => name in r).map((r) => [r.step, typeof r[name] === "number" ? (r[name] as number) : null]),
    }));
    const { svg, log } = lineChart(series, { title, xDomain });
    const legend = series
      .map((s, i) => {
        const last = [...s.points].reverse().find((p) => p[1] !== null);
        const bad = s.points.filter((p) => p[1] === null).length;
        return `<span><span class="sw" style="background:${PALETTE[i % PALETTE.length]}"></span>${escapeHtml(s.name)} <span class="v">${last ? fmt(last[1]) : "–"}</span>${bad ? ` <span class="bad">${bad} non-finite</span>` : ""}</span>`;
      })
      .join("");
    out.push(`<div class="card" data-family="${family}"><h3>${escapeHtml(title)}${log ? ' <span class="v">(log scale)</span>' : ""}</h3>${svg}<div class="legend">${legend}</div></div>`);
  }
  return out;
}

export function renderReport(data: RunData, now = new Date()): string {
  const r = data.recipe as { name?: string; train?: { steps?: number; sample_every?: number }; sample?: { num?: number; seed?: number } } | null;
  const name = r?.name ?? path.basename(path.resolve(data.runDir));
  const last = data.rows[data.rows.length - 1];
  const total = r?.train?.steps;
  const stepTimes = data.rows.map((x) => x.step_time_s).filter((v): v is number => typeof v === "number");
  const trainSeconds = stepTimes.reduce((a, b) => a + b, 0);
  const ckpt = data.checkpoints[data.checkpoints.length - 1];
  const facts: Array<[string, string]> = [
    ["run folder", `<code>${escapeHtml(data.runDir)}</code>`],
    ["steps", last ? `${last.step}${total ? ` of ${total}` : ""}` : "none yet"],
    ["generator updates", last && typeof last.gen_updates === "number" ? String(last.gen_updates) : "–"],
    ["training time", stepTimes.length ? `${trainSeconds.toFixed(1)} s (${((trainSeconds / stepTimes.length) * 1000).toFixed(1)} ms a step)` : "–"],
    ["last step logged", last && typeof last.time === "number" ? new Date(last.time * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–"],
    ["newest checkpoint", ckpt ? `<code>${escapeHtml(path.basename(ckpt.dir))}</code> (${data.checkpoints.length} kept)` : "none"],
  ];
  if (data.badLines) facts.push(["metrics.jsonl", `${data.badLines} unreadable line(s) skipped`]);

  const chartCards = charts(data);
  const shown = evenlySpaced(data.grids, MAX_TRAINING_GRIDS);
  const figures = shown.map((g) => {
    const img = dataUri(g.file);
    return `<figure><img src="${img.uri}" width="${img.width}" height="${img.height}" alt="samples after step ${g.step}"><figcaption>step ${g.step}</figcaption></figure>`;
  });
  const samplesNote = r?.sample
    ? `${r.sample.num} images, seed ${r.sample.seed}, the same noise and classes in every grid${r.train?.sample_every ? `; every ${r.train.sample_every} steps (train.sample_every)` : ""}`
    : "";
  let finalHtml = `<p class="empty">no final grid yet (it is written when the run finishes)</p>`;
  if (data.finalGrid) {
    const img = dataUri(data.finalGrid);
    finalHtml = `<figure><img src="${img.uri}" width="${img.width}" height="${img.height}" alt="final samples"><figcaption>after step ${last?.step ?? "?"}: <code>samples/final/grid.png</code></figcaption></figure>`;
  }

  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="dmd2 report">
<title>dmd2 report: ${escapeHtml(name)}</title>
<style>${CSS}</style>
</head>
<body>
<h1>${escapeHtml(name)}</h1>
<p class="sub">DMD2 distillation run · report written ${escapeHtml(now.toISOString().replace("T", " ").slice(0, 19))} UTC by <code>dmd2 report</code></p>
<table class="facts">${facts.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("")}</table>

<h2>Training curves</h2>
${chartCards.length ? `<p class="sub">x: step. Faint: every step; solid: smoothed (exponential moving average, weight 0.8). Values after each name: the latest.</p><div class="charts">${chartCards.join("\n")}</div>` : `<p class="empty">no metrics yet (metrics.jsonl is empty or missing)</p>`}

<h2>Samples during training</h2>
${
  figures.length
    ? `<p class="sub">${escapeHtml(samplesNote)}${shown.length < data.grids.length ? ` · showing ${shown.length} of ${data.grids.length} grids, evenly spaced` : ""}</p><div class="grids">${figures.join("\n")}</div>`
    : `<p class="empty">no training grids (set <code>train.sample_every</code> in the recipe to write one every N steps)</p>`
}

<h2>Final samples</h2>
${finalHtml}

<h2>Recipe</h2>
<p class="sub"><code>recipe.resolved.json</code>: the recipe with every default filled in, as the workers received it</p>
${data.recipe ? `<pre class="recipe">${escapeHtml(JSON.stringify(data.recipe, null, 2))}</pre>` : `<p class="empty">no recipe.resolved.json</p>`}
<script>${SCRIPT}</script>
</body>
</html>
`;
}
