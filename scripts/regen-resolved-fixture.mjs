// Regenerates the resolved tiny recipe shared by both languages: python-worker/tests/fixtures/tiny.resolved.json
// and the "Resolved form" example in docs/recipe.md (test/recipe.test.ts checks that they match). Run after
// changing the recipe schema: npm run build && node scripts/regen-resolved-fixture.mjs
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { loadRecipe } = await import(path.join(root, "dist", "src", "recipe", "load.js"));
const r = loadRecipe(path.join(root, "recipes", "tiny.yaml"), { cwd: "/abs", cpuCount: 2 });
const text = "{\n" + Object.entries(r).map(([k, v]) => ` ${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(",\n") + "\n}\n";
writeFileSync(path.join(root, "python-worker", "tests", "fixtures", "tiny.resolved.json"), text);
const doc = path.join(root, "docs", "recipe.md");
const md = readFileSync(doc, "utf8");
const a = md.indexOf("```json\n{\n");
const b = md.indexOf("```", a + 7);
writeFileSync(doc, md.slice(0, a) + "```json\n" + text + md.slice(b));
console.log("regenerated the resolved tiny recipe fixture and docs example");
