// Checks a parsed recipe object against a schema, collecting every problem at once (never stopping at the
// first), and fills in defaults; then the rules across keys of each recipe kind. Pure: no file system (beyond the
// shipped family registry, src/families.ts, read once), no YAML. load.ts adds file names and line numbers.

import { pipelineList, textFamilies } from "../families.js";
import { DEVICE_PATTERN, recipeSchema, type Group, type Leaf, type Node, type SchemaValue } from "./schema.js";

export interface Problem {
  path: string[];
  message: string;
  /** true when the problem is about the key itself (unknown key), so the key's line is the right one */
  atKey?: boolean;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

export function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "string") return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + "..." : v)}`;
  if (isObj(v)) return "a mapping";
  return `${typeof v} ${String(v)}`;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length]![b.length]!;
}

export function suggestKey(key: string, known: string[]): string {
  const best = known
    .map((k) => ({ k, d: editDistance(key.toLowerCase(), k.toLowerCase()) }))
    .sort((x, y) => x.d - y.d)[0];
  if (best && best.d <= Math.max(2, Math.floor(key.length / 3))) return `did you mean "${best.k}"?`;
  return `known keys: ${known.join(", ")}`;
}

function rangeText(leaf: { min?: number; max?: number; exclusiveMin?: boolean; exclusiveMax?: boolean }): string {
  const lo = leaf.min === undefined ? "" : `${leaf.exclusiveMin ? ">" : ">="} ${leaf.min}`;
  const hi = leaf.max === undefined ? "" : `${leaf.exclusiveMax ? "<" : "<="} ${leaf.max}`;
  return [lo, hi].filter(Boolean).join(" and ");
}

function checkRange(v: number, leaf: { min?: number; max?: number; exclusiveMin?: boolean; exclusiveMax?: boolean }): boolean {
  if (leaf.min !== undefined && (leaf.exclusiveMin ? v <= leaf.min : v < leaf.min)) return false;
  if (leaf.max !== undefined && (leaf.exclusiveMax ? v >= leaf.max : v > leaf.max)) return false;
  return true;
}

function checkLeaf(leaf: Leaf, v: unknown, path: string[], problems: Problem[]): unknown {
  const bad = (message: string) => {
    problems.push({ path, message });
    return undefined;
  };
  if (v === null && "nullable" in leaf && leaf.nullable) return null;
  switch (leaf.kind) {
    case "int":
    case "number": {
      if (typeof v !== "number" || !Number.isFinite(v)) return bad(`expected a ${leaf.kind === "int" ? "whole number" : "number"}, got ${describe(v)}`);
      if (leaf.kind === "int" && !Number.isInteger(v)) return bad(`expected a whole number, got ${v}`);
      if (leaf.kind === "int" && leaf.oneOf && !leaf.oneOf.includes(v)) return bad(`expected ${leaf.oneOf.join(" or ")}, got ${v}`);
      if (!checkRange(v, leaf)) return bad(`${v} is out of range (must be ${rangeText(leaf)})`);
      return v;
    }
    case "string": {
      if (typeof v !== "string") return bad(`expected a string, got ${describe(v)}`);
      if (leaf.pattern && !leaf.pattern.test(v)) return bad(`"${v}" is not allowed (use ${leaf.patternHelp ?? leaf.pattern.source})`);
      return v;
    }
    case "path": {
      if (typeof v !== "string" || v.length === 0) return bad(`expected a path, got ${describe(v)}`);
      return v;
    }
    case "enum": {
      if (typeof v !== "string" || !leaf.values.includes(v)) return bad(`expected one of ${leaf.values.join(" | ")}, got ${describe(v)}`);
      return v;
    }
    case "bool": {
      if (typeof v !== "boolean") return bad(`expected true or false, got ${describe(v)}`);
      return v;
    }
    case "devices": {
      const list = typeof v === "string" ? [v] : v;
      if (!Array.isArray(list) || list.length === 0) return bad(`expected a device (cpu, cuda, cuda:N) or a non-empty list of them, got ${describe(v)}`);
      for (const [i, x] of list.entries()) {
        if (typeof x !== "string" || !DEVICE_PATTERN.test(x)) return bad(`${Array.isArray(v) ? `entry ${i}: ` : ""}expected cpu, cuda or cuda:N, got ${describe(x)}`);
      }
      return v;
    }
    case "intList": {
      if (!Array.isArray(v)) return bad(`expected a list of whole numbers, got ${describe(v)}`);
      if (leaf.minLength !== undefined && v.length < leaf.minLength) return bad(`expected at least ${leaf.minLength} entries, got ${v.length}`);
      if (leaf.maxLength !== undefined && v.length > leaf.maxLength) return bad(`expected at most ${leaf.maxLength} entries, got ${v.length}`);
      for (const [i, x] of v.entries()) {
        if (typeof x !== "number" || !Number.isInteger(x)) return bad(`entry ${i}: expected a whole number, got ${describe(x)}`);
        if (leaf.min !== undefined && x < leaf.min) return bad(`entry ${i}: ${x} is out of range (must be >= ${leaf.min})`);
      }
      return v;
    }
    case "stringList": {
      if (!Array.isArray(v)) return bad(`expected a list of strings, got ${describe(v)}`);
      if (leaf.minLength !== undefined && v.length < leaf.minLength) return bad(`expected at least ${leaf.minLength} entries, got ${v.length}`);
      for (const [i, x] of v.entries()) {
        if (typeof x !== "string" || x.trim() === "") return bad(`entry ${i}: expected a non-empty string, got ${describe(x)}`);
      }
      if (new Set(v).size !== v.length) return bad("entries must not repeat");
      return v;
    }
    case "numberPair": {
      if (!Array.isArray(v) || v.length !== 2) return bad(`expected a list of two numbers, got ${describe(v)}`);
      for (const [i, x] of v.entries()) {
        if (typeof x !== "number" || !Number.isFinite(x)) return bad(`entry ${i}: expected a number, got ${describe(x)}`);
        if (!checkRange(x, leaf)) return bad(`entry ${i}: ${x} is out of range (must be ${rangeText(leaf)})`);
      }
      return v;
    }
    case "stages":
      return checkStages(leaf, v, path, problems);
  }
}

/** The leaf at a dotted key of the distillation recipe's schema, or null. */
function recipeLeaf(key: string): Leaf | null {
  let node: Node | undefined = recipeSchema;
  for (const k of key.split(".")) node = node?.kind === "group" ? node.fields[k] : undefined;
  return node === undefined || node.kind === "group" ? null : node;
}

/** `stages:` (issue 23): a list of { from_step: S, set: { "<key>": value } }, each key one a stage may set and each
 * value what that key's own leaf accepts. The order of the stages and the GAN's role are checkRules'. */
function checkStages(leaf: Extract<Leaf, { kind: "stages" }>, v: unknown, path: string[], problems: Problem[]): unknown {
  if (!Array.isArray(v)) {
    problems.push({ path, message: `expected a list of stages ({from_step: S, set: {key: value}}), got ${describe(v)}` });
    return undefined;
  }
  const before = problems.length;
  const out = v.map((stage, i) => {
    const at = [...path, String(i)];
    if (!isObj(stage)) {
      problems.push({ path: at, message: `expected a mapping {from_step: S, set: {key: value}}, got ${describe(stage)}` });
      return stage;
    }
    for (const k of Object.keys(stage)) {
      if (k !== "from_step" && k !== "set") problems.push({ path: [...at, k], message: `unknown key (${suggestKey(k, ["from_step", "set"])})`, atKey: true });
    }
    const from = stage.from_step;
    if (typeof from !== "number" || !Number.isInteger(from) || from < 0) problems.push({ path: [...at, "from_step"], message: `expected a whole number >= 0 (the first step of the stage), got ${describe(from)}` });
    const set = stage.set;
    if (!isObj(set) || Object.keys(set).length === 0) {
      problems.push({ path: [...at, "set"], message: `expected a mapping of the keys this stage sets (e.g. {generator.lr: 5.0e-7}), got ${describe(set)}` });
      return stage;
    }
    for (const [key, value] of Object.entries(set)) {
      const kp = [...at, "set", key];
      const target = recipeLeaf(key);
      if (target === null) problems.push({ path: kp, message: `unknown key (${suggestKey(key, [...leaf.keys])})`, atKey: true });
      else if (!leaf.keys.includes(key)) problems.push({ path: kp, message: `cannot change mid-run (the workers build from it at setup); a stage may set ${leaf.keys.join(", ")}`, atKey: true });
      else checkLeaf(target, value, kp, problems);
    }
    return stage;
  });
  return problems.length > before ? undefined : out;
}

function defaultOf(node: Node): unknown {
  if (node.kind === "group") return Object.fromEntries(Object.entries(node.fields).map(([k, n]) => [k, defaultOf(n)]));
  const d = node.default;
  return Array.isArray(d) ? [...d] : d;
}

function walk(g: Group, value: unknown, path: string[], problems: Problem[]): Obj {
  const out: Obj = {};
  if (value === undefined || value === null) return defaultOf(g) as Obj;
  if (!isObj(value)) {
    problems.push({ path, message: `expected a mapping of keys, got ${describe(value)}` });
    return defaultOf(g) as Obj;
  }
  const known = Object.keys(g.fields);
  for (const key of Object.keys(value)) {
    if (!(key in g.fields)) problems.push({ path: [...path, key], message: `unknown key (${suggestKey(key, known)})`, atKey: true });
  }
  for (const [key, node] of Object.entries(g.fields)) {
    const v = value[key];
    if (node.kind === "group") out[key] = walk(node, v, [...path, key], problems);
    else if (v === undefined) out[key] = defaultOf(node);
    else {
      const checked = checkLeaf(node, v, [...path, key], problems);
      out[key] = checked === undefined ? defaultOf(node) : checked;
    }
  }
  return out;
}

/** Schema pass: types, ranges, unknown keys. Returns the object with defaults filled in (nulls where the
 * default depends on other keys; resolve.ts fills those). */
export function checkSchema<G extends Group>(raw: unknown, schema: G): { value: SchemaValue<G, "checked">; problems: Problem[] } {
  const problems: Problem[] = [];
  // walk and defaultOf build exactly the shape SchemaValue derives from the same schema (test/recipe-shape.test.ts)
  type Value = SchemaValue<G, "checked">;
  if (raw !== undefined && raw !== null && !isObj(raw)) {
    return { value: defaultOf(schema) as Value, problems: [{ path: [], message: `a recipe must be a mapping of keys, got ${describe(raw)}` }] };
  }
  const value = walk(schema, raw ?? {}, [], problems) as Value;
  return { value, problems };
}

const getter = (r: Obj) => (p: string) => p.split(".").reduce<unknown>((o, k) => (isObj(o) ? o[k] : undefined), r);

/** Rules on the data group (both recipe kinds, and `dmd2 eval --data-from`). */
export function checkDataRules(r: Obj): Problem[] {
  const problems: Problem[] = [];
  const g = getter(r);
  const size = g("data.gmm.image_size") as number;
  if (size % 4 !== 0) problems.push({ path: ["data", "gmm", "image_size"], message: `must be a multiple of 4 (the UNet halves it twice), got ${size}` });
  if (g("data.source") === "folder" && g("data.folder.path") === null) {
    problems.push({ path: ["data", "folder", "path"], message: "required when data.source is folder (the folder of images to learn from)" });
  }
  if (g("data.source") === "prompts" && g("data.prompts.file") === null) {
    problems.push({ path: ["data", "prompts", "file"], message: "required when data.source is prompts (a UTF-8 text file, one prompt a line)" });
  }
  return problems;
}

/** The longest `name` a recipe may have: it names folders (runs/<name>, teachers/<name>, <run_dir>.old-<time>). */
export const MAX_NAME_LENGTH = 100;

/** Rules on the keys both recipe kinds have: data and diffusion, and the name. */
function checkDataAndDiffusion(r: Obj): Problem[] {
  const problems = checkDataRules(r);
  const g = getter(r);
  const name = g("name");
  if (typeof name === "string" && name.length > MAX_NAME_LENGTH) {
    problems.push({ path: ["name"], message: `${name.length} characters is too long (at most ${MAX_NAME_LENGTH}; it names the run's folder)` });
  }
  const bs = g("diffusion.beta_start") as number;
  const be = g("diffusion.beta_end") as number;
  if (be <= bs) problems.push({ path: ["diffusion", "beta_end"], message: `must be greater than diffusion.beta_start (${bs}), got ${be}` });
  return problems;
}

