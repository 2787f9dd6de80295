// The teacher families (docs/adapters.md, "Adding a family"), read at run time from the one table both languages
// read: python-worker/dmd2_worker/families.json (python-worker/dmd2_worker/families.py is the Python reader). Each
// family says which pipeline folders it reads (model_index.json's _class_name), its backbone, its conditioning step
// tensors and their shapes, its text encoders, its latent space, how it is exported, its default LoRA targets and
// what `dmd2 plan` reads to size it. The file is checked when first read: a malformed registry is one line naming
// the file and the key.

import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { DmdError } from "./errors.js";

/** This file is compiled to dist/src/families.js; the registry ships inside the Python package. */
export const REGISTRY_FILE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "python-worker", "dmd2_worker", "families.json");

const FORMAT = "dmd2-families";
const VERSION = 1;
const CONDITIONING = ["class_label", "text"] as const;
const PARAMETRISATIONS = ["ddpm", "flow"] as const;
const UNCOND = ["null_class", "empty_prompt", "zeros", "none"] as const;
const CARDS = ["backbone_loop", "pipeline_call"] as const;
const DTYPES = ["float32", "int64"] as const;
const LAYOUTS = ["unet", "transformer"] as const;

export type Conditioning = (typeof CONDITIONING)[number];

export interface StepTensorSpec {
  name: string;
  dtype: (typeof DTYPES)[number];
  /** "B" (the batch), a whole number, or a name of the family's dims */
  shape: (number | string)[];
  /** the adapters.Conditioning field it fills; null: class labels */
  field: string | null;
}

/** A step-tensor size read from the folder: a key of the backbone's config.json (minus times x another key), a key of
 * another JSON file (plus a whole number: SD3's CLIP tokens and then its T5 tokens), or a fixed value (what the
 * adapter pads to). */
export type DimSpec = { config: string; default: number | null; minus: { config: string; times: number } | null } | { file: string; key: string; plus: number } | { value: number };

export interface Family {
  name: string;
  title: string;
  shortTitle: string;
  pipelineClasses: string[];
  folderWithoutModelIndex: boolean;
  /** layout: how `dmd2 plan` reads the latent shape and the discriminator's features from the backbone config
   * ("unet": sample_size and block_out_channels; "transformer": sample_size, or the VAE's, with patch_size and heads x
   * head dim); packing: latent pixels per token side the adapter packs before the transformer (1: none) */
  backbone: { subfolder: string; className: string; configMatch: Record<string, unknown>; layout: (typeof LAYOUTS)[number]; packing: number };
  parametrisation: (typeof PARAMETRISATIONS)[number];
  conditioning: Conditioning;
  stepTensors: StepTensorSpec[];
  dims: Record<string, DimSpec>;
  textEncoders: { subfolder: string; className: string; tokenizer: string }[];
  uncond: (typeof UNCOND)[number];
  latent: { subfolder: string; className: string } | null;
  export: { pipeline: string; scheduler: string; card: (typeof CARDS)[number]; loraFile: boolean; pipelineTag: string; hubTags: string[] };
  /** what generator.lora.target_modules null adapts: the entry's lora_targets, else the registry's
   * default_lora_targets (the workers' config.lora_spec looks it up by the resolved teacher.family) */
  loraTargets: string[];
  /** the frozen networks the generator's worker holds beside the backbone: [subfolder, weight file stem] */
  planFrozen: [string, string][];
  /** tensors of the backbone's weight files that are buffers, not parameters (not counted) */
  planBuffers: string[];
  adapterFiles: string[];
  tinyBuilder: string;
}

