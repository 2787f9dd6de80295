// `dmd2 report` and what a run leaves to watch it by: the pieces (metrics parsing, charts, page) on a made-up run
// folder, then a real run (6 steps, resumed to 12, train.sample_every=4) whose grids and TensorBoard events are
// checked, and whose report page is opened in headless Chromium: the charts must have drawn lines, every image
// must decode, the page must log nothing to the console (no Content-Security-Policy violation: no network), and
// a screenshot goes to test-output/report.png. Chromium is required (Debian: apt-get install -y chromium).
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { execa } from "execa";
import { loadRecipe } from "../src/recipe/load.js";
import { lineChart, niceTicks } from "../src/report/chart.js";
import { evenlySpaced, parseMetrics, readRun } from "../src/report/data.js";
import { renderReport } from "../src/report/html.js";
import { warmupLr } from "../src/schedule/schedule.js";
import { cliEntry, projectRoot, scratchDir } from "./helpers.js";
import { effectiveEvents, eventFiles, readEventFile } from "./tfevents.js";

const work = scratchDir("dmd2-report-");
const cache = path.join(os.tmpdir(), "dmd2-test-cache"); // the built-in teacher, shared with e2e.test.ts
const tiny = path.join(projectRoot, "recipes", "tiny.yaml");
const gridPng = path.join(projectRoot, "python-worker", "tests", "fixtures", "grid.png");
const outputDir = path.join(projectRoot, "test-output");

const dmd2 = (args: string[]) =>
  execa("node", [cliEntry, ...args], { cwd: work, reject: false, env: { DMD2_CACHE: cache, NO_COLOR: "1" }, timeout: 240_000 });

test("metrics.jsonl: a resumed stretch replaces the rows it runs again; cut lines are counted, not fatal", () => {
  const lines = [1, 2, 3, 4, 5].map((s) => JSON.stringify({ step: s, loss_fake: s }));
  lines.push(JSON.stringify({ step: 4, loss_fake: 40 }), '{"step": 5, "loss_fa', JSON.stringify({ step: 5, loss_fake: 50 }), "");
  const { rows, badLines } = parseMetrics(lines.join("\n"));
  assert.deepEqual(rows.map((r) => [r.step, r.loss_fake]), [[1, 1], [2, 2], [3, 3], [4, 40], [5, 50]]);
  assert.equal(badLines, 1);
  assert.deepEqual(evenlySpaced([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 4), [1, 4, 7, 10]);
  assert.deepEqual(evenlySpaced([1, 2], 4), [1, 2]);
});

test("charts: round ticks, one path per stretch of finite values, a log axis for values spanning decades", () => {
  assert.deepEqual(niceTicks(0, 200, 5), [0, 50, 100, 150, 200]);
  assert.deepEqual(niceTicks(-0.3, 0.5, 4), [-0.2, 0, 0.2, 0.4]);
  const { svg, log } = lineChart([{ name: "a", points: [[1, 1], [2, 2], [3, null], [4, 3], [5, 4]] }], { title: "t" });
  assert.equal(log, false);
  const d = /data-points="4"[^>]* d="([^"]+)"/.exec(svg)?.[1];
  assert.ok(d, svg);
  assert.equal(d.match(/M/g)?.length, 2, "the null breaks the line in two");
  const wide = lineChart([{ name: "a", points: Array.from({ length: 40 }, (_, i): [number, number] => [i, 10 ** (i / 10)]) }], { title: "w" });
  assert.equal(wide.log, true);
  assert.match(wide.svg, /class="series raw faint"/, "a long series is drawn faint...");
  assert.match(wide.svg, /class="series smooth"/, "...under its moving average");
});

