// Smoke test of `npm run bench`: the quick mode runs every section with tiny sizes and writes results.json with
// every comparison row, each with finite positive numbers. No timing is asserted (timings on shared CI machines
// mean nothing); the full benchmark is run by hand (docs/bench/).
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import type { Row } from "../src/bench/report.js";
import { projectRoot } from "./helpers.js";

function positive(x: unknown, what: string): void {
  assert.equal(typeof x, "number", `${what} is a number`);
  assert.ok(Number.isFinite(x as number) && (x as number) > 0, `${what} = ${String(x)} is finite and positive`);
}

test("bench --quick: every row present, every number finite and positive", { timeout: 180_000 }, async () => {
  const out = mkdtempSync(path.join(os.tmpdir(), "dmd2-bench-test-"));
  const cache = mkdtempSync(path.join(os.tmpdir(), "dmd2-bench-cache-"));
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
