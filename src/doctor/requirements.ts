// What dmd2 needs, in one place. The Python side mirrors python-worker/pyproject.toml (requires-python and
// dependencies); test/doctor.test.ts checks that the two agree.

export const NODE_MIN_MAJOR = 20;
export const PYTHON_MIN = "3.10";

export interface PythonPackage {
  /** the check's name and the distribution pip installs */
  name: string;
  /** the module to import */
  module: string;
  /** the lowest version that works */
  min: string;
}

export const PYTHON_PACKAGES: readonly PythonPackage[] = [
  { name: "torch", module: "torch", min: "2.4" },
  { name: "pyzmq", module: "zmq", min: "25" },
  { name: "numpy", module: "numpy", min: "1.24" },
  { name: "safetensors", module: "safetensors", min: "0.4" },
  { name: "pillow", module: "PIL", min: "9" },
];

/** The worker package and the module that holds its PROTOCOL_VERSION. */
export const WORKER_PACKAGE = { name: "dmd2_worker", module: "dmd2_worker", protocolModule: "dmd2_worker.protocol" } as const;

/** Free space under which the disk check warns. */
export const MIN_FREE_BYTES = 1024 ** 3;

/** "2.13.0+cpu" -> [2, 13, 0]; each dot-separated part's leading digits ("0rc1" -> 0). */
export function parseVersion(v: string): number[] {
  return v
    .split("+")[0]!
    .split(".")
    .map((part) => Number(/^\d+/.exec(part)?.[0] ?? "0"));
}

/** Whether version `v` is at least `min` (missing parts count as 0). */
export function versionAtLeast(v: string, min: string): boolean {
  const a = parseVersion(v);
  const b = parseVersion(min);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x > y;
  }
  return true;
}
