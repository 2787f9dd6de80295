// Reads a recipe file of one kind (a distillation recipe, a teacher recipe, or only the data group of
// either): YAML with line numbers, `--set` overrides, the schema pass (validate.ts), the checks that read the
// disk (files.ts), the rules across keys, then what depends on other keys or on the machine (resolve.ts).
// Every problem is reported at once as a RecipeError (exit code 2).

import { existsSync, readFileSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { isMap, isScalar, LineCounter, parseDocument, type Document, YAMLMap } from "yaml";
import { RecipeError, type RecipeIssue } from "../errors.js";
import { checkDataFolder, checkTeacherFolder, type FileContext } from "./files.js";
import { findCachedSnapshot, looksLikeHubId } from "./hubCache.js";
import { dataGroupSchema, recipeSchema, teacherRecipeSchema, type Group, type SchemaValue } from "./schema.js";
import { checkDataRules, checkRules, checkSchema, checkTeacherRules, suggestKey, type Problem } from "./validate.js";
import { alreadyResolved, resolveRecipe, resolveTeacherRecipe, type ResolveOptions } from "./resolve.js";
import { PLACED_ROLES, type DataConfig, type Precision, type Recipe, type TeacherRecipe } from "./types.js";
import { resolveRolePlacement } from "./placement.js";

type Obj = Record<string, unknown>;

/** One kind of recipe file: its schema and the stages after the schema pass, which get the schema's value. */
interface RecipeKind<G extends Group, T> {
  schema: G;
  /** the part of the file this kind reads (default: all of it) */
  select?: (raw: unknown) => unknown;
  files: (v: SchemaValue<G, "checked">, ctx: FileContext) => Problem[];
  rules: (v: SchemaValue<G, "checked">) => Problem[];
  resolve: (v: SchemaValue<G, "checked">, opts: ResolveOptions) => { recipe: T; problems: Problem[] };
  /** a top-level key only the other recipe kind has, and the command that reads that kind */
  otherKind?: { key: string; kind: string; command: string };
}

const distillKind: RecipeKind<typeof recipeSchema, Recipe> = {
  schema: recipeSchema,
  files: (v, ctx) => [...checkDataFolder(v.data, ctx), ...checkTeacherFolder(v, ctx)],
  rules: checkRules,
  resolve: resolveRecipe,
  otherKind: { key: "model", kind: "teacher", command: "dmd2 train-teacher" },
};

const teacherKind: RecipeKind<typeof teacherRecipeSchema, TeacherRecipe> = {
  schema: teacherRecipeSchema,
  files: (v, ctx) => checkDataFolder(v.data, ctx),
  rules: checkTeacherRules,
  resolve: resolveTeacherRecipe,
  otherKind: { key: "generator", kind: "distillation", command: "dmd2 distill" },
};

const dataKind: RecipeKind<typeof dataGroupSchema, { data: DataConfig }> = {
  schema: dataGroupSchema,
  select: (raw) => ({ data: typeof raw === "object" && raw !== null ? (raw as Obj).data : undefined }),
  files: (v, ctx) => checkDataFolder(v.data, ctx),
  rules: checkDataRules,
  resolve: (v) => ({ recipe: v, problems: [] }),
};

export interface LoadOptions extends Partial<ResolveOptions> {
  /** `key.path=value` strings, applied after the file; values are parsed as YAML scalars/flow nodes. */
  overrides?: string[];
}

function lineOf(doc: Document, lc: LineCounter, p: string[], atKey: boolean): number | null {
  // Walk down as far as the path exists; report the deepest node's line (a missing key: its parent's line).
  let node: unknown = doc.contents;
  let line: number | null = null;
  const setLine = (range: readonly number[] | null | undefined) => {
    if (range) line = lc.linePos(range[0]!).line;
  };
  setLine((node as { range?: number[] } | null)?.range);
  for (const key of p) {
    if (!isMap(node)) break;
    const pair = (node as YAMLMap).items.find((it) => isScalar(it.key) && String(it.key.value) === key);
    if (!pair) break;
    if (atKey && key === p[p.length - 1]) {
      setLine((pair.key as { range?: number[] }).range);
      return line;
    }
    node = pair.value;
    setLine((node as { range?: number[] } | null)?.range ?? (pair.key as { range?: number[] }).range);
  }
  return line;
}

function schemaHasPath(schema: Group, p: string[]): { ok: true } | { ok: false; at: string[]; hint: string } {
  let g: Group = schema;
  for (const [i, key] of p.entries()) {
    const node = g.fields[key];
    if (!node) return { ok: false, at: p.slice(0, i + 1), hint: suggestKey(key, Object.keys(g.fields)) };
    if (node.kind !== "group") return i === p.length - 1 ? { ok: true } : { ok: false, at: p.slice(0, i + 2), hint: `${p.slice(0, i + 1).join(".")} is not a group` };
    g = node;
  }
  return { ok: false, at: p, hint: "that is a group of keys; set one of its keys" };
}

/** Parses one `--set key.path=value`; an error's text goes after "--set: " (the issue's file), so it does not repeat it. */
export function parseOverride(spec: string, schema: Group = recipeSchema): { path: string[]; value: unknown } | { error: string } {
  const eq = spec.indexOf("=");
  if (eq <= 0) return { error: `"${spec}": expected key.path=value (e.g. --set train.steps=50)` };
  const key = spec.slice(0, eq).trim();
  const p = key.split(".");
  if (p.some((s) => s.length === 0)) return { error: `"${spec}": "${key}" is not a key path (e.g. train.steps)` };
  const known = schemaHasPath(schema, p);
  if (!known.ok) return { error: `${known.at.join(".")}: unknown key (${known.hint})` };
  const text = spec.slice(eq + 1);
  const vdoc = parseDocument(text);
  if (vdoc.errors.length > 0) return { error: `${key}: cannot parse value "${text}" (${vdoc.errors[0]!.message.split("\n")[0]})` };
  return { path: p, value: text.trim() === "" ? null : vdoc.toJS() };
}

const hasPath = (raw: unknown, p: string[]) =>
  p.reduce<unknown>((o, k) => (typeof o === "object" && o !== null ? (o as Obj)[k] : undefined), raw) !== undefined;

/** Every `path` leaf of a schema, as key paths. */
function pathKeys(g: Group, at: string[] = []): string[][] {
  return Object.entries(g.fields).flatMap(([k, node]) => (node.kind === "group" ? pathKeys(node, [...at, k]) : node.kind === "path" ? [[...at, k]] : []));
}

/** "~" and "~/x" as a shell expands them. */
export const expandHome = (p: string) => (p === "~" ? os.homedir() : p.startsWith("~/") ? path.join(os.homedir(), p.slice(2)) : p);

/**
 * Paths as a shell user expects (docs/recipe.md "Paths"): `~` is expanded in every path key, and a relative path
 * given with --set is relative to the current directory (a path written in the file stays relative to the
 * file's folder). `python` without a `/` is a command name and is left alone.
 */
function shellPaths(doc: Document, schema: Group, fromSet: ReadonlySet<string>, cwd: string): void {
  for (const key of pathKeys(schema)) {
    const value = doc.getIn(key) as unknown;
    if (typeof value !== "string" || value === "") continue;
    let p = expandHome(value);
    const command = key.length === 1 && key[0] === "python" && !p.includes("/");
    if (fromSet.has(key.join(".")) && !path.isAbsolute(p) && !command) p = path.resolve(cwd, p);
    if (p !== value) doc.setIn(key, p);
  }
}

/**
 * teacher.path as a Hub id (`org/name`) that is no existing path: the cached snapshot's folder is put in its
 * place (hubCache.ts). Returns the one-line problem when it is not cached, else null.
 */
function hubTeacher(doc: Document, schema: Group, fromSet: ReadonlySet<string>, file: string, cwd: string, env: NodeJS.ProcessEnv): string | null {
  if (schema.fields.teacher === undefined) return null;
  const value = doc.getIn(["teacher", "path"]) as unknown;
  if (typeof value !== "string" || !looksLikeHubId(value)) return null;
  const base = fromSet.has("teacher.path") ? cwd : path.dirname(path.resolve(file));
  if (existsSync(path.resolve(base, value))) return null;
  const found = findCachedSnapshot(value, env);
  if (!found.found) return found.message;
  doc.setIn(["teacher", "path"], found.snapshot);
  return null;
}

/** A distillation recipe (docs/recipe.md). */
export function loadRecipe(file: string, opts: LoadOptions = {}): Recipe {
  return loadKind(distillKind, file, opts);
}

/** A teacher recipe for `dmd2 train-teacher` (docs/pipeline.md §3). */
export function loadTeacherRecipe(file: string, opts: LoadOptions = {}): TeacherRecipe {
  return loadKind(teacherKind, file, opts);
}

/** Only the `data` group of a recipe file of either kind (other keys are not looked at), e.g. for `dmd2 eval --data-from`. */
export function loadDataGroup(file: string): DataConfig {
  return loadKind(dataKind, file, {}).data;
}

/** A recipe is a page of keys: a file above this size is not one (and is not read into memory). */
export const MAX_RECIPE_BYTES = 1 << 20;
/** YAML aliases (*name) a recipe may use: more is an alias bomb (a few lines that expand to gigabytes). */
export const MAX_ALIASES = 100;

function loadKind<G extends Group, T>(kind: RecipeKind<G, T>, file: string, opts: LoadOptions): T {
  const shown = path.relative(process.cwd(), file) || file;
  let text: string;
  try {
    const size = statSync(file).isFile() ? statSync(file).size : 0;
    if (size > MAX_RECIPE_BYTES) {
      throw new RecipeError([{ file: shown, line: null, path: "", message: `${(size / 2 ** 20).toFixed(1)} MiB is too large for a recipe (at most 1 MiB; long lists such as prompts go in their own file)` }]);
    }
    text = readFileSync(file, "utf8");
  } catch (e) {
    if (e instanceof RecipeError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file (check the path; recipes/ has examples)" : code === "EISDIR" ? "is a folder, not a recipe file" : `cannot read it (${code ?? String(e)})`;
    throw new RecipeError([{ file: shown, line: null, path: "", message: why }]);
  }
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const issues: RecipeIssue[] = [];
  for (const err of doc.errors) {
    const line = err.pos ? lc.linePos(err.pos[0]).line : null;
    issues.push({ file: shown, line, path: "", message: `invalid YAML: ${err.message.split("\n")[0]}` });
  }
  if (issues.length > 0) throw new RecipeError(issues);

  const fromSet = new Set<string>();
  for (const spec of opts.overrides ?? []) {
    const o = parseOverride(spec, kind.schema);
    if ("error" in o) {
      issues.push({ file: "--set", line: null, path: "", message: o.error });
      continue;
    }
    if (!isMap(doc.contents) && doc.contents !== null) {
      issues.push({ file: shown, line: null, path: "", message: "the recipe is not a mapping, so --set cannot apply" });
      continue;
    }
    if (doc.contents === null) doc.contents = doc.createNode({}) as never;
    doc.setIn(o.path, o.value);
    fromSet.add(o.path.join("."));
  }
  if (issues.length > 0) throw new RecipeError(issues);
  const cwd = opts.cwd ?? process.cwd();
  const hub = hubTeacher(doc, kind.schema, fromSet, file, cwd, opts.env ?? process.env);
  shellPaths(doc, kind.schema, fromSet, cwd);
  if (hub !== null) {
    const set = fromSet.has("teacher.path");
    throw new RecipeError([{ file: set ? "--set" : shown, line: set ? null : lineOf(doc, lc, ["teacher", "path"], false), path: "teacher.path", message: hub }]);
  }

  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: MAX_ALIASES }) as unknown;
  } catch (e) {
    // yaml's "Excessive alias count indicates a resource exhaustion attack"
    if (!(e instanceof ReferenceError) || !/alias/i.test(e.message)) throw e;
    throw new RecipeError([{ file: shown, line: null, path: "", message: `its YAML aliases (*name) expand too far (more than ${MAX_ALIASES} uses of an alias): write the values out` }]);
  }
  const schema = checkSchema(kind.select ? kind.select(raw) : raw, kind.schema);
  const problems: Problem[] = [...schema.problems];
  // The later stages run even when the schema pass found problems (a bad key stands at its default there), so that
  // every problem of a group is reported at once (data.gmm: {image_size: 9, num_classes: 1} gives both); of their
  // problems only those in a group the schema pass found a problem in are kept, and none about a key it named.
  const named = new Set(schema.problems.map((p) => p.path.join(".")));
  const groups = new Set(schema.problems.map((p) => p.path.slice(0, -1).join(".")));
  const fresh = (p: Problem) => {
    const key = p.path.join(".");
    if (schema.problems.length > 0 && !groups.has(p.path.slice(0, -1).join("."))) return false;
    return ![...named].some((n) => n === "" || key === n || key.startsWith(n + ".") || n.startsWith(key + ".") || (n.includes(".") && p.message.includes(n)));
  };
  if (schema.problems.length === 0 || !named.has("")) {
    try {
      problems.push(...kind.files(schema.value, { recipeFile: file, written: (p) => hasPath(raw, p) }).filter(fresh));
      problems.push(...kind.rules(schema.value).filter(fresh));
    } catch (e) {
      if (schema.problems.length === 0) throw e; // a stage that cannot run on defaults: the schema's problems stand
    }
  }
  const toIssue = (p: Problem): RecipeIssue => {
    const key = p.path.join(".");
    const overridden = [...fromSet].some((s) => key === s || key.startsWith(s + "."));
    return overridden
      ? { file: "--set", line: null, path: key, message: p.message }
      : { file: shown, line: lineOf(doc, lc, p.path, p.atKey ?? false), path: key, message: p.message };
  };
  if (problems.length > 0) {
    const other = kind.otherKind;
    const misfit = other !== undefined && typeof raw === "object" && raw !== null && other.key in raw;
    throw new RecipeError(problems.map(toIssue), misfit ? { hint: `${shown} looks like a ${other.kind} recipe (it has ${other.key}:): run ${other.command} ${shown}` } : {});
  }

  const resolved = kind.resolve(schema.value, {
    recipeFile: file,
    cwd: opts.cwd ?? process.cwd(),
    cpuCount: opts.cpuCount,
    env: opts.env ?? process.env,
  });
  if (resolved.problems.length > 0) throw new RecipeError(resolved.problems.map(toIssue));
  return resolved.recipe;
}

