// The recipe keys around data sources and teachers (docs/pipeline.md §1-3): data.source / data.folder.*,
// teacher.source / teacher.path with the diffusion group taken from a diffusers teacher's scheduler, the
// teacher recipe of `dmd2 train-teacher`, and the data group alone (`dmd2 eval --data-from`).
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { RecipeError } from "../src/errors.js";
import { showPath } from "../src/recipe/files.js";
import { loadDataGroup, loadRecipe, loadTeacherRecipe } from "../src/recipe/load.js";
import { fakeTeacher, issuesOf, scratchDir } from "./helpers.js";

const tmp = scratchDir("dmd2-sources-");
const recipes = path.join(tmp, "recipes");
mkdirSync(recipes);
function writeRecipe(name: string, lines: string[]): string {
  const f = path.join(recipes, name);
  writeFileSync(f, lines.join("\n") + "\n");
  return f;
}
/** the recipe file as messages name it */
const shown = (f: string) => path.relative(process.cwd(), f);

const linear = fakeTeacher(path.join(tmp, "teachers", "linear"), { beta_schedule: "linear", beta_start: 0.0001, beta_end: 0.02, num_train_timesteps: 500, prediction_type: "v_prediction" });

test("teacher.source diffusers: teacher.path absolute, diffusion taken from the scheduler config", () => {
  const f = writeRecipe("diffusers.yaml", ["data: { source: digits }", "teacher:", "  source: diffusers", "  path: ../teachers/linear"]);
  const r = loadRecipe(f, { cwd: tmp, cpuCount: 2 });
  assert.equal(r.teacher.source, "diffusers");
  assert.equal(r.teacher.path, linear);
  assert.deepEqual(r.diffusion, { num_train_timesteps: 500, beta_schedule: "linear", beta_start: 0.0001, beta_end: 0.02, prediction_type: "v_prediction" });
  assert.equal(r.generator.conditioning_timestep, 499, "the generator's timesteps follow the teacher's T");
  assert.deepEqual(r.data, { source: "digits", gmm: { num_classes: 4, image_size: 8, std: 0.1 }, folder: { path: null, channels: 1 }, prompts: { file: null, images: null } });
});

test("a diffusion key written in the recipe may repeat the teacher's value; a different one names both values", () => {
  const same = writeRecipe("same.yaml", ["data: { source: digits }", "teacher: { source: diffusers, path: ../teachers/linear }", "diffusion:", "  beta_schedule: linear", "  num_train_timesteps: 500"]);
  assert.equal(loadRecipe(same, { cwd: tmp }).diffusion.beta_schedule, "linear");
  const differs = writeRecipe("differs.yaml", ["data: { source: digits }", "teacher: { source: diffusers, path: ../teachers/linear }", "diffusion:", "  beta_schedule: scaled_linear", "  prediction_type: epsilon"]);
  const lines = issuesOf(() => loadRecipe(differs, { cwd: tmp }));
  const config = showPath(path.join(linear, "scheduler", "scheduler_config.json"));
  assert.deepEqual(lines, [
    `${shown(differs)}:4: diffusion.beta_schedule: scaled_linear differs from the teacher's linear (${config}): drop the key to take the teacher's value`,
    `${shown(differs)}:5: diffusion.prediction_type: epsilon differs from the teacher's v_prediction (${config}): drop the key to take the teacher's value`,
  ]);
  const viaSet = issuesOf(() => loadRecipe(same, { cwd: tmp, overrides: ["diffusion.num_train_timesteps=1000"] }));
  assert.equal(viaSet.length, 1);
  assert.match(viaSet[0]!, /^--set: diffusion\.num_train_timesteps: 1000 differs from the teacher's 500/);
});

test("teacher.path problems: missing folder names the teacher recipe next to the recipe, unsupported scheduler values, unreadable config", () => {
  writeRecipe("digits-teacher.yaml", ["data: { source: digits }"]);
  const missing = writeRecipe("digits.yaml", ["data: { source: digits }", "teacher:", "  source: diffusers", "  path: ../teachers/digits"]);
  assert.deepEqual(issuesOf(() => loadRecipe(missing, { cwd: tmp })), [
    `${shown(missing)}:4: teacher.path: ../teachers/digits does not exist (train it first: dmd2 train-teacher ${showPath(path.join(recipes, "digits-teacher.yaml"))} --out ${showPath(path.join(tmp, "teachers", "digits"))})`,
  ]);
  const odd = fakeTeacher(path.join(tmp, "teachers", "odd"), { beta_schedule: "squaredcos_cap_v2", prediction_type: "flow", beta_start: "x" });
  const f = writeRecipe("odd.yaml", ["data: { source: digits }", "teacher: { source: diffusers, path: ../teachers/odd }"]);
  const config = showPath(path.join(odd, "scheduler", "scheduler_config.json"));
  assert.deepEqual(issuesOf(() => loadRecipe(f, { cwd: tmp })), [
    `${shown(f)}:2: teacher.path: ${config}: beta_schedule is string "squaredcos_cap_v2", which dmd2 does not support (supported: linear, scaled_linear)`,
    `${shown(f)}:2: teacher.path: ${config}: beta_start is string "x", expected a number`,
    `${shown(f)}:2: teacher.path: ${config}: prediction_type is string "flow", which dmd2 does not support (supported: epsilon, v_prediction, sample)`,
  ]);
  const broken = fakeTeacher(path.join(tmp, "teachers", "broken"), {});
  writeFileSync(path.join(broken, "scheduler", "scheduler_config.json"), "{ not json");
  const b = writeRecipe("broken.yaml", ["data: { source: digits }", "teacher: { source: diffusers, path: ../teachers/broken }"]);
  const lines = issuesOf(() => loadRecipe(b, { cwd: tmp }));
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /teacher\.path: .*scheduler_config\.json is not valid JSON \(.*\): the teacher folder is damaged$/);
});