export interface FamilyRegistry {
  file: string;
  families: Map<string, Family>;
  defaultLoraTargets: string[];
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

class Reader {
  constructor(readonly file: string) {}
  fail(where: string, problem: string): DmdError {
    return new DmdError(`${this.file}: ${where}: ${problem}`, { code: "FAMILY_REGISTRY", hint: "the teacher family registry ships with dmd2: restore it or fix the key named" });
  }
  obj(o: Obj, key: string, where: string): Obj {
    const v = o[key];
    if (!isObj(v)) throw this.fail(`${where}.${key}`, v === undefined ? "missing" : `expected an object, got ${JSON.stringify(v)}`);
    return v;
  }
  str(o: Obj, key: string, where: string, optional = false): string {
    const v = o[key];
    if (optional && (v === undefined || v === null)) return null as unknown as string;
    if (typeof v !== "string" || v === "") throw this.fail(`${where}.${key}`, v === undefined ? "missing" : `expected a string, got ${JSON.stringify(v)}`);
    return v;
  }
  bool(o: Obj, key: string, where: string): boolean {
    const v = o[key];
    if (typeof v !== "boolean") throw this.fail(`${where}.${key}`, v === undefined ? "missing" : `expected true or false, got ${JSON.stringify(v)}`);
    return v;
  }
  int(o: Obj, key: string, where: string): number {
    const v = o[key];
    if (typeof v !== "number" || !Number.isInteger(v)) throw this.fail(`${where}.${key}`, v === undefined ? "missing" : `expected a whole number, got ${JSON.stringify(v)}`);
    return v;
  }
  list(o: Obj, key: string, where: string): unknown[] {
    const v = o[key];
    if (!Array.isArray(v)) throw this.fail(`${where}.${key}`, v === undefined ? "missing" : `expected a list, got ${JSON.stringify(v)}`);
    return v;
  }
  strings(o: Obj, key: string, where: string, allowEmpty = true): string[] {
    const v = this.list(o, key, where);
    if (!v.every((s) => typeof s === "string" && s !== "") || (!allowEmpty && v.length === 0)) throw this.fail(`${where}.${key}`, `expected a ${allowEmpty ? "" : "non-empty "}list of names, got ${JSON.stringify(v)}`);
    return v as string[];
  }
  choice<T extends string>(o: Obj, key: string, where: string, choices: readonly T[]): T {
    const v = this.str(o, key, where);
    if (!(choices as readonly string[]).includes(v)) throw this.fail(`${where}.${key}`, `${JSON.stringify(v)} is not one of ${choices.join(", ")}`);
    return v as T;
  }
}

function readDim(r: Reader, v: unknown, where: string): DimSpec {
  if (!isObj(v)) throw r.fail(where, `expected an object, got ${JSON.stringify(v)}`);
  if ("config" in v) {
    const minus = v.minus === undefined || v.minus === null ? null : r.obj(v, "minus", where);
    return {
      config: r.str(v, "config", where),
      default: v.default === undefined || v.default === null ? null : r.int(v, "default", where),
      minus: minus === null ? null : { config: r.str(minus, "config", `${where}.minus`), times: r.int(minus, "times", `${where}.minus`) },
    };
  }
  if ("file" in v) return { file: r.str(v, "file", where), key: r.str(v, "key", where), plus: v.plus === undefined || v.plus === null ? 0 : r.int(v, "plus", where) };
  if ("value" in v) {
    const n = r.int(v, "value", where);
    if (n <= 0) throw r.fail(`${where}.value`, `expected a positive whole number, got ${n}`);
    return { value: n };
  }
  throw r.fail(where, "needs config (a key of the backbone's config.json), file and key, or value");
}

function readFamily(r: Reader, name: string, o: unknown, defaultLora: string[]): Family {
  const where = `families.${name}`;
  if (!isObj(o)) throw r.fail(where, "expected an object");
  const backbone = r.obj(o, "backbone", where);
  const dimsObj = r.obj(o, "dims", where);
  const dims = Object.fromEntries(Object.entries(dimsObj).map(([k, v]) => [k, readDim(r, v, `${where}.dims.${k}`)]));
  const stepTensors = r.list(o, "step_tensors", where).map((t, i): StepTensorSpec => {
    const at = `${where}.step_tensors[${i}]`;
    if (!isObj(t)) throw r.fail(at, "expected an object");
    const shape = r.list(t, "shape", at);
    for (const s of shape) {
      if (!(s === "B" || (typeof s === "number" && Number.isInteger(s) && s > 0) || (typeof s === "string" && Object.hasOwn(dims, s)))) {
        throw r.fail(`${at}.shape`, `${JSON.stringify(s)} is neither B, a positive whole number nor one of ${where}.dims (${Object.keys(dims).join(", ") || "none"})`);
      }
    }
    if (shape[0] !== "B") throw r.fail(`${at}.shape`, "must start with B (step tensors are batch-major)");
    return { name: r.str(t, "name", at), dtype: r.choice(t, "dtype", at, DTYPES), shape: shape as (number | string)[], field: r.str(t, "field", at, true) };
  });
  const textEncoders = r.list(o, "text_encoders", where).map((e, i) => {
    const at = `${where}.text_encoders[${i}]`;
    if (!isObj(e)) throw r.fail(at, "expected an object");
    return { subfolder: r.str(e, "subfolder", at), className: r.str(e, "class", at), tokenizer: r.str(e, "tokenizer", at) };
  });
  const latentObj = o.latent === null || o.latent === undefined ? null : r.obj(o, "latent", where);
  const exp = r.obj(o, "export", where);
  const plan = r.obj(o, "plan", where);
  const frozen = r.list(plan, "frozen", `${where}.plan`);
  if (!frozen.every((p) => Array.isArray(p) && p.length === 2 && p.every((s) => typeof s === "string"))) throw r.fail(`${where}.plan.frozen`, "expected a list of [subfolder, weight file stem] pairs");
  const adapter = r.obj(o, "adapter", where);
  const fam: Family = {
    name,
    title: r.str(o, "title", where),
    shortTitle: r.str(o, "short_title", where),
    pipelineClasses: r.strings(o, "pipeline_classes", where, false),
    folderWithoutModelIndex: r.bool(o, "folder_without_model_index", where),
    backbone: {
      subfolder: r.str(backbone, "subfolder", `${where}.backbone`),
      className: r.str(backbone, "class", `${where}.backbone`),
      configMatch: r.obj(backbone, "config_match", `${where}.backbone`),
      layout: backbone.layout === undefined ? "unet" : r.choice(backbone, "layout", `${where}.backbone`, LAYOUTS),
      packing: backbone.packing === undefined ? 1 : r.int(backbone, "packing", `${where}.backbone`),
    },
    parametrisation: r.choice(o, "parametrisation", where, PARAMETRISATIONS),
    conditioning: r.choice(o, "conditioning", where, CONDITIONING),
    stepTensors,
    dims,
    textEncoders,
    uncond: r.choice(o, "uncond", where, UNCOND),
    latent: latentObj === null ? null : { subfolder: r.str(latentObj, "subfolder", `${where}.latent`), className: r.str(latentObj, "class", `${where}.latent`) },
    export: { pipeline: r.str(exp, "pipeline", `${where}.export`), scheduler: r.str(exp, "scheduler", `${where}.export`), card: r.choice(exp, "card", `${where}.export`, CARDS), loraFile: r.bool(exp, "lora_file", `${where}.export`), pipelineTag: r.str(exp, "pipeline_tag", `${where}.export`), hubTags: r.strings(exp, "hub_tags", `${where}.export`) },
    loraTargets: o.lora_targets === undefined ? defaultLora : r.strings(o, "lora_targets", where, false),
    planFrozen: frozen as [string, string][],
    planBuffers: plan.buffers === undefined ? [] : r.strings(plan, "buffers", `${where}.plan`),
    adapterFiles: r.strings(adapter, "files", `${where}.adapter`, false),
    tinyBuilder: r.str(o, "tiny_builder", where),
  };
  if (fam.backbone.packing < 1) throw r.fail(`${where}.backbone.packing`, `expected a positive whole number, got ${fam.backbone.packing}`);
  if (fam.conditioning === "text" && (fam.textEncoders.length === 0 || fam.latent === null)) throw r.fail(where, "a text family needs text_encoders and latent");
  if (fam.conditioning === "text" && !fam.stepTensors.some((t) => t.field === "encoder_hidden_states")) throw r.fail(`${where}.step_tensors`, "a text family needs a tensor whose field is encoder_hidden_states");
  return fam;
}

/** Read and check a registry file; every problem is a DmdError (code FAMILY_REGISTRY) naming the file and key. */
export function loadFamilyRegistry(file: string = REGISTRY_FILE): FamilyRegistry {
  const r = new Reader(file);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw r.fail("(file)", `cannot read the teacher family registry: ${(e as Error).message.split("\n")[0]}`);
  }
  if (!isObj(raw) || raw.format !== FORMAT || raw.version !== VERSION) throw r.fail("format", `expected format "${FORMAT}" version ${VERSION}`);
  const defaultLoraTargets = r.strings(raw, "default_lora_targets", "(top level)", false);
  const fams = r.obj(raw, "families", "(top level)");
  if (Object.keys(fams).length === 0) throw r.fail("families", "no family registered");
  const families = new Map(Object.entries(fams).map(([name, o]) => [name, readFamily(r, name, o, defaultLoraTargets)]));
  const seen = new Map<string, string>();
  for (const f of families.values()) {
    for (const p of f.pipelineClasses) {
      if (seen.has(p)) throw r.fail(`families.${f.name}.pipeline_classes`, `${p} is already read by ${seen.get(p)}`);
      seen.set(p, f.name);
    }
  }
  return { file, families, defaultLoraTargets };
}

let cached: FamilyRegistry | null = null;

/** The registry that ships with dmd2, read and checked once. */
export function familyRegistry(): FamilyRegistry {
  cached ??= loadFamilyRegistry();
  return cached;
}

export function family(name: string): Family {
  const f = familyRegistry().families.get(name);
  if (f === undefined) throw new Error(`no teacher family ${JSON.stringify(name)} (registered: ${[...familyRegistry().families.keys()].join(", ")})`);
  return f;
}

/** The family reading folders whose model_index.json names `className`, or null. */
export function familyForPipeline(className: unknown): Family | null {
  for (const f of familyRegistry().families.values()) if (typeof className === "string" && f.pipelineClasses.includes(className)) return f;
  return null;
}

export function textFamilies(): Family[] {
  return [...familyRegistry().families.values()].filter((f) => f.conditioning === "text");
}

/** "A or B": the pipeline classes of `families`, for messages. */
export function pipelineList(families: Family[], sep = " or "): string {
  return families.flatMap((f) => f.pipelineClasses).join(sep);
}

/** The step tensor names of a family, in order (docs/protocol.md §4). */
export function stepTensorNames(name: string): string[] {
  return family(name).stepTensors.map((t) => t.name);
}
