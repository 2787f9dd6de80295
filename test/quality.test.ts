// The quality benchmark's report (src/bench/qualityReport.ts): the table with the speed-up over the teacher's
// 50 steps, the noise floor, the picture linked relative to the markdown file, the stages' wall times.
import assert from "node:assert/strict";
import { test } from "node:test";
import { qualityMarkdown, tableRows, type QualityResults } from "../src/bench/qualityReport.js";
import type { EvalResult } from "../src/eval/table.js";

const evaluation: EvalResult = {
  noise_floor: 0.5,
  heldout_accuracy: 0.98,
  features: "classifier",
  n: 1000,
  rows: [
    { label: "teacher", kind: "teacher", steps: 1, fd: 250.5, fd_sd: null, fd_draws: [250.5], accuracy: 0.1, images_per_s: 2000, seconds: 0.5 },
    { label: "teacher", kind: "teacher", steps: 50, fd: 1.25, fd_sd: null, fd_draws: [1.25], accuracy: 0.97, images_per_s: 40, seconds: 25 },
    { label: "student", kind: "student", steps: 4, fd: 2.5, fd_sd: 0.125, fd_draws: [2.375, 2.5, 2.625], accuracy: 0.95, images_per_s: 500, seconds: 2 },
  ],
};

const results: QualityResults = {
  format: "dmd2-bench-quality",
  version: 1,
  created: "2026-01-01T00:00:00.000Z",
  command: "npm run bench:quality",
  work_dir: "/tmp/w",
  machine: { cores: 2, cpu_model: "CPU X", memory_gib: 8, os: "Linux", node: "v20", zeromq_js: "6", python: { python: "3.11", torch: "2.5", pyzmq: "26", libzmq: "4.3", torch_parallel: "OpenMP" } },
  load: { start: [0.1, 0.2, 0.3], end: [1, 1, 1] },
  stages: [
    { name: "train teacher", command: "dmd2 train-teacher recipes/digits-teacher.yaml --out $WORK/teacher --force", seconds: 300 },
    { name: "distill", command: "dmd2 distill recipes/digits.yaml", seconds: 90 },
  ],
  total_s: 400,
  picture: "/p/docs/img/digits-compare.png",
  evaluation,
  rows: tableRows(evaluation),
};

test("table rows carry the speed-up over the teacher at 50 steps", () => {
  assert.deepEqual(results.rows.map((r) => [r.model, r.steps, r.speed_up]), [["teacher", 1, 50], ["teacher", 50, 1], ["student", 4, 12.5]]);
  assert.deepEqual(tableRows({ ...evaluation, rows: [evaluation.rows[2]!] }).map((r) => r.speed_up), [null], "no teacher at 50 steps: no speed-up");
});

