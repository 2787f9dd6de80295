// The digits benchmark's targets (issue 3), checked against one evaluation: each is a line with the measured
// values and "met" or "missed". Nothing here is loosened to fit: a missed target is reported as missed.

import type { EvalResult, EvalRow } from "../eval/table.js";

export interface TargetCheck {
  target: string;
  measured: string;
  met: boolean;
}

const fmt = (x: number) => x.toPrecision(4);
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** The student rows of the run trained for `steps` steps (the run whose largest evaluated step count it is). */
function studentRun(rows: readonly EvalRow[], steps: number): EvalRow[] {
  const byLabel = new Map<string, EvalRow[]>();
  for (const r of rows.filter((r) => r.kind === "student")) byLabel.set(r.label, [...(byLabel.get(r.label) ?? []), r]);
  return [...byLabel.values()].find((rs) => Math.max(...rs.map((r) => r.steps)) === steps) ?? [];
}

export function checkTargets(ev: EvalResult, totalSeconds: number): TargetCheck[] {
  const teacher = (steps: number) => ev.rows.find((r) => r.kind === "teacher" && r.steps === steps);
  const one = studentRun(ev.rows, 1).find((r) => r.steps === 1);
  const four = studentRun(ev.rows, 4).find((r) => r.steps === 4);
  const t50 = teacher(50);
  const checks: TargetCheck[] = [];
  if (t50) {
    checks.push({ target: "teacher at 50 steps within 3x of the noise floor", measured: `FD ${fmt(t50.fd)} = ${(t50.fd / ev.noise_floor).toFixed(2)}x the floor ${fmt(ev.noise_floor)}`, met: t50.fd <= 3 * ev.noise_floor });
  }
  if (one && t50) {
    checks.push({ target: "1-step student no worse than the teacher at 50 steps", measured: `FD ${fmt(one.fd)} vs ${fmt(t50.fd)}`, met: one.fd <= t50.fd });
    for (const s of [1, 2, 4]) {
      const t = teacher(s);
      if (t) checks.push({ target: `1-step student better than the teacher at ${s} step${s === 1 ? "" : "s"}`, measured: `FD ${fmt(one.fd)} vs ${fmt(t.fd)}`, met: one.fd < t.fd });
    }
    if (one.accuracy !== null && t50.accuracy !== null) {
      checks.push({ target: "1-step student's class accuracy within 2 points of the teacher's at 50 steps", measured: `${pct(one.accuracy)} vs ${pct(t50.accuracy)}`, met: one.accuracy >= t50.accuracy - 0.02 });
    }
    checks.push({ target: "1-step student samples >= 30x faster than the teacher at 50 steps", measured: `${(one.images_per_s / t50.images_per_s).toFixed(1)}x`, met: one.images_per_s >= 30 * t50.images_per_s });
  }
  if (one && four) {
    checks.push({ target: "4-step student at least as good as the 1-step one", measured: `FD ${fmt(four.fd)} vs ${fmt(one.fd)}`, met: four.fd <= one.fd });
  }
  checks.push({ target: "whole pipeline under 20 minutes", measured: `${(totalSeconds / 60).toFixed(1)} min`, met: totalSeconds <= 20 * 60 });
  return checks;
}

export function targetsMarkdown(checks: readonly TargetCheck[]): string[] {
  return ["| target | measured | |", "|---|---|---|", ...checks.map((c) => `| ${c.target} | ${c.measured} | ${c.met ? "met" : "**missed**"} |`)];
}