/** Rules across keys of a distillation recipe, run on the schema-checked object (after defaults). */
export function checkRules(r: Obj): Problem[] {
  const problems = checkDataAndDiffusion(r);
  const g = getter(r);
  const T = g("diffusion.num_train_timesteps") as number;
  const minT = g("dmd.min_t") as number;
  const maxT = g("dmd.max_t") as number;
  if (maxT <= minT) problems.push({ path: ["dmd", "max_t"], message: `must be greater than dmd.min_t (${minT}), got ${maxT}` });
  const hbI = g("heartbeat.interval_s") as number;
  const hbT = g("heartbeat.timeout_s") as number;
  if (hbT <= 2 * hbI) problems.push({ path: ["heartbeat", "timeout_s"], message: `must be more than twice heartbeat.interval_s (${hbI}), got ${hbT}` });
  const steps = g("generator.steps") as number;
  const ct = g("generator.conditioning_timestep") as number | null;
  if (ct !== null && ct >= T) problems.push({ path: ["generator", "conditioning_timestep"], message: `must be below diffusion.num_train_timesteps (${T}), got ${ct}` });
  const ts = g("generator.timesteps") as number[] | null;
  if (ts !== null) {
    if (ts.length !== steps) problems.push({ path: ["generator", "timesteps"], message: `has ${ts.length} entries but generator.steps is ${steps} (give one timestep per step)` });
    if (ts.some((t, i) => i > 0 && t >= ts[i - 1]!)) problems.push({ path: ["generator", "timesteps"], message: `must be strictly decreasing, got [${ts.join(", ")}]` });
    if (ts.some((t) => t >= T)) problems.push({ path: ["generator", "timesteps"], message: `entries must be below diffusion.num_train_timesteps (${T})` });
    if (ct !== null && ts[0] !== ct) problems.push({ path: ["generator", "timesteps"], message: `first entry (${ts[0]}) must equal generator.conditioning_timestep (${ct}); drop one of the two keys` });
  }
  const source = g("data.source") as string;
  if (g("teacher.source") === "builtin" && source === "prompts") {
    problems.push({ path: ["data", "source"], message: `prompts needs a text-to-image teacher (set teacher.source: diffusers and teacher.path to a ${pipelineList(textFamilies())} folder)` });
  } else if (g("teacher.source") === "builtin" && source !== "gmm") {
    problems.push({ path: ["data", "source"], message: `${source} needs a trained teacher: the built-in teacher learns only gmm data (set teacher.source: diffusers and teacher.path to a folder dmd2 train-teacher wrote)` });
  }
  if (g("teacher.source") === "diffusers" && g("teacher.path") === null) {
    problems.push({ path: ["teacher", "path"], message: "required when teacher.source is diffusers (the folder dmd2 train-teacher writes)" });
  }
  const gan = g("gan") as Obj;
  if (gan.enabled === true && (gan.generator_weight as number) === 0 && (gan.discriminator_weight as number) === 0) {
    problems.push({ path: ["gan", "enabled"], message: "gan is enabled but both gan weights are 0 (set gan.enabled: false or give a weight)" });
  }
  problems.push(...stageRules(r));
  if (source === "prompts" && g("generator.clip_sample") === true) {
    problems.push({ path: ["generator", "clip_sample"], message: "clamps pixels to [-1, 1]; a text-to-image teacher's generator makes VAE latents, which have another range (set generator.clip_sample: false)" });
  }
  if (source === "prompts" && gan.enabled === true && g("data.prompts.images") === null) {
    problems.push({ path: ["data", "prompts", "images"], message: "required when gan.enabled is true: the GAN's real branch needs real images (give a folder of images, with captions.txt for their captions, or set gan.enabled: false)" });
  }
  return problems;
}

