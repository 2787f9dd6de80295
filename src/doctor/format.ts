// The text form of a doctor report: one line per check, its status first, the fix under a problem.

import { stdoutColor as chalk } from "../colors.js";
import type { Check, CheckStatus } from "./checks.js";
import type { DoctorReport } from "./doctor.js";

const STATUS: Record<CheckStatus, (s: string) => string> = {
  ok: chalk.green,
  problem: chalk.red,
  warning: chalk.yellow,
  info: chalk.cyan,
  skipped: chalk.dim,
};

export function formatDoctor(report: DoctorReport): string {
  const statusWidth = Math.max(...Object.keys(STATUS).map((s) => s.length)) + 2;
  const idWidth = Math.max(...report.checks.map((c) => c.id.length)) + 2;
  const lines = [chalk.bold("dmd2 doctor")];
  const line = (c: Check) => {
    lines.push(`  ${STATUS[c.status](c.status.padEnd(statusWidth))}${c.id.padEnd(idWidth)}${c.detail}`);
    if (c.fix !== undefined) lines.push(`  ${" ".repeat(statusWidth + idWidth)}${chalk.dim("fix:")} ${c.fix}`);
  };
  // consecutive skipped checks with the same reason share one line
  for (let i = 0; i < report.checks.length; i++) {
    const c = report.checks[i]!;
    let j = i;
    while (c.status === "skipped" && report.checks[j + 1]?.status === "skipped" && report.checks[j + 1]!.detail === c.detail) j++;
    if (j === i) line(c);
    else lines.push(`  ${STATUS.skipped(`${"skipped".padEnd(statusWidth)}${report.checks.slice(i, j + 1).map((s) => s.id).join(", ")}: ${c.detail}`)}`);
    i = j;
  }
  const n = report.problems;
  const w = report.warnings;
  const tail = w > 0 ? `, ${w} warning${w === 1 ? "" : "s"}` : "";
  lines.push(n === 0 ? chalk.green(`no problems${tail}`) : chalk.red(`${n} problem${n === 1 ? "" : "s"}${tail}`));
  return lines.join("\n") + "\n";
}
