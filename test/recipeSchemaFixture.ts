// The recipe schema as JSON, for the Python side (python-worker/tests/test_recipe_schema.py checks config.py's
// dataclasses and value rules against it). Written by scripts/dump-recipe-schema.mjs to
// python-worker/tests/fixtures/recipe_schema.json; test/recipe-shape.test.ts fails when the committed file is
// not what this module makes now (a schema change without regenerating it).
//
// Besides the two schemas it holds:
// - the resolved tiny recipe and a resolved teacher recipe, the bases the Python probes edit;
// - probes: for every whole-number and number leaf, values at and past its minimum and maximum, each with
//   whether the CLI accepts it in a resolved recipe (overrideResolved, or the teacher rules);
// - the LoRA rule cases (resolve.ts loraCases) with the problems resolve.ts gives each.
import path from "node:path";
import { loadRecipe, loadTeacherRecipe, overrideResolved } from "../src/recipe/load.js";
import { loraCases, loraProblems } from "../src/recipe/resolve.js";
import { recipeSchema, teacherRecipeSchema, type Group, type Leaf, type Node } from "../src/recipe/schema.js";
import type { Recipe, TeacherRecipe } from "../src/recipe/types.js";
import { checkSchema, checkTeacherRules } from "../src/recipe/validate.js";
import { projectRoot } from "./helpers.js";

export const FIXTURE_FILE = path.join(projectRoot, "python-worker", "tests", "fixtures", "recipe_schema.json");

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function nodeJson(n: Node): Json {
  if (n.kind === "group") return { kind: "group", fields: Object.fromEntries(Object.entries(n.fields).map(([k, v]) => [k, nodeJson(v)])) };
  return Object.fromEntries(Object.entries(n).map(([k, v]) => [k, v instanceof RegExp ? v.source : (v as Json)]));
}

type NumberLeaf = Extract<Leaf, { kind: "int" | "number" }>;

function numberLeaves(g: Group, at: string[] = []): { path: string[]; leaf: NumberLeaf }[] {
  return Object.entries(g.fields).flatMap(([k, n]) =>
    n.kind === "group" ? numberLeaves(n, [...at, k]) : n.kind === "int" || n.kind === "number" ? [{ path: [...at, k], leaf: n }] : []);
}

/** Values at and just past each end of a leaf's range: [value, inside the range]. */
function probeValues(l: NumberLeaf): [number, boolean][] {
  const step = l.kind === "int" ? 1 : 1e-6;
  const out: [number, boolean][] = [];
  if (l.min !== undefined) {
    const exclusive = l.kind === "number" && l.exclusiveMin;
    out.push([exclusive ? l.min + step : l.min, true], [exclusive ? l.min : l.min - step, false]);
  }
  if (l.max !== undefined) {
    const exclusive = l.kind === "number" && l.exclusiveMax;
    out.push([exclusive ? l.max - step : l.max, true], [exclusive ? l.max : l.max + step, false]);
  }
  if (l.kind === "int" && l.oneOf) for (const v of l.oneOf) out.push([v, true]);
  return out;
}

const setIn = (o: Record<string, unknown>, p: string[], v: unknown) => {
  const parent = p.slice(0, -1).reduce<Record<string, unknown>>((x, k) => x[k] as Record<string, unknown>, o);
  parent[p[p.length - 1]!] = v;
};

function distillAccepts(base: Recipe, p: string[], v: number): boolean {
  try {
    overrideResolved(base, [`${p.join(".")}=${v}`]);
    return true;
  } catch {
    return false;
  }
}

function teacherAccepts(base: TeacherRecipe, p: string[], v: number): boolean {
  const { version: _v, kind: _k, ...rest } = structuredClone(base);
  setIn(rest, p, v);
  const s = checkSchema(rest, teacherRecipeSchema);
  return s.problems.length === 0 && checkTeacherRules(s.value).length === 0;
}

export function recipeSchemaFixture(): Json {
  const opts = { cwd: "/abs", cpuCount: 2 };
  const tiny = loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), opts);
  const teacher = loadTeacherRecipe(path.join(projectRoot, "recipes", "digits-teacher.yaml"), opts);
  const probes = (g: Group, accepts: (p: string[], v: number) => boolean) =>
    numberLeaves(g).flatMap(({ path: p, leaf }) => probeValues(leaf).map(([value, inRange]) => ({ key: p.join("."), value, in_range: inRange, cli_accepts: accepts(p, value) })));
  return {
    generated_by: "scripts/dump-recipe-schema.mjs (npm run build first)",
    recipe: nodeJson(recipeSchema),
    teacher_recipe: nodeJson(teacherRecipeSchema),
    // keys the resolved form adds to the schema's (resolve.ts)
    resolved_extra: { recipe: ["version"], teacher_recipe: ["version", "kind"] },
    bases: { recipe: JSON.parse(JSON.stringify(tiny)) as Json, teacher_recipe: JSON.parse(JSON.stringify(teacher)) as Json },
    probes: { recipe: probes(recipeSchema, (p, v) => distillAccepts(tiny, p, v)), teacher_recipe: probes(teacherRecipeSchema, (p, v) => teacherAccepts(teacher, p, v)) },
    lora_cases: loraCases.map((c) => ({ ...c, problems: loraProblems(c.lora, c.teacher_source, c.strategy).map((x) => `${x.path.join(".")}: ${x.message}`) })),
  };
}

/** The fixture file's text: one key a line at the top level, so a diff shows what changed. */
export function recipeSchemaFixtureText(): string {
  const f = recipeSchemaFixture() as Record<string, Json>;
  return "{\n" + Object.entries(f).map(([k, v]) => ` ${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(",\n") + "\n}\n";
}