/** Rules across the stages and the keys they set (issue 23; docs/recipe.md "Stages"). */
function stageRules(r: Obj): Problem[] {
  const problems: Problem[] = [];
  const stages = r.stages as { from_step: number; set: Record<string, unknown> }[];
  const gan = r.gan as Obj;
  stages.forEach((stage, i) => {
    const at = ["stages", String(i)];
    const prev = stages[i - 1];
    if (prev !== undefined && stage.from_step <= prev.from_step) {
      problems.push({ path: [...at, "from_step"], message: `${stage.from_step} must be greater than the stage before's from_step (${prev.from_step}): list the stages in step order` });
    }
    if (stage.set["gan.enabled"] === true && gan.enabled !== true) {
      problems.push({ path: [...at, "set", "gan.enabled"], message: "true needs the top-level gan.enabled: true (the discriminator is set up when the run starts): set gan.enabled: true and turn the GAN off until then with a stage from step 0 that sets gan.enabled: false" });
    }
    // the GAN as it stands in this stage: on with both weights 0 is the top-level rule's mistake
    const inForce = (key: string) => {
      for (let j = i; j >= 0; j--) if (key in stages[j]!.set) return stages[j]!.set[key];
      return gan[key.slice("gan.".length)];
    };
    if (inForce("gan.enabled") === true && inForce("gan.generator_weight") === 0 && inForce("gan.discriminator_weight") === 0) {
      problems.push({ path: [...at, "set"], message: `the GAN is on from step ${stage.from_step} but both gan weights are 0 (set gan.enabled: false in this stage, or give a weight)` });
    }
  });
  return problems;
}

