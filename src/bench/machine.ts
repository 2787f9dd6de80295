// What the benchmark ran on: cores, CPU model (/proc/cpuinfo), memory, load, and the versions of everything on
// the path (node, zeromq.js, Python, torch, pyzmq, libzmq).

import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PROJECT_ROOT } from "../workers/python.js";
import { pythonInfo, type PythonInfo } from "./python.js";

export interface Machine {
  cores: number;
  cpu_model: string;
  memory_gib: number;
  os: string;
  node: string;
  zeromq_js: string;
  python: PythonInfo;
}

/** The CPU model as /proc/cpuinfo names it ("model name"), else what node reports. */
export function cpuModel(): string {
  try {
    const text = readFileSync("/proc/cpuinfo", "utf8");
    const m = /^model name\s*:\s*(.+)$/m.exec(text);
    if (m) return m[1]!.trim();
  } catch {
    // not Linux
  }
  return os.cpus()[0]?.model ?? "unknown";
}

function zeromqJsVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(path.join(PROJECT_ROOT, "node_modules", "zeromq", "package.json"), "utf8")) as { version: string };
    return pkg.version;
  } catch {
    return "unknown";
  }
}

export async function describeMachine(): Promise<Machine> {
  return {
    cores: os.availableParallelism(),
    cpu_model: cpuModel(),
    memory_gib: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    zeromq_js: zeromqJsVersion(),
    python: await pythonInfo(),
  };
}

/** The 1, 5 and 15 minute load averages, rounded. */
export function loadAverage(): [number, number, number] {
  const [a, b, c] = os.loadavg();
  const r = (x: number | undefined) => Math.round((x ?? 0) * 100) / 100;
  return [r(a), r(b), r(c)];
}
