// Regenerates the step-plan fixture that pins the Python port of the training step to the TypeScript plan:
// python-worker/tests/fixtures/step-plan.json (planStep's phases for steps of several resolved recipes,
// test/stepPlanFixture.ts). Run after changing src/schedule/ or the keys it reads, then port the change to
// python-worker/dmd2_worker/step_plan.py: npm run build && node scripts/regen-step-fixture.mjs
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { STEP_FIXTURE, stepFixtureText } = await import(path.join(root, "dist", "test", "stepPlanFixture.js"));
writeFileSync(STEP_FIXTURE, stepFixtureText());
console.log(`regenerated ${path.relative(root, STEP_FIXTURE)}`);