test("the page: self-contained, escaped, one chart per metric family, grids evenly thinned", () => {
  const runDir = path.join(work, "made-up <run>");
  const recipe = loadRecipe(tiny, { cwd: work, overrides: [`run_dir=${runDir}`, "train.sample_every=2"] });
  mkdirSync(runDir, { recursive: true });
  writeFileSync(path.join(runDir, "recipe.resolved.json"), JSON.stringify(recipe));
  const rows = Array.from({ length: 60 }, (_, i) => ({
    step: i + 1,
    time: 1700000000 + i,
    step_time_s: 0.01,
    generator_update: i % 5 === 0,
    gen_updates: Math.ceil((i + 1) / 5),
    gen_k: i % 2,
    skipped_nonfinite: 0,
    lr_fake_score: 1e-3,
    loss_fake: 1 / (i + 1),
    d_real: 0.1,
    ...(i % 5 === 0 ? { loss_dmd: i === 10 ? null : 0.5, dmd_grad_norm: 3, lr_generator: 3e-5 } : {}),
  }));
  writeFileSync(path.join(runDir, "metrics.jsonl"), rows.map((r) => JSON.stringify(r) + "\n").join(""));
  for (let s = 2; s <= 60; s += 2) {
    mkdirSync(path.join(runDir, "samples", `step-${String(s).padStart(8, "0")}`), { recursive: true });
    copyFileSync(gridPng, path.join(runDir, "samples", `step-${String(s).padStart(8, "0")}`, "grid.png"));
  }
  const html = renderReport(readRun(runDir));
  assert.match(html, /<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:;/);
  assert.ok(!/(src|href)="(?!data:)/.test(html), "nothing is loaded from anywhere but data: URIs");
  assert.ok(html.includes("made-up &lt;run&gt;") && !html.includes("made-up <run>"), "paths are escaped");
  const families = [...html.matchAll(/data-family="(\w+)"/g)].map((m) => m[1]);
  assert.deepEqual(families, ["loss", "grad_norm", "discriminator", "lr", "time", "other"]);
  assert.equal((html.match(/<img /g) ?? []).length, 24, "30 grids are thinned to 24");
  assert.match(html, /showing 24 of 30 grids/);
  assert.match(html, /alt="samples after step 2"/);
  assert.match(html, /alt="samples after step 60"/);
  assert.match(html, /1 non-finite/);
  assert.match(html, /no final grid yet/);
});

test("report: a missing or non-run folder is exit 2 with one line", async () => {
  const missing = await dmd2(["report", path.join(work, "nope")]);
  assert.equal(missing.exitCode, 2);
  assert.match(missing.stderr, /^error: run folder .*nope does not exist/);
  const notRun = await dmd2(["report", os.tmpdir()]);
  assert.equal(notRun.exitCode, 2);
  assert.match(notRun.stderr, /is not a run folder/);
});

const CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function chromium(args: string[]) {
  const bin = process.env.CHROMIUM ?? "chromium";
  const r = await execa(bin, [...CHROMIUM_FLAGS, `--user-data-dir=${scratchDir("dmd2-chromium-")}`, "--enable-logging=stderr", "--v=0", ...args], {
    reject: false,
    timeout: 20_000,
  });
  if ((r as { code?: string }).code === "ENOENT") assert.fail(`${bin} not found: the report test needs headless Chromium (Debian: apt-get install -y chromium; or set CHROMIUM=/path/to/chrome)`);
  assert.equal(r.exitCode, 0, `${bin} failed: ${r.stderr}`);
  return r;
}

test("a run with train.sample_every, resumed: grids, TensorBoard events, and a report that renders in Chromium", async () => {
  const runDir = path.join(work, "watched");
  const common = ["--set", `run_dir=${runDir}`, "--set", "train.sample_every=4", "--set", "train.checkpoint_every=6", "--set", "sample.num=8", "--set", "optim.warmup_unit=updates", "--json"];
  const a = await dmd2(["distill", tiny, ...common, "--set", "train.steps=6"]);
  assert.equal(a.exitCode, 0, a.stderr);
  const b = await dmd2(["distill", tiny, ...common, "--set", "train.steps=12"]);
  assert.equal(b.exitCode, 0, b.stderr);
  const events = b.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { event: string; step?: number });
  assert.deepEqual(events.filter((e) => e.event === "samples").map((e) => e.step), [8, 12], "--json: a samples event per grid");

  // grids every 4 steps, and the final one
  const samples = readdirSync(path.join(runDir, "samples")).sort();
  assert.deepEqual(samples, ["final", "step-00000004", "step-00000008", "step-00000012"]);
  for (const s of samples) assert.equal(readdirSync(path.join(runDir, "samples", s, "images")).length, 8);

  // the learning rates the coordinator sent are in metrics.jsonl
  const recipe = JSON.parse(readFileSync(path.join(runDir, "recipe.resolved.json"), "utf8"));
  const rows = readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(rows.map((r) => r.step), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  for (const r of rows) assert.equal(r.lr_fake_score, warmupLr(recipe.fake_score.lr, r.step - 1, recipe.optim.warmup_steps));
  assert.deepEqual(rows.filter((r) => "lr_generator" in r).map((r) => r.step), [1, 6, 11]);
  assert.equal(rows[5].lr_generator, warmupLr(recipe.generator.lr, 1, recipe.optim.warmup_steps));

  // TensorBoard: one file per run; the resumed one starts with a session start at step 7
  const tb = path.join(runDir, "tb");
  const files = eventFiles(tb);
  assert.equal(files.length, 2, files.join(", "));
  const second = readEventFile(files[1]!);
  assert.equal(second[0]!.fileVersion, "brain.Event:2");
  assert.equal(second[1]!.sessionStatus, 1);
  assert.equal(second[1]!.step, 7);
  const evs = effectiveEvents(tb);
  const stepsOf = (tag: string) => evs.filter((e) => e.scalars.has(tag) || e.images.has(tag)).map((e) => e.step);
  const twelve = Array.from({ length: 12 }, (_, i) => i + 1);
  for (const tag of ["time/step_time_s", "loss/loss_fake", "lr/lr_fake_score", "discriminator/d_real", "discriminator/d_fake", "schedule/gen_updates"]) {
    assert.deepEqual(stepsOf(tag), twelve, tag);
  }
  for (const tag of ["loss/loss_dmd", "grad_norm/dmd_grad_norm", "lr/lr_generator", "loss/loss_gan_g"]) assert.deepEqual(stepsOf(tag), [1, 6, 11], tag);
  assert.deepEqual(stepsOf("samples/grid"), [4, 8, 12]);
  assert.deepEqual(stepsOf("samples/final"), [6, 12], "each time the run finished");
  const byStep = new Map(evs.filter((e) => e.scalars.has("loss/loss_fake")).map((e) => [e.step, e.scalars.get("loss/loss_fake")]));
  for (const r of rows) assert.equal(byStep.get(r.step), Math.fround(r.loss_fake), `loss_fake at step ${r.step}`);
  const grid8 = evs.find((e) => e.step === 8 && e.images.has("samples/grid"))!.images.get("samples/grid")!;
  assert.ok(grid8.png.equals(readFileSync(path.join(runDir, "samples", "step-00000008", "grid.png"))));
  assert.equal(grid8.colorspace, 1);

  // the report, opened in headless Chromium
  const out = path.join(work, "report", "watched.html");
  const rep = await dmd2(["report", runDir, "--out", out, "--json"]);
  assert.equal(rep.exitCode, 0, rep.stderr);
  assert.deepEqual({ ...JSON.parse(rep.stdout), bytes: 0 }, { event: "result", out, bytes: 0, steps: 12, grids: 3, final_grid: true });
  const url = pathToFileURL(out).href;
  const dom = await chromium(["--virtual-time-budget=5000", "--dump-dom", url]);
  assert.ok(!/:CONSOLE/.test(dom.stderr), `the page logged to the console (a CSP violation?):\n${dom.stderr.split("\n").filter((l) => l.includes("CONSOLE")).join("\n")}`);
  const html = dom.stdout;
  const paths = [...html.matchAll(/<path class="series[^"]*" data-metric="([^"]+)" data-points="(\d+)"[^>]*data-length="([\d.]+)"/g)].map((m) => ({ metric: m[1]!, points: Number(m[2]), length: Number(m[3]) }));
  assert.ok(paths.length >= 10, `chart lines with their drawn length: ${paths.length}`);
  for (const p of paths.filter((x) => x.points >= 2)) assert.ok(p.length > 0, `${p.metric}: drawn`);
  assert.equal(paths.find((p) => p.metric === "loss_dmd")?.points, 3);
  assert.equal(paths.find((p) => p.metric === "loss_fake")?.points, 12);
  const imgs = [...html.matchAll(/<img [^>]*>/g)].map((m) => m[0]);
  assert.equal(imgs.length, 4, "three training grids and the final grid");
  for (const img of imgs) assert.match(img, /data-loaded="[1-9]\d*"/, `decoded: ${img.slice(0, 80)}`);
  assert.match(html, /<body data-images-loaded="4"/);

  mkdirSync(outputDir, { recursive: true });
  const shot = path.join(outputDir, "report.png");
  await chromium(["--hide-scrollbars", "--window-size=1280,1400", "--virtual-time-budget=5000", `--screenshot=${shot}`, url]);
  const png = readFileSync(shot);
  assert.equal(png.readUInt32BE(16), 1280);
  assert.equal(png.readUInt32BE(20), 1400);
  assert.ok(existsSync(shot));
});

test("training grids change nothing: the run above ends with the weights of an uninterrupted run without them", async () => {
  assert.ok(existsSync(path.join(work, "watched", "checkpoints", "step-00000012")), "needs the run of the test above");
  const ref = path.join(work, "unwatched");
  const r = await dmd2(["distill", tiny, "--set", `run_dir=${ref}`, "--set", "train.sample_every=0", "--set", "train.steps=12", "--set", "train.checkpoint_every=6", "--set", "sample.num=8", "--set", "optim.warmup_unit=updates", "-q"]);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.ok(!existsSync(path.join(ref, "samples", "step-00000012")));
  for (const role of ["generator", "fake_score", "discriminator"]) {
    const f = (dir: string) => readFileSync(path.join(dir, "checkpoints", "step-00000012", `${role}.safetensors`));
    assert.ok(f(ref).equals(f(path.join(work, "watched"))), `${role}: weights differ`);
  }
});