test("quality.md: the table, the noise floor, the picture relative to the file, machine and wall times", () => {
  const md = qualityMarkdown(results, "/p/docs/bench/quality.md");
  assert.ok(md.includes("| model | steps | FD | FD to train split | class accuracy | images/s | speed-up over teacher 50 steps |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"), md);
  assert.ok(md.includes("| teacher | 1 | 250.5 | - | 10.0% | 2000 | 50.0x |\n| teacher | 50 | 1.250 | - | 97.0% | 40.0 | 1.0x |\n| student | 4 | 2.500 ± 0.13 | - | 95.0% | 500 | 12.5x |\n"), md);
  assert.ok(!md.includes("FD to train split: the same distance"), "results written before fd_train: no line explaining it");
  const withTrain: EvalResult = { ...evaluation, train_images: 901, rows: evaluation.rows.map((r, i) => ({ ...r, fd_train: [200.5, 0.5, 0.125][i]! })) };
  const trained = qualityMarkdown({ ...results, evaluation: withTrain }, "/p/docs/bench/quality.md");
  assert.ok(trained.includes("| teacher | 1 | 250.5 | 200.5 | 10.0% |") && trained.includes("| student | 4 | 2.500 ± 0.13 | 0.1250 | 95.0% |"), trained);
  assert.ok(trained.includes("\n\nFD to train split: the same distance to the 901 training images (what the teacher and the GAN learnt from);"), trained);
  assert.ok(md.includes("Noise floor (train vs held-out images, classifier features): FD 0.5000; the classifier's accuracy on held-out images: 98.0%."), md);
  assert.ok(md.includes("](../img/digits-compare.png)"), md);
  assert.ok(md.includes("| CPU | CPU X, 2 cores |"), md);
  assert.ok(md.includes("| train teacher | `dmd2 train-teacher recipes/digits-teacher.yaml --out $WORK/teacher --force` | 5.0 min |"), md);
  assert.ok(md.includes("| distill | `dmd2 distill recipes/digits.yaml` | 90 s |"), md);
  assert.ok(md.includes("| total | `npm run bench:quality` | 6.7 min |"), md);
  assert.ok(md.includes("`$WORK` was /tmp/w."), md);
  assert.ok(md.includes(": 1000 samples per row, each scored as the 8-bit image a user gets"), md);
  const drawn = qualityMarkdown({ ...results, evaluation: { ...evaluation, repeats: 3 } }, "/p/docs/bench/quality.md");
  assert.ok(drawn.includes(": 3 draws of 1000 samples per row (consecutive seeds, the same for every row; FD: the draws' mean ± standard deviation)"), drawn);
});

test("quality targets: each is checked against the measured rows, a miss reads 'missed'", async () => {
  const { checkTargets, targetsMarkdown } = await import("../src/bench/qualityTargets.js");
  const ev: EvalResult = {
    noise_floor: 1,
    heldout_accuracy: 0.95,
    features: "classifier",
    n: 100,
    rows: [
      { label: "teacher", kind: "teacher", steps: 1, fd: 15, fd_sd: null, fd_draws: [15], accuracy: 1, images_per_s: 5000, seconds: 1 },
      { label: "teacher", kind: "teacher", steps: 4, fd: 3.6, fd_sd: null, fd_draws: [3.6], accuracy: 1, images_per_s: 1800, seconds: 1 },
      { label: "teacher", kind: "teacher", steps: 50, fd: 2, fd_sd: null, fd_draws: [2], accuracy: 0.99, images_per_s: 100, seconds: 10 },
      { label: "a", kind: "student", steps: 1, fd: 2.5, fd_sd: null, fd_draws: [2.5], accuracy: 0.96, images_per_s: 4000, seconds: 1 },
      { label: "b", kind: "student", steps: 1, fd: 3, fd_sd: null, fd_draws: [3], accuracy: 0.99, images_per_s: 4000, seconds: 1 },
      { label: "b", kind: "student", steps: 4, fd: 1.5, fd_sd: null, fd_draws: [1.5], accuracy: 0.99, images_per_s: 1000, seconds: 1 },
    ],
  };
  const checks = checkTargets(ev, 21 * 60);
  const byTarget = new Map(checks.map((c) => [c.target, c]));
  assert.equal(byTarget.get("teacher at 50 steps within 3x of the noise floor")?.met, true);
  assert.equal(byTarget.get("1-step student no worse than the teacher at 50 steps")?.met, false, "2.5 > 2: missed");
  assert.equal(byTarget.get("1-step student better than the teacher at 4 steps")?.met, true);
  assert.equal(byTarget.get("1-step student's class accuracy within 2 points of the teacher's at 50 steps")?.met, false, "96% vs 99%");
  assert.equal(byTarget.get("1-step student samples >= 30x faster than the teacher at 50 steps")?.measured, "40.0x");
  assert.equal(byTarget.get("4-step student at least as good as the 1-step one")?.met, true, "run b (trained for 4) at 4 steps vs run a");
  assert.equal(byTarget.get("whole pipeline under 20 minutes")?.met, false);
  assert.match(targetsMarkdown(checks).join("\n"), /\| 1-step student no worse than the teacher at 50 steps \| FD 2\.500 vs 2\.000 \| \*\*missed\*\* \|/);
});
