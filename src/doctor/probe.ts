// One Python subprocess answers every Python-side question of `dmd2 doctor`: the interpreter's version, each
// package's import and version, CUDA, and the worker package's protocol version. The script survives any
// failed import and prints one JSON line after a marker, so stray output from imports cannot break parsing.

import { execa } from "execa";
import { FEATURE_PACKAGES, OPTIONAL_DISTS, PYTHON_PACKAGES, WORKER_PACKAGE } from "./requirements.js";

const MARKER = "DMD2_DOCTOR_JSON ";

// Plain Python 3 syntax only (no f-strings): an old interpreter must still run it and report its version.
const SCRIPT = `
import json, os, socket, sys, importlib
out = {"python": {"version": "%d.%d.%d" % tuple(sys.version_info[:3]), "executable": sys.executable}, "modules": {},
       "hostname": socket.gethostname(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "dists": {}}
try:
    import importlib.metadata as md
    for name in json.loads(sys.argv[4]):
        try:
            out["dists"][name] = md.version(name)
        except Exception:
            out["dists"][name] = None
except BaseException:
    out["dists"] = None
# what a change of the environment touches: the cache (probeCache.ts) is valid while none of these changed
out["stamp_paths"] = [p for p in sys.path if p and os.path.isdir(p)]
def describe(e):
    return "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
for name in json.loads(sys.argv[1]):
    try:
        m = importlib.import_module(name)
        out["modules"][name] = {"ok": True, "version": str(getattr(m, "__version__", "unknown"))}
    except BaseException as e:
        out["modules"][name] = {"ok": False, "error": describe(e)}
worker, protocol = sys.argv[2], sys.argv[3]
try:
    w = importlib.import_module(worker)
    p = importlib.import_module(protocol)
    out["worker"] = {"ok": True, "version": str(getattr(w, "__version__", "unknown")), "protocol": getattr(p, "PROTOCOL_VERSION", None), "file": getattr(w, "__file__", None)}
    out["stamp_paths"] += [f for f in (getattr(w, "__file__", None), getattr(p, "__file__", None)) if f]
except BaseException as e:
    out["worker"] = {"ok": False, "error": describe(e)}
out["cuda"] = None
if out["modules"].get("torch", {}).get("ok"):
    try:
        import torch
        devices = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                devices.append({"name": props.name, "memory": props.total_memory})
        mps = getattr(torch.backends, "mps", None)
        out["cuda"] = {"available": bool(devices), "version": torch.version.cuda, "devices": devices,
                       "mps": bool(mps is not None and mps.is_available())}
        try:  # the worker's own answer to "what can I place work on" (its hello reply's devices)
            out["devices"] = importlib.import_module(worker + ".placement").available_devices()
        except BaseException:
            out["devices"] = ["cpu"] + ["cuda:%d" % i for i in range(len(devices))]
    except BaseException as e:
        out["cuda"] = {"error": describe(e)}
sys.stdout.write("\\n${MARKER}" + json.dumps(out) + "\\n")
`;

export interface ModuleResult {
  ok: boolean;
  version?: string;
  error?: string;
}

export interface ProbeResult {
  python: { version: string; executable: string };
  modules: Record<string, ModuleResult>;
  worker: { ok: boolean; version?: string; protocol?: number | null; file?: string | null; error?: string };
  cuda: null | { error: string } | { available: boolean; version: string | null; devices: { name: string; memory: number }[]; mps: boolean };
  /** absent from probes of older scripts (and the tests' fake interpreters) */
  hostname?: string;
  cuda_visible_devices?: string | null;
  /** installed version of each FEATURE_PACKAGES distribution, null when not installed */
  dists?: Record<string, string | null> | null;
  /** what the worker's torch can place work on: "cpu", "cuda:0", ... (as in its hello reply) */
  devices?: string[];
  stamp_paths?: string[];
}

export type ProbeOutcome = { ok: true; result: ProbeResult } | { ok: false; error: string };

/** Runs the probe with `python` (from `cwd`, like a worker). Never throws: a failure is `{ ok: false, error }`. */
export async function runProbe(python: string, options: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ProbeOutcome> {
  const modules = PYTHON_PACKAGES.map((p) => p.module);
  const r = await execa(python, ["-c", SCRIPT, JSON.stringify(modules), WORKER_PACKAGE.module, WORKER_PACKAGE.protocolModule, JSON.stringify([...FEATURE_PACKAGES.map((p) => p.name), ...OPTIONAL_DISTS])], {
    cwd: options.cwd,
    env: { PYTHONUNBUFFERED: "1", ...options.env },
    reject: false,
    timeout: options.timeoutMs ?? 120_000,
    stdin: "ignore",
  });
  const line = r.stdout.split("\n").reverse().find((l) => l.startsWith(MARKER));
  if (line !== undefined) {
    try {
      return { ok: true, result: JSON.parse(line.slice(MARKER.length)) as ProbeResult };
    } catch {
      // fall through: report what the process said
    }
  }
  if (r.timedOut) return { ok: false, error: `it did not finish within ${Math.round((options.timeoutMs ?? 120_000) / 1000)} s` };
  // the interpreter could not be started at all (no exit code): execa's short message says why
  if (r.exitCode === undefined) return { ok: false, error: r.shortMessage ?? "it could not be started" };
  const last = `${r.stderr}\n${r.stdout}`
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .at(-1);
  const why = `exit code ${r.exitCode}${last === undefined ? "" : `: ${last}`}`;
  return { ok: false, error: why };
}
