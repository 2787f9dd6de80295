// The recipe's shape is written once, in src/recipe/schema.ts: the TypeScript types are derived from it
// (types.ts), and the Python side is checked against a JSON dump of it (python-worker/tests/test_recipe_schema.py).
// Here: the dump is current, and the resolved recipes hold what the derived types say (a `filled` key is never
// null once resolved; every leaf has its kind's JavaScript type).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadRecipe, loadTeacherRecipe } from "../src/recipe/load.js";
import { recipeSchema, teacherRecipeSchema, type Group, type Leaf } from "../src/recipe/schema.js";
import { FIXTURE_FILE, recipeSchemaFixtureText } from "./recipeSchemaFixture.js";
import { projectRoot } from "./helpers.js";

test("python-worker/tests/fixtures/recipe_schema.json is the current schema (else: npm run build && node scripts/dump-recipe-schema.mjs)", () => {
  assert.equal(readFileSync(FIXTURE_FILE, "utf8"), recipeSchemaFixtureText());
});

function leafProblems(leaf: Leaf, v: unknown, at: string): string[] {
  if (v === null) return "nullable" in leaf && leaf.nullable && !leaf.filled ? [] : [`${at}: null in a resolved recipe`];
  const ok = (() => {
    switch (leaf.kind) {
      case "int": return Number.isInteger(v) && (!leaf.oneOf || leaf.oneOf.includes(v as number));
      case "number": return typeof v === "number";
      case "string": case "path": return typeof v === "string";
      case "enum": return (leaf.resolvedValues ?? leaf.values).includes(v as string);
      case "bool": return typeof v === "boolean";
      case "devices": case "stringList": return Array.isArray(v) && v.every((x) => typeof x === "string");
      case "intList": return Array.isArray(v) && v.every((x) => Number.isInteger(x));
      case "numberPair": return Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === "number");
      case "stages": return Array.isArray(v) && v.every((x) => Number.isInteger(x?.from_step) && typeof x?.set === "object");
    }
  })();
  return ok ? [] : [`${at}: ${JSON.stringify(v)} is not a resolved ${leaf.kind}`];
}

function shapeProblems(g: Group, v: Record<string, unknown>, at = ""): string[] {
  const extra = Object.keys(v).filter((k) => !(k in g.fields) && !(at === "" && (k === "version" || k === "kind")));
  return [
    ...extra.map((k) => `${at}${k}: not in the schema`),
    ...Object.entries(g.fields).flatMap(([k, n]) =>
      n.kind === "group" ? shapeProblems(n, v[k] as Record<string, unknown>, `${at}${k}.`) : leafProblems(n, v[k], `${at}${k}`)),
  ];
}

test("resolved recipes have the shape the derived types give them", () => {
  const opts = { cwd: "/abs", cpuCount: 2 };
  for (const file of ["tiny.yaml", "digits-1step.yaml"]) {
    const r = loadRecipe(path.join(projectRoot, "recipes", file), { ...opts, overrides: file === "tiny.yaml" ? [] : ["teacher.source=builtin", "data.source=gmm", "teacher.path=null"] });
    assert.deepEqual(shapeProblems(recipeSchema, r), [], file);
  }
  const t = loadTeacherRecipe(path.join(projectRoot, "recipes", "digits-teacher.yaml"), opts);
  assert.deepEqual(shapeProblems(teacherRecipeSchema, t), []);
  // the check sees a filled key left null and a backend left "auto"
  const bad = loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), opts);
  assert.deepEqual(shapeProblems(recipeSchema, { ...bad, torch_threads: null, roles: { ...bad.roles, teacher: { ...bad.roles.teacher, backend: "auto" } } }),
    ["torch_threads: null in a resolved recipe", 'roles.teacher.backend: "auto" is not a resolved enum']);
});
