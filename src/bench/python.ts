// Runs the Python side of the benchmark (python -m dmd2_worker.bench ...) and reads the JSON it prints.

import { execa } from "execa";
import { PROJECT_ROOT, resolvePython } from "../workers/python.js";

export function benchPython(): string {
  return resolvePython(null);
}

/** Runs `python -m dmd2_worker.bench <args>` and returns the last JSON line it printed on stdout. */
export async function runPythonBench<T>(args: readonly string[], env: Record<string, string>, threads: number): Promise<T> {
  const r = await execa(benchPython(), ["-m", "dmd2_worker.bench", ...args], {
    cwd: PROJECT_ROOT,
    env: { ...env, OMP_NUM_THREADS: String(threads), PYTHONUNBUFFERED: "1" },
    extendEnv: true,
    reject: false,
    stdin: "ignore",
  });
  if (r.exitCode !== 0) {
    throw new Error(`python -m dmd2_worker.bench ${args[0] ?? ""} failed (exit ${r.exitCode}):\n${String(r.stderr).split("\n").slice(-20).join("\n")}`);
  }
  const line = String(r.stdout)
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .pop();
  if (line === undefined) throw new Error(`python -m dmd2_worker.bench ${args[0] ?? ""} printed no JSON:\n${String(r.stdout)}`);
  return JSON.parse(line) as T;
}

export interface PythonInfo {
  python: string;
  torch: string;
  pyzmq: string;
  libzmq: string;
  torch_parallel: string;
}

export async function pythonInfo(): Promise<PythonInfo> {
  const code = [
    "import json, platform, torch, zmq",
    "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, 'pyzmq': zmq.__version__,",
    "  'libzmq': zmq.zmq_version(), 'torch_parallel': torch.__config__.parallel_info().splitlines()[-1].strip()}))",
  ].join("\n");
  const r = await execa(benchPython(), ["-c", code], { cwd: PROJECT_ROOT, reject: false });
  if (r.exitCode !== 0) throw new Error(`cannot ask the worker's Python for its versions: ${String(r.stderr)}`);
  return JSON.parse(String(r.stdout)) as PythonInfo;
}
