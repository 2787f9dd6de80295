// What the interpreter a job will use (its cached probe, probeCache.ts) says about one recipe, as problems for
// `dmd2 plan`: torch missing or too old, a worker package that cannot be imported or speaks another protocol,
// a role placed on a device that interpreter's torch does not have (distill's own check, run/placementCheck.ts,
// fed the probe's answer as each local worker's hello reply), and a package the recipe needs that is missing or
// outside the worker's range. Roles that `join` from another host are not checked: the probe runs here.

import { isDmdError, RecipeError } from "../errors.js";
import { PROTOCOL_VERSION, type HelloReplyBody } from "../protocol/messages.js";
import type { Recipe } from "../recipe/types.js";
import { checkPlacement } from "../run/placementCheck.js";
import { placementKey, type WorkerGroup } from "../run/replicas.js";
import { workerLayout } from "../recipe/workerLayout.js";
import type { ProbeOutcome, ProbeResult } from "./probe.js";
import { FEATURE_PACKAGES, inRange, PYTHON_PACKAGES, rangeText, versionAtLeast, type RangedPackage } from "./requirements.js";

export interface InterpreterProblem {
  subject: string;
  message: string;
  fix?: string;
}

/** The FEATURE_PACKAGES this recipe's workers import. */
export function packagesNeeded(r: Recipe): RangedPackage[] {
  const need = new Set<string>();
  if (r.teacher.source === "diffusers") need.add("diffusers");
  if (r.data.source === "prompts") need.add("diffusers").add("transformers");
  if (r.generator.lora.rank !== null) need.add("peft");
  if (r.data.source === "digits") need.add("scikit-learn");
  return FEATURE_PACKAGES.filter((p) => need.has(p.name));
}

/** The local workers of `r` as distill starts them (ranks named as run/replicas.ts names them). */
function localGroups(r: Recipe): WorkerGroup[] {
  return workerLayout(r.placement)
    .filter((w) => !w.roles.some((role) => r.roles[placementKey(role)].join))
    .map((w) => {
      const world = Math.max(...w.roles.map((role) => r.roles[placementKey(role)].replicas));
      const ranks = world === 1 ? [{ name: w.name, roles: [...w.roles] }] : Array.from({ length: world }, (_, i) => ({ name: `${w.name}-r${i}`, roles: [...w.roles], group: w.name }));
      return { name: w.name, roles: [...w.roles], ranks };
    });
}

function asHello(p: ProbeResult, torch: string): HelloReplyBody {
  const cuda = p.cuda !== null && !("error" in p.cuda) && p.cuda.available;
  return { pid: 0, hostname: p.hostname ?? "this host", python: p.python.executable, torch, cuda, devices: p.devices ?? ["cpu"], roles: [] };
}

export function interpreterProblems(r: Recipe, python: string, outcome: ProbeOutcome, recipeFile: string | null = null): InterpreterProblem[] {
  if (!outcome.ok) return [{ subject: "python", message: `${python} could not run the probe: ${outcome.error}`, fix: "check it with dmd2 doctor" }];
  const p = outcome.result;
  const problems: InterpreterProblem[] = [];
  const torch = PYTHON_PACKAGES.find((x) => x.name === "torch")!;
  const t = p.modules.torch;
  if (t === undefined || !t.ok || !versionAtLeast(t.version ?? "0", torch.min)) {
    problems.push({
      subject: "python",
      message: t?.ok ? `torch ${t.version} in ${python} is too old (needs ${torch.min} or newer)` : `${python} cannot import torch`,
      fix: `${python} -m pip install "torch>=${torch.min}", or point DMD2_PYTHON (or the recipe's python) at an interpreter that has it`,
    });
    return problems; // nothing below means anything without torch
  }
  if (!p.worker.ok) problems.push({ subject: "python", message: `${python} cannot import the worker package (dmd2_worker)`, fix: "run dmd2 doctor: it names the install command" });
  else if (p.worker.protocol !== PROTOCOL_VERSION) {
    problems.push({ subject: "python", message: `the worker package in ${python} speaks protocol version ${String(p.worker.protocol)}, this CLI ${PROTOCOL_VERSION}`, fix: "install this checkout's worker package there (dmd2 doctor names the command)" });
  }
  try {
    checkPlacement(r, localGroups(r), new Map(localGroups(r).flatMap((g) => g.ranks.map((s) => [s.name, asHello(p, t.version ?? "?")] as const))), recipeFile);
  } catch (e) {
    if (!(e instanceof RecipeError) || !isDmdError(e)) throw e;
    const issue = e.issues[0]!;
    // placementCheck's message is "<what>; <fix>"
    const at = issue.message.lastIndexOf("; ");
    const visible = p.cuda_visible_devices === undefined || p.cuda_visible_devices === null ? "" : ` (CUDA_VISIBLE_DEVICES=${p.cuda_visible_devices})`;
    problems.push({ subject: issue.path ?? "roles", message: `${at < 0 ? issue.message : issue.message.slice(0, at)}${visible}`, ...(at < 0 ? {} : { fix: issue.message.slice(at + 2) }) });
  }
  for (const pkg of packagesNeeded(r)) {
    const have = p.dists?.[pkg.name];
    if (p.dists === undefined || p.dists === null) break; // an older probe: not reported
    const fix = `${python} -m pip install "${pkg.name}${rangeText(pkg)}"`;
    if (have === null || have === undefined) problems.push({ subject: "python", message: `${pkg.name} is not installed in ${python}; ${pkg.neededFor} need it`, fix });
    else if (!inRange(have, pkg)) problems.push({ subject: "python", message: `${pkg.name} ${have} in ${python} is outside the worker's range ${rangeText(pkg)}`, fix });
  }
  const w = r.logging.wandb;
  if (w.project !== null && w.mode !== "disabled" && p.dists !== undefined && p.dists !== null && p.dists.wandb === null) {
    problems.push({ subject: "logging.wandb", message: `wandb is not installed in ${python}; the run would log to TensorBoard only`, fix: `${python} -m pip install wandb, or remove logging.wandb.project` });
  }
  return problems;
}
