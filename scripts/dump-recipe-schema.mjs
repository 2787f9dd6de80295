// Writes python-worker/tests/fixtures/recipe_schema.json: the recipe schema (src/recipe/schema.ts) as JSON, with
// the probes and LoRA cases python-worker/tests/test_recipe_schema.py checks config.py against
// (test/recipeSchemaFixture.ts says what is in it). Run after changing the schema or the LoRA rules:
// npm run build && node scripts/dump-recipe-schema.mjs
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { FIXTURE_FILE, recipeSchemaFixtureText } = await import(path.join(root, "dist", "test", "recipeSchemaFixture.js"));
writeFileSync(FIXTURE_FILE, recipeSchemaFixtureText());
console.log(`wrote ${path.relative(root, FIXTURE_FILE)}`);