/** `--set` on an already resolved recipe (a run's recipe.resolved.json, for `dmd2 sample`): the same parsing
 * and the same schema and rule checks as a recipe file; only keys that make sense after training should be
 * changed (device, python, torch_threads, transport, heartbeat.*). */
export function overrideResolved(recipe: Recipe, overrides: string[]): Recipe {
  if (overrides.length === 0) return recipe;
  const obj = structuredClone(recipe) as unknown as Record<string, unknown>;
  const issues: RecipeIssue[] = [];
  for (const spec of overrides) {
    const o = parseOverride(spec);
    if ("error" in o) {
      issues.push({ file: "--set", line: null, path: "", message: o.error });
      continue;
    }
    let node = obj;
    for (const k of o.path.slice(0, -1)) node = node[k] as Record<string, unknown>;
    node[o.path[o.path.length - 1]!] = o.value;
  }
  if (issues.length > 0) throw new RecipeError(issues);
  // A new top-level device or precision moves every role whose own key was not given on the command line.
  const given = (k: string) => overrides.some((o) => o.trimStart().startsWith(`${k}=`));
  if (given("device") || given("precision")) {
    const roles = obj.roles as Recipe["roles"];
    const problems: Problem[] = [];
    for (const role of PLACED_ROLES) {
      const p = roles[role];
      if (given(`roles.${role}`) || given(`roles.${role}.device`)) continue;
      roles[role] = resolveRolePlacement(role, {
        device: given("device") ? String(obj.device) : p.device, precision: given("precision") ? (obj.precision as Precision) : p.precision,
        gradient_checkpointing: p.gradient_checkpointing, replicas: p.replicas, backend: "auto", strategy: p.strategy, join: p.join,
      }, { device: String(obj.device), precision: obj.precision as Precision, gradient_checkpointing: Boolean(obj.gradient_checkpointing), placement: obj.placement as Recipe["placement"], batchSize: (obj.train as Recipe["train"]).batch_size }, problems);
    }
    if (problems.length > 0) throw new RecipeError(problems.map((p) => ({ file: "--set", line: null, path: p.path.join("."), message: p.message })));
  }
  const { version: _v, ...rest } = obj;
  const schema = checkSchema(rest, recipeSchema);
  const problems = schema.problems.length > 0 ? schema.problems : checkRules(schema.value);
  const resolved = problems.length > 0 ? { problems } : alreadyResolved(schema.value, recipe.version);
  if ("problems" in resolved) throw new RecipeError(resolved.problems.map((p) => ({ file: "--set", line: null, path: p.path.join("."), message: p.message })));
  return resolved.recipe;
}
