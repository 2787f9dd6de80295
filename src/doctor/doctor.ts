// `dmd2 doctor`: can this machine run dmd2? Node-side checks (checks.ts) run alongside one Python probe
// (probe.ts) of the interpreter the workers would use; every check says ok, problem (with the fix), warning
// or info. The report's `ok` is false when any check is a problem.

import path from "node:path";
import { isDmdError } from "../errors.js";
import { PROTOCOL_VERSION } from "../protocol/messages.js";
import { formatBytes } from "../text.js";
import { PROJECT_ROOT, resolvePython } from "../workers/python.js";
import { checkDisk, checkIpc, checkNode, loadZeromq, type Check } from "./checks.js";
import type { ProbeOutcome, ProbeResult } from "./probe.js";
import { cachedProbe } from "./probeCache.js";
import { FEATURE_PACKAGES, inRange, PYTHON_MIN, PYTHON_PACKAGES, rangeText, versionAtLeast, WORKER_PACKAGE } from "./requirements.js";

export interface DoctorOptions {
  /** --python: the interpreter to check instead of $DMD2_PYTHON / the project's .venv */
  python?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** where .venv is looked for; default the project root */
  projectRoot?: string;
}

export interface DoctorReport {
  ok: boolean;
  problems: number;
  warnings: number;
  checks: Check[];
}

type PythonSource = "--python" | "DMD2_PYTHON" | ".venv";
const SOURCE_TEXT: Record<PythonSource, string> = { "--python": "--python", DMD2_PYTHON: "$DMD2_PYTHON", ".venv": "the project's .venv" };

/** The names of the checks that need a Python interpreter, in report order. */
export const PYTHON_CHECKS = ["python-version", "torch", "cuda", ...PYTHON_PACKAGES.filter((p) => p.name !== "torch").map((p) => p.name), WORKER_PACKAGE.name];

function findPython(opts: DoctorOptions): { python: string | null; source: PythonSource; check: Check } {
  const env = opts.env ?? process.env;
  const source: PythonSource = opts.python ? "--python" : env.DMD2_PYTHON ? "DMD2_PYTHON" : ".venv";
  try {
    const python = resolvePython(opts.python || null, { env, projectRoot: opts.projectRoot, baseDir: opts.cwd });
    return { python, source, check: { id: "python", status: "ok", detail: `${python} (${SOURCE_TEXT[source]})` } };
  } catch (e) {
    if (!isDmdError(e)) throw e;
    const check: Check =
      source === "--python"
        ? {
            id: "python",
            status: "problem",
            detail: `--python ${opts.python}: not an executable file`,
            fix: `give the path of a Python ${PYTHON_MIN}+ interpreter with torch, or leave --python out to check $DMD2_PYTHON or the project's .venv`,
          }
        : { id: "python", status: "problem", detail: e.message, ...(e.hint === undefined ? {} : { fix: e.hint }) };
    return { python: null, source, check };
  }
}

function pythonChecks(python: string, source: PythonSource, outcome: ProbeOutcome, root: string): Check[] {
  if (!outcome.ok) {
    return [
      { id: "python-version", status: "problem", detail: `${python} could not run a probe script: ${outcome.error}`, fix: `check that ${python} is a working Python ${PYTHON_MIN}+ interpreter` },
      ...PYTHON_CHECKS.slice(1).map((id): Check => ({ id, status: "skipped", detail: "the Python probe did not run" })),
    ];
  }
  const p = outcome.result;
  const viaNpm = source === ".venv" ? `run npm install in ${root} (it sets up .venv), or ` : "";
  const checks: Check[] = [];
  const pyOk = versionAtLeast(p.python.version, PYTHON_MIN);
  checks.push(
    pyOk
      ? { id: "python-version", status: "ok", detail: p.python.version }
      : { id: "python-version", status: "problem", detail: `${p.python.version} is too old (needs ${PYTHON_MIN} or newer)`, fix: `use a Python ${PYTHON_MIN}+ interpreter: set DMD2_PYTHON to one, or recreate ${root}/.venv with it` },
  );
  for (const pkg of PYTHON_PACKAGES) {
    const m = p.modules[pkg.module];
    const install = `${viaNpm}${python} -m pip install "${pkg.name}>=${pkg.min}"`;
    if (m === undefined || !m.ok) checks.push({ id: pkg.name, status: "problem", detail: `cannot import ${pkg.module}: ${m?.error ?? "not reported"}`, fix: install });
    else if (!versionAtLeast(m.version ?? "0", pkg.min)) checks.push({ id: pkg.name, status: "problem", detail: `${m.version} is too old (needs ${pkg.min} or newer)`, fix: install });
    else checks.push({ id: pkg.name, status: "ok", detail: m.version ?? "unknown version" });
    if (pkg.name === "torch") checks.push(cudaCheck(p.cuda, p));
  }
  checks.push(...featureChecks(p, python, viaNpm));
  checks.push(workerCheck(p.worker, python, root));
  return checks;
}

