// TensorBoard gets the resolved recipe too: a text summary (the text plugin's string tensor) at the run's first
// logged step, which TensorBoard's own EventAccumulator reads back as the recipe's JSON.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { loadRecipe } from "../src/recipe/load.js";
import { Reporter } from "../src/run/reporter.js";
import { RECIPE_TAG, TB_DIR, TrainingWatch } from "../src/run/watch.js";
import { projectPython, projectRoot, scratchDir } from "./helpers.js";

const READ = `
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.TENSORS: 0, ea.SCALARS: 0})
acc.Reload()
t = acc.Tensors(sys.argv[2])
meta = acc.SummaryMetadata(sys.argv[2])
print(json.dumps({"steps": [e.step for e in t], "text": t[0].tensor_proto.string_val[0].decode(), "plugin": meta.plugin_data.plugin_name,
                  "scalars": acc.Tags()["scalars"]}))
`;

test("the resolved recipe is a TensorBoard text summary at the first logged step", async () => {
  const dir = scratchDir("dmd2-tbrecipe-");
  const recipe = loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), { overrides: [`run_dir=${path.join(dir, "run")}`] });
  mkdirSync(recipe.run_dir); // distill makes it before the watch
  const watch = new TrainingWatch(recipe, 0, new Reporter({ mode: "plain", quiet: true }));
  watch.row({ step: 1, time: 1.7e9, loss_fake: 0.5 });
  watch.row({ step: 2, time: 1.7e9 + 1, loss_fake: 0.25 });
  watch.close();
  await watch.finished();
  const r = JSON.parse((await execa(projectPython, ["-c", READ, path.join(recipe.run_dir, TB_DIR), RECIPE_TAG])).stdout) as { steps: number[]; text: string; plugin: string; scalars: string[] };
  assert.deepEqual(r.steps, [1]);
  assert.equal(r.plugin, "text");
  assert.match(r.text, /^the resolved recipe \(recipe\.resolved\.json\):\n\n {4}\{/);
  const json = r.text.split("\n").slice(2).map((l) => l.slice(4)).join("\n");
  assert.deepEqual(JSON.parse(json), JSON.parse(JSON.stringify(recipe)));
  assert.deepEqual(r.scalars, ["loss/loss_fake"]);
});