test("the built-in teacher: needs gmm data; teacher.path is not read", () => {
  const f = writeRecipe("builtin.yaml", ["data: { source: gmm }", "teacher: { source: builtin, path: ../teachers/none }"]);
  assert.equal(loadRecipe(f, { cwd: tmp }).teacher.path, path.join(tmp, "teachers", "none"));
  const lines = issuesOf(() => loadRecipe(f, { cwd: tmp, overrides: ["data.source=folder", "data.folder.path=."] }));
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /^--set: data\.source: folder needs a trained teacher/);
});

test("data.source folder: the path is absolute and relative to the recipe's folder; channels 1 or 3", () => {
  mkdirSync(path.join(tmp, "images"), { recursive: true });
  const teacher = path.join(tmp, "teachers", "linear");
  const f = writeRecipe("folder.yaml", ["data:", "  source: folder", "  folder: { path: ../images, channels: 3 }", `teacher: { source: diffusers, path: ${teacher} }`]);
  const r = loadRecipe(f, { cwd: "/" });
  assert.deepEqual(r.data.folder, { path: path.join(tmp, "images"), channels: 3 });
  const bad = issuesOf(() => loadRecipe(f, { cwd: tmp, overrides: ["data.folder.channels=4"] }));
  assert.deepEqual(bad, ["--set: data.folder.channels: expected 1 or 3, got 4"]);
});

test("teacher recipe: defaults, name from the file, out relative to the current directory, all cores", () => {
  const f = writeRecipe("small-teacher.yaml", ["data: { source: digits }"]);
  const t = loadTeacherRecipe(f, { cwd: tmp, cpuCount: 6 });
  assert.deepEqual(t, {
    version: 1,
    kind: "teacher",
    name: "small-teacher",
    seed: 0,
    out: path.join(tmp, "teachers", "small-teacher"),
    python: null,
    torch_threads: 6,
    device: "cpu",
    data: { source: "digits", gmm: { num_classes: 4, image_size: 8, std: 0.1 }, folder: { path: null, channels: 1 }, prompts: { file: null, images: null } },
    diffusion: { num_train_timesteps: 1000, beta_schedule: "scaled_linear", beta_start: 0.00085, beta_end: 0.012, prediction_type: "epsilon" },
    model: { block_out_channels: [32, 64], layers_per_block: 1, norm_num_groups: 8 },
    train: { steps: 5000, batch_size: 128, lr: 1e-3, warmup_steps: 100, weight_decay: 0, grad_clip: 1, ema_decay: 0.999, label_dropout: 0.1, log_every: 100 },
  });
  const o = loadTeacherRecipe(f, { cwd: tmp, overrides: ["out=elsewhere/t", "model.block_out_channels=[8, 16]", "model.norm_num_groups=4", "train.steps=20"] });
  assert.equal(o.out, path.join(tmp, "elsewhere", "t"));
  assert.deepEqual(o.model.block_out_channels, [8, 16]);
  assert.equal(o.train.steps, 20);
});