/** The side of the images when the recipe says it without reading files (gmm: its image_size; digits: 8). */
function knownImageSize(r: Obj): number | null {
  const g = getter(r);
  if (g("data.source") === "gmm") return g("data.gmm.image_size") as number;
  if (g("data.source") === "digits") return 8;
  return null;
}

/** Rules across keys of a teacher recipe (docs/pipeline.md §3). */
export function checkTeacherRules(r: Obj): Problem[] {
  const problems = checkDataAndDiffusion(r);
  const g = getter(r);
  if (g("data.source") === "prompts") problems.push({ path: ["data", "source"], message: "prompts has no images to train a teacher on (use gmm, digits or folder)" });
  const widths = g("model.block_out_channels") as number[];
  const groups = g("model.norm_num_groups") as number;
  const off = widths.filter((w) => w % groups !== 0);
  if (off.length > 0) {
    problems.push({ path: ["model", "block_out_channels"], message: `every width must be a multiple of model.norm_num_groups (${groups}), got [${widths.join(", ")}]` });
  }
  const size = knownImageSize(r);
  const halvings = widths.length - 1;
  if (size !== null && size % 2 ** halvings !== 0) {
    problems.push({ path: ["model", "block_out_channels"], message: `${widths.length} levels halve the image ${halvings} times, but the ${size}x${size} images of data.source ${String(g("data.source"))} do not divide by ${2 ** halvings} (use fewer levels)` });
  }
  return problems;
}
