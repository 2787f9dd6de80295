// Smoke test of `npm run bench`: the quick mode runs every section with tiny sizes and writes results.json with
// every comparison row, each with finite positive numbers. No timing is asserted (timings on shared CI machines
// mean nothing); the full benchmark is run by hand (docs/bench/).
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { parse } from "yaml";
import { benchSettings } from "../src/bench/main.js";
import { markdownReport, stepRows, type BenchResults, type Row } from "../src/bench/report.js";
import { summarize } from "../src/bench/stats.js";
import type { StepResult } from "../src/bench/steps.js";
import { projectRoot, scratchDir } from "./helpers.js";

function positive(x: unknown, what: string): void {
  assert.equal(typeof x, "number", `${what} is a number`);
  assert.ok(Number.isFinite(x as number) && (x as number) > 0, `${what} = ${String(x)} is finite and positive`);
}

test("bench --quick: every row present, every number finite and positive", { timeout: 180_000 }, async () => {
  const out = scratchDir("dmd2-bench-test-");
  const cache = scratchDir("dmd2-bench-cache-");
  try {
    const r = await execa("node", [path.join(projectRoot, "dist", "src", "bench", "main.js"), "--quick", "--out", out], {
      cwd: projectRoot,
      env: { DMD2_CACHE: cache, NO_COLOR: "1" },
      reject: false,
      timeout: 170_000,
    });
    assert.equal(r.exitCode, 0, `bench failed:\n${r.stderr}`);
    assert.match(r.stdout, /comparison .*A\/B/, "the table is printed");

    const res = JSON.parse(readFileSync(path.join(out, "results.json"), "utf8")) as {
      quick: boolean;
      machine: { cores: number; cpu_model: string; node: string; python: { python: string; torch: string } };
      load: { start: number[]; end: number[] };
      rows: Row[];
      steps: Array<{ id: string; torch_threads: number; stats: Record<string, number> }>;
    };
    assert.equal(res.quick, true);
    positive(res.machine.cores, "machine.cores");
    for (const key of ["cpu_model", "node"] as const) assert.ok(res.machine[key].length > 0, `machine.${key}`);
    assert.ok(res.machine.python.python.length > 0 && res.machine.python.torch.length > 0, "python and torch versions");
    assert.equal(res.load.start.length, 3);

    // --quick runs every configuration at 1 thread (no separate 1-thread rows): see benchSettings(true)
    const expected = [
      "steps.tiny.a_over_c",
      "steps.tiny.b_over_a",
      "transport.control_rtt",
      ...[64 * 1024, 2 ** 20, 16 * 2 ** 20, 64 * 2 ** 20].map((b) => `transport.throughput.${b}`),
      ...[1, 2, 4].map((k) => `sampling.student${k}_over_teacher50`),
    ];
    assert.deepEqual(res.rows.map((row) => row.id).sort(), [...expected].sort());
    for (const row of res.rows) {
      positive(row.ratio, `${row.id}.ratio`);
      if (row.ratio_mean !== undefined) positive(row.ratio_mean, `${row.id}.ratio_mean`);
      for (const side of ["a", "b"] as const) {
        const q = row[side];
        positive(q.value, `${row.id}.${side}.value`);
        for (const k of ["p10", "p90", "mean"] as const) if (q[k] !== undefined) positive(q[k], `${row.id}.${side}.${k}`);
        assert.ok(q.label.length > 0 && q.unit.length > 0, `${row.id}.${side} has a label and a unit`);
      }
    }
    for (const s of res.steps) {
      positive(s.torch_threads, `${s.id}.torch_threads`);
      for (const [k, v] of Object.entries(s.stats)) positive(v, `${s.id}.stats.${k}`);
    }
    assert.ok(existsSync(path.join(out, "results.md")), "results.md written");
    assert.match(readFileSync(path.join(out, "results.md"), "utf8"), /## Machine/);
  } finally {
    rmSync(out, { recursive: true, force: true });
    rmSync(cache, { recursive: true, force: true });
  }
});

// The digits variant is too slow for the smoke test (it trains a teacher, and each run loads a diffusers UNet),
// so only its definition and its report rows are checked here; `npm run bench` runs it.
test("bench: the digits step-time variant runs recipes/digits.yaml after training a throwaway teacher", () => {
  const full = benchSettings(false);
  assert.deepEqual(full.variants.map((v) => v.id), ["tiny", "compute", "digits"]);
  for (const v of [...full.variants, ...benchSettings(true).variants]) {
    assert.ok(existsSync(path.join(projectRoot, v.recipe)), `${v.id}: ${v.recipe} exists`);
    if (v.prepare) assert.ok(existsSync(path.join(projectRoot, v.prepare.recipe)), `${v.id}: ${v.prepare.recipe} exists`);
  }
  const digits = full.variants.find((v) => v.id === "digits")!;
  assert.equal(digits.recipe, "recipes/digits.yaml");
  assert.equal(digits.prepare?.kind, "train-teacher");
  assert.equal(digits.prepare?.recipe, "recipes/digits-teacher.yaml");
  assert.ok(digits.prepare?.sets.some((s) => /^train\.steps=\d+$/.test(s)), "the throwaway teacher trains a few steps");
  assert.equal(digits.aOverCTarget, 1.25);
  const recipe = parse(readFileSync(path.join(projectRoot, digits.recipe), "utf8")) as { teacher: { source: string }; ttur: { ratio: number } };
  assert.equal(recipe.teacher.source, "diffusers");
  assert.equal(digits.steps % recipe.ttur.ratio, 0, "whole TTUR cycles are timed");
  assert.equal(digits.warmup % recipe.ttur.ratio, 0, "the timed window starts at a cycle boundary");
  // no variant of the quick mode trains a teacher (the smoke test stays short)
  assert.ok(benchSettings(true).variants.every((v) => v.prepare === undefined));
});

test("bench report: (a)/(c) <= 1.25 is a target on the digits rows only", () => {
  const variants = benchSettings(false).variants;
  const result = (variant: string, key: string, ms: number): StepResult => {
    const times = [ms / 1000, ms / 1000, (ms * 1.1) / 1000];
    return {
      id: `${variant}.${key}`, variant, mode: key.split(".")[0] as StepResult["mode"], torch_threads: key.endsWith("t1") ? 1 : 2,
      processes: key.startsWith("per_role") ? 3 : 1, warmup: 5, steps_measured: 3, rounds: 1, stats: summarize(times),
      generator_steps: null, other_steps: null, times_s: times,
    };
  };
  const keys = ["colocated.default", "per_role.default", "local.default", "colocated.t1", "local.t1", "per_role.t1"];
  const steps = [
    ...keys.map((k) => result("tiny", k, 10)),
    ...keys.map((k) => result("digits", k, k === "colocated.default" ? 130 : k === "colocated.t1" ? 200 : 100)),
  ];
  const rows = stepRows(variants, steps);
  const byId = new Map(rows.map((r) => [r.id, r]));
  for (const id of ["steps.digits.a_over_c", "steps.digits.a_over_c.t1"]) {
    assert.deepEqual(byId.get(id)?.target, { op: "<=", value: 1.25, text: "<= 1.25" }, id);
  }
  assert.equal(byId.get("steps.digits.a_over_c")?.meets_target, false, "1.30x misses <= 1.25");
  assert.equal(byId.get("steps.digits.a_over_c.t1")?.meets_target, false, "2.00x misses <= 1.25");
  assert.ok(rows.filter((r) => !r.id.startsWith("steps.digits.a_over_c")).every((r) => r.target === undefined), "no other step row has a target");
  assert.ok(byId.get("steps.digits.b_over_a") && byId.get("steps.tiny.a_over_c"));

  const md = markdownReport({ steps, rows, quick: false, created: "now", duration_s: 1, load: { start: [0, 0, 0], end: [0, 0, 0], max_1min: 0, samples: [] },
    machine: { cpu_model: "cpu", cores: 2, memory_gib: 1, os: "os", node: "v20", zeromq_js: "6", python: { python: "3", torch: "2", pyzmq: "1", libzmq: "4", torch_parallel: "x" } },
    settings: {}, transport: null, sampling: null, format: "dmd2-bench", version: 1 } as BenchResults, variants);
  assert.match(md, /`dmd2 distill recipes\/digits\.yaml` after `dmd2 train-teacher recipes\/digits-teacher\.yaml --out <scratch>\/digits-teacher --set train\.steps=20/);
  assert.match(md, /target \(a\)\/\(c\) <= 1\.25/);
  assert.match(md, /\| <= 1\.25 MISSED \|/);
});
