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

/**
 * The worker's dependencies that single features need, with the ranges of python-worker/pyproject.toml (`min` is
 * the lowest version that works, `below` the first that is not promised to). Checked by their installed
 * distribution's version (no import: the probe stays short).
 */
export interface RangedPackage {
  name: string;
  min: string;
  below?: string;
  /** what needs it, for the message when it is missing */
  neededFor: string;
}

export const FEATURE_PACKAGES: readonly RangedPackage[] = [
  { name: "diffusers", min: "0.30", neededFor: "diffusers-format teachers (teacher.source: diffusers) and exports" },
  { name: "transformers", min: "5.23", below: "6", neededFor: "text-to-image teachers (their CLIP text encoders)" },
  { name: "peft", min: "0.21.2", below: "1", neededFor: "LoRA students (generator.lora)" },
  { name: "scikit-learn", min: "1.3", neededFor: "the digits data (data.source: digits)" },
];

/** Packages only a recipe option needs, not the worker package: their installed version is probed too. */
export const OPTIONAL_DISTS = ["wandb"] as const;

/** ">=0.21.2,<1" */
export const rangeText = (p: RangedPackage) => `>=${p.min}${p.below === undefined ? "" : `,<${p.below}`}`;

/** Whether version `v` is inside `p`'s range. */
export const inRange = (v: string, p: RangedPackage) => versionAtLeast(v, p.min) && (p.below === undefined || !versionAtLeast(v, p.below));

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