test("teacher recipe: every problem at once with its line, distillation keys are unknown, rules across keys", () => {
  const f = writeRecipe("bad-teacher.yaml", [
    "data: { source: digits }",
    "generator:",
    "  steps: 2",
    "model:",
    "  block_out_channels: [12, 24, 48, 96]",
    "  norm_num_groups: 8",
    "train:",
    "  ema_decay: 1",
    "  stepz: 10",
  ]);
  const s = shown(f);
  assert.deepEqual(issuesOf(() => loadTeacherRecipe(f, { cwd: tmp })), [
    `${s}:2: generator: unknown key (known keys: name, seed, out, python, torch_threads, device, data, diffusion, model, train)`,
    `${s}:9: train.stepz: unknown key (did you mean "steps"?)`,
    `${s}:8: train.ema_decay: 1 is out of range (must be >= 0 and < 1)`,
  ]);
  const rules = writeRecipe("rules-teacher.yaml", ["data: { source: digits }", "model:", "  block_out_channels: [12, 24, 48, 96, 96]", "  norm_num_groups: 8"]);
  assert.deepEqual(issuesOf(() => loadTeacherRecipe(rules, { cwd: tmp })), [
    `${shown(rules)}:3: model.block_out_channels: every width must be a multiple of model.norm_num_groups (8), got [12, 24, 48, 96, 96]`,
    `${shown(rules)}:3: model.block_out_channels: 5 levels halve the image 4 times, but the 8x8 images of data.source digits do not divide by 16 (use fewer levels)`,
  ]);
  assert.deepEqual(issuesOf(() => loadTeacherRecipe(rules, { cwd: tmp, overrides: ["run_dir=x"] })), ['--set: run_dir: unknown key (known keys: name, seed, out, python, torch_threads, device, data, diffusion, model, train)']);
});

test("the data group alone (dmd2 eval --data-from): other keys are not read, the folder path is resolved", () => {
  mkdirSync(path.join(tmp, "imgs"), { recursive: true });
  const f = writeRecipe("any.yaml", ["anything: goes", "data:", "  source: folder", "  folder: { path: ../imgs }"]);
  assert.deepEqual(loadDataGroup(f), { source: "folder", gmm: { num_classes: 4, image_size: 8, std: 0.1 }, folder: { path: path.join(tmp, "imgs"), channels: 1 }, prompts: { file: null, images: null } });
  const bad = writeRecipe("bad-data.yaml", ["data:", "  source: mnist"]);
  assert.deepEqual(issuesOf(() => loadDataGroup(bad)), [`${shown(bad)}:2: data.source: expected one of gmm | digits | folder | prompts, got string "mnist"`]);
});

test("a recipe of the other kind says which command reads it", () => {
  const teacherFile = writeRecipe("mixed-up-teacher.yaml", ["data: { source: digits }", "model: { norm_num_groups: 8 }"]);
  const distillFile = writeRecipe("mixed-up.yaml", ["generator: { steps: 2 }"]);
  const hint = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      assert.ok(e instanceof RecipeError);
      return e.hint;
    }
    assert.fail("expected a RecipeError");
  };
  assert.equal(hint(() => loadRecipe(teacherFile, { cwd: tmp })), `${shown(teacherFile)} looks like a teacher recipe (it has model:): run dmd2 train-teacher ${shown(teacherFile)}`);
  assert.equal(hint(() => loadTeacherRecipe(distillFile, { cwd: tmp })), `${shown(distillFile)} looks like a distillation recipe (it has generator:): run dmd2 distill ${shown(distillFile)}`);
});