/** diffusers, transformers, peft, scikit-learn against the worker's ranges (absent when the probe did not report them). */
function featureChecks(p: ProbeResult, python: string, viaNpm: string): Check[] {
  if (p.dists === undefined || p.dists === null) return [];
  return FEATURE_PACKAGES.map((pkg): Check => {
    const have = p.dists![pkg.name];
    const fix = `${viaNpm}${python} -m pip install "${pkg.name}${rangeText(pkg)}"`;
    if (have === null || have === undefined) return { id: pkg.name, status: "warning", detail: `not installed: ${pkg.neededFor} need it`, fix };
    if (!inRange(have, pkg)) return { id: pkg.name, status: "problem", detail: `${have} is outside the worker's range ${rangeText(pkg)}`, fix };
    return { id: pkg.name, status: "ok", detail: have };
  });
}

/** Which devices the workers would see, and CUDA_VISIBLE_DEVICES when set (it renumbers them). */
function visibleText(p: ProbeResult): string {
  const cvd = p.cuda_visible_devices;
  const devices = p.devices === undefined ? "" : `; workers see ${p.devices.join(", ")}`;
  return `${devices}${cvd === undefined ? "" : cvd === null ? " (CUDA_VISIBLE_DEVICES not set)" : ` (CUDA_VISIBLE_DEVICES=${cvd === "" ? '""' : cvd})`}`;
}

function cudaCheck(cuda: ProbeResult["cuda"], p: ProbeResult): Check {
  const c = cudaCheckBare(cuda);
  return c.status === "skipped" ? c : { ...c, detail: c.detail + visibleText(p) };
}

function cudaCheckBare(cuda: ProbeResult["cuda"]): Check {
  if (cuda === null) return { id: "cuda", status: "skipped", detail: "needs torch" };
  if ("error" in cuda) return { id: "cuda", status: "info", detail: `could not ask torch: ${cuda.error}` };
  if (!cuda.available) {
    const build = cuda.version === null ? "this torch is a CPU-only build" : `torch is built for CUDA ${cuda.version} but sees no device`;
    return { id: "cuda", status: "info", detail: `not available (${build}${cuda.mps ? "; Apple MPS is available" : ""}): workers run on the CPU` };
  }
  const devices = cuda.devices.map((d, i) => `cuda:${i} ${d.name} (${formatBytes(d.memory)})`).join(", ");
  return { id: "cuda", status: "info", detail: `CUDA ${cuda.version}, ${cuda.devices.length} device${cuda.devices.length === 1 ? "" : "s"}: ${devices}` };
}

function workerCheck(w: ProbeResult["worker"], python: string, root: string): Check {
  const install = `${python} -m pip install -e ${path.join(root, "python-worker")}`;
  if (!w.ok) return { id: WORKER_PACKAGE.name, status: "problem", detail: `cannot import ${WORKER_PACKAGE.module}: ${w.error ?? "not reported"}`, fix: install };
  const where = w.file ? `, from ${path.dirname(w.file)}` : "";
  if (w.protocol !== PROTOCOL_VERSION) {
    return {
      id: WORKER_PACKAGE.name,
      status: "problem",
      detail: `speaks protocol version ${String(w.protocol)}, this CLI speaks ${PROTOCOL_VERSION}${where}`,
      fix: `install the worker package of this checkout: ${install}`,
    };
  }
  const own = path.join(root, "python-worker", WORKER_PACKAGE.module);
  if (w.file && path.resolve(path.dirname(w.file)) !== path.resolve(own)) {
    // e.g. a git worktree running with another checkout's .venv: that checkout's Python code is what runs
    return {
      id: WORKER_PACKAGE.name,
      status: "warning",
      detail: `${w.version ?? "?"}, protocol version ${PROTOCOL_VERSION}${where}, not from this checkout's ${own}: workers run that copy's Python code`,
      fix: `install this checkout's worker package (${install}) or put it first on PYTHONPATH`,
    };
  }
  return { id: WORKER_PACKAGE.name, status: "ok", detail: `${w.version ?? "?"}, protocol version ${PROTOCOL_VERSION}${where}` };
}

export async function runDoctor(opts: DoctorOptions = {}): Promise<DoctorReport> {
  const env = opts.env ?? process.env;
  const root = opts.projectRoot ?? PROJECT_ROOT;
  const found = findPython(opts);
  // the probe (a second or two for torch) runs while Node does its own checks
  const probe = found.python === null ? null : cachedProbe(found.python, { cwd: opts.cwd, env });
  const zeromq = await loadZeromq();
  const ipc = await checkIpc(zeromq.zmq);
  const checks: Check[] = [checkNode(), zeromq.check, found.check];
  if (probe === null) checks.push(...PYTHON_CHECKS.map((id): Check => ({ id, status: "skipped", detail: "needs a Python interpreter" })));
  else checks.push(...pythonChecks(found.python!, found.source, await probe, root));
  checks.push(checkDisk(opts.cwd), ipc);
  const problems = checks.filter((c) => c.status === "problem").length;
  return { ok: problems === 0, problems, warnings: checks.filter((c) => c.status === "warning").length, checks };
}
