// What the CLI reads from a diffusers teacher folder (docs/pipeline.md §2): that it is one, its scheduler's
// diffusion settings, and the data group dmd2 train-teacher recorded in dmd2_teacher.json. The weights are
// the workers' business.

import { existsSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { familyForPipeline, familyRegistry, pipelineList, textFamilies } from "../families.js";
import type { DiffusionConfig } from "./types.js";
import { describe } from "./validate.js";

export const MODEL_INDEX = "model_index.json";

/** A text-to-image family's name in the family registry (src/families.ts). */
export type TextFamily = string;

/** The text-to-image pipelines dmd2 distils (the family registry), by model_index.json's _class_name. */
export function textPipelines(): Readonly<Record<string, TextFamily>> {
  return Object.fromEntries(textFamilies().flatMap((f) => f.pipelineClasses.map((p) => [p, f.name])));
}

/** What diffusers' DDPM/DDIM/PNDM/Euler schedulers assume for keys a scheduler_config.json leaves out (the SD 1.5
 * folder's PNDM config has no prediction_type, for one); the adapters fill them in the same way. */
const SCHEDULER_DEFAULTS: Record<string, unknown> = { num_train_timesteps: 1000, beta_schedule: "linear", beta_start: 0.0001, beta_end: 0.02, prediction_type: "epsilon" };

/** The family of a text-to-image pipeline folder (model_index.json's _class_name), or null for any other folder. */
export function textFamily(dir: string): TextFamily | null {
  const json = readJson(path.join(dir, MODEL_INDEX));
  if ("error" in json || typeof json.value !== "object" || json.value === null) return null;
  const name = (json.value as { _class_name?: unknown })._class_name;
  const family = familyForPipeline(name);
  return family !== null && family.conditioning === "text" ? family.name : null;
}
const UNET_CONFIG = path.join("unet", "config.json");
/** Where a family keeps its backbone's config (the registry's backbone.subfolder: unet/, or transformer/ for a transformer). */
const backboneConfig = (name: TextFamily): string => path.join(familyRegistry().families.get(name)!.backbone.subfolder, "config.json");
export const SCHEDULER_CONFIG = path.join("scheduler", "scheduler_config.json");
export const TEACHER_META = "dmd2_teacher.json";

const SUPPORTED: { beta_schedule: readonly string[]; prediction_type: readonly string[] } = {
  beta_schedule: ["linear", "scaled_linear"],
  prediction_type: ["epsilon", "v_prediction", "sample"],
};

/** The pipelines of the families whose folders may lack model_index.json (what dmd2 train-teacher writes). */
const folderPipelines = (): string => pipelineList([...familyRegistry().families.values()].filter((f) => f.folderWithoutModelIndex));

const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory();

/** A diffusers pipeline folder: it has model_index.json or a unet/ folder. */
export function looksLikeTeacherFolder(dir: string): boolean {
  return existsSync(path.join(dir, MODEL_INDEX)) || isDir(path.join(dir, "unet"));
}

function readJson(file: string): { value: unknown } | { error: string } {
  try {
    return { value: JSON.parse(readFileSync(file, "utf8")) as unknown };
  } catch (e) {
    return { error: (e as Error).message.split("\n")[0]! };
  }
}

/**
 * The diffusion settings of the teacher folder `dir` (which exists), or one line per problem. `show` turns an
 * absolute path into the form messages use.
 */
export function readTeacherDiffusion(dir: string, show: (p: string) => string): { diffusion: DiffusionConfig } | { problems: string[] } {
  const family = textFamily(dir);
  const missing = [family === null ? UNET_CONFIG : backboneConfig(family), SCHEDULER_CONFIG].filter((f) => !existsSync(path.join(dir, f)));
  if (missing.length > 0) {
    const files = missing.map((f) => show(path.join(dir, f))).join(" and ");
    return { problems: [`${show(dir)} is not a diffusers teacher folder: ${files} ${missing.length > 1 ? "are" : "is"} missing (give a folder dmd2 train-teacher or ${folderPipelines()}.save_pretrained wrote)`] };
  }
  const file = path.join(dir, SCHEDULER_CONFIG);
  const json = readJson(file);
  if ("error" in json) return { problems: [`${show(file)} is not valid JSON (${json.error}): the teacher folder is damaged`] };
  const raw = (typeof json.value === "object" && json.value !== null ? json.value : {}) as Record<string, unknown>;
  // a flow_prediction config (Sana's DPMSolverMultistepScheduler) is a flow-matching one: like a FlowMatchEuler config
  // it gets the DDPM defaults, which the workers ignore (docs/method.md "The recipe's diffusion block")
  const flow = family !== null && raw.prediction_type === "flow_prediction";
  const cfg = family === null ? raw : { ...SCHEDULER_DEFAULTS, ...Object.fromEntries(Object.entries(raw).filter(([k, v]) => v !== null && !(flow && k === "prediction_type"))) };
  const problems: string[] = [];
  const num = (key: string, int: boolean): number => {
    const v = cfg[key];
    if (typeof v === "number" && Number.isFinite(v) && (!int || Number.isInteger(v))) return v;
    problems.push(`${show(file)}: ${key} is ${v === undefined ? "missing" : describe(v)}, expected a ${int ? "whole number" : "number"}`);
    return NaN;
  };
  const choice = (key: keyof typeof SUPPORTED): string => {
    const v = cfg[key];
    if (typeof v === "string" && SUPPORTED[key].includes(v)) return v;
    problems.push(`${show(file)}: ${key} is ${v === undefined ? "missing" : describe(v)}, which dmd2 does not support (supported: ${SUPPORTED[key].join(", ")})`);
    return "";
  };
  const diffusion = {
    num_train_timesteps: num("num_train_timesteps", true),
    beta_schedule: choice("beta_schedule"),
    beta_start: num("beta_start", false),
    beta_end: num("beta_end", false),
    prediction_type: choice("prediction_type"),
  } as DiffusionConfig;
  return problems.length > 0 ? { problems } : { diffusion };
}

/** The data group dmd2 train-teacher recorded in `<dir>/dmd2_teacher.json`, or null when it is not there. */
export function readTeacherData(dir: string): { data: unknown } | { error: string } | null {
  const file = path.join(dir, TEACHER_META);
  if (!existsSync(file)) return null;
  const json = readJson(file);
  if ("error" in json) return { error: `${file} is not valid JSON (${json.error})` };
  const data = (json.value as { data?: unknown } | null)?.data;
  return data === undefined || data === null ? null : { data };
}
