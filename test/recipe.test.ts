// Recipe validation: the shipped recipes load, defaults resolve as docs/recipe.md says, every malformed recipe
// in test/fixtures/bad-recipes gives its expected one-line message, and all problems are reported at once.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadRecipe, loadTeacherRecipe, parseOverride } from "../src/recipe/load.js";
import { defaultTimesteps } from "../src/recipe/resolve.js";
import { parse } from "yaml";
import { fakeTeacher, fakeTextPipeline, issuesOf, projectRoot, scratchDir } from "./helpers.js";

const tmp = scratchDir("dmd2-recipe-");
function writeRecipe(name: string, text: string): string {
  const f = path.join(tmp, name);
  writeFileSync(f, text);
  return f;
}

test("every recipe in recipes/ loads and resolves (teacher recipes: *-teacher.yaml)", () => {
  const dir = path.join(projectRoot, "recipes");
  const files = readdirSync(dir).filter((f) => f.endsWith(".yaml"));
  assert.ok(files.length >= 1);
  for (const f of files.filter((f) => f.endsWith("-teacher.yaml"))) {
    const t = loadTeacherRecipe(path.join(dir, f), { cwd: tmp, cpuCount: 2 });
    assert.equal(t.kind, "teacher", f);
    assert.equal(t.out, path.join(tmp, "teachers", t.name), f);
  }
  // a recipe with a diffusers teacher gets a stand-in folder with the default scheduler (no trained teacher here)
  const teacher = fakeTeacher(path.join(tmp, "stand-in-teacher"), {});
  // and a text-to-image recipe (data.source prompts) a stand-in pipeline of its family, prompts and an image folder
  const text = { sd15: fakeTextPipeline(path.join(tmp, "stand-in-sd15"), "StableDiffusionPipeline"), sdxl: fakeTextPipeline(path.join(tmp, "stand-in-sdxl"), "StableDiffusionXLPipeline") };
  for (const f of files.filter((f) => !f.endsWith("-teacher.yaml"))) {
    const raw = parse(readFileSync(path.join(dir, f), "utf8")) as { teacher?: { source?: string }; data?: { source?: string } };
    const diffusers = raw.teacher?.source === "diffusers";
    const overrides = raw.data?.source === "prompts" ? text[f.startsWith("sdxl") ? "sdxl" : "sd15"] : diffusers ? [`teacher.path=${teacher}`] : [];
    const r = loadRecipe(path.join(dir, f), { cwd: tmp, cpuCount: 2, overrides });
    assert.equal(r.version, 1);
    assert.equal(r.generator.timesteps.length, r.generator.steps, f);
  }
});

test("tiny.yaml resolves to the documented resolved form", () => {
  const r = loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), { cwd: tmp, cpuCount: 2 });
  assert.equal(r.name, "tiny");
  assert.equal(r.run_dir, path.join(tmp, "runs", "tiny"));
  assert.equal(r.placement, "per_role");
  assert.equal(r.torch_threads, 1); // 2 cores / 3 workers, at least 1
  assert.deepEqual(r.generator.timesteps, [999, 499]);
  assert.equal(r.generator.conditioning_timestep, 999);
  assert.deepEqual(r.optim.betas, [0.9, 0.999]);
  assert.equal(r.heartbeat.timeout_s, 30);
  assert.equal(r.gan.diffusion_gan, true);
});

test("tiny.yaml resolves to exactly the fixture the Python side parses (python-worker/tests/fixtures)", () => {
  const fixture = JSON.parse(readFileSync(path.join(projectRoot, "python-worker", "tests", "fixtures", "tiny.resolved.json"), "utf8"));
  const r = loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), { cwd: "/abs", cpuCount: 2 });
  assert.deepEqual(JSON.parse(JSON.stringify(r)), fixture);
});

test("an empty recipe gets every default, named after its file", () => {
  const r = loadRecipe(writeRecipe("empty.yaml", ""), { cwd: tmp, cpuCount: 4 });
  assert.equal(r.name, "empty");
  assert.equal(r.generator.steps, 1);
  assert.deepEqual(r.generator.timesteps, [999]);
  assert.equal(r.torch_threads, Math.floor(4 / 3));
  const c = loadRecipe(writeRecipe("c.yaml", "placement: colocated\n"), { cwd: tmp, cpuCount: 4 });
  assert.equal(c.torch_threads, 4);
});

test("default timesteps follow c - i*round((c+1)/N)", () => {
  assert.deepEqual(defaultTimesteps(999, 4), [999, 749, 499, 249]);
  assert.deepEqual(defaultTimesteps(999, 2), [999, 499]);
  assert.deepEqual(defaultTimesteps(399, 1), [399]);
  assert.deepEqual(defaultTimesteps(999, 3), [999, 666, 333]);
});

test("malformed recipe corpus: each file gives its expected message, exit code 2", () => {
  const dir = path.join(projectRoot, "test", "fixtures", "bad-recipes");
  const files = readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort();
  assert.ok(files.length >= 25, `corpus has ${files.length} recipes`);
  for (const f of files) {
    const text = readFileSync(path.join(dir, f), "utf8");
    const expect = /^# expect: (.*)$/m.exec(text)?.[1];
    assert.ok(expect, `${f} lacks an "# expect:" line`);
    const lines = issuesOf(() => loadRecipe(path.join(dir, f), { cwd: tmp, cpuCount: 2 }));
    assert.ok(lines.some((l) => l.includes(expect)), `${f}: expected a line containing\n  ${expect}\ngot\n  ${lines.join("\n  ")}`);
    for (const l of lines) {
      assert.ok(!l.includes("\n"), `${f}: message is not one line`);
      assert.ok(l.includes(f), `${f}: message does not name the file: ${l}`);
    }
  }
});

test("all problems are reported at once, each with its line", () => {
  const f = writeRecipe("many.yaml", ["seed: x", "train:", "  steps: 0", "  bogus: 1", "gan:", "  enabled: 3"].join("\n"));
  const lines = issuesOf(() => loadRecipe(f, { cwd: tmp }));
  assert.equal(lines.length, 4, lines.join("\n"));
  assert.ok(lines.some((l) => l.startsWith(`${path.relative(process.cwd(), f)}:1: seed:`)), lines.join("\n"));
  assert.ok(lines.some((l) => l.includes(":3: train.steps:")));
  assert.ok(lines.some((l) => l.includes(":4: train.bogus: unknown key")));
  assert.ok(lines.some((l) => l.includes(":6: gan.enabled:")));
});

test("a missing recipe file is one clear line", () => {
  const lines = issuesOf(() => loadRecipe(path.join(tmp, "nope.yaml"), { cwd: tmp }));
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /nope\.yaml: no such file/);
});

test("--set overrides are validated like the file", () => {
  const f = writeRecipe("base.yaml", "train:\n  steps: 10\n");
  const r = loadRecipe(f, { cwd: tmp, overrides: ["train.steps=3", "placement=colocated", "gan.enabled=false", "optim.betas=[0.5, 0.9]"] });
  assert.equal(r.train.steps, 3);
  assert.equal(r.placement, "colocated");
  assert.equal(r.gan.enabled, false);
  assert.deepEqual(r.optim.betas, [0.5, 0.9]);
  assert.deepEqual(issuesOf(() => loadRecipe(f, { cwd: tmp, overrides: ["train.stepz=3"] })), ['--set: train.stepz: unknown key (did you mean "steps"?)']);
  assert.deepEqual(issuesOf(() => loadRecipe(f, { cwd: tmp, overrides: ["train.steps=-1"] })), ["--set: train.steps: -1 is out of range (must be >= 1)"]);
  assert.match(issuesOf(() => loadRecipe(f, { cwd: tmp, overrides: ["train"] }))[0]!, /expected key\.path=value/);
  assert.match(issuesOf(() => loadRecipe(f, { cwd: tmp, overrides: ["train=3"] }))[0]!, /group of keys/);
  assert.deepEqual(parseOverride("seed=7"), { path: ["seed"], value: 7 });
});

test("the text-to-image recipes carry the paper's settings and need only the teacher, the prompts and the images", () => {
  const dir = path.join(projectRoot, "recipes");
  const sd15 = loadRecipe(path.join(dir, "sd15-1step.yaml"), { cwd: tmp, cpuCount: 2, overrides: fakeTextPipeline(path.join(tmp, "sd15-settings"), "StableDiffusionPipeline") });
  assert.deepEqual([sd15.data.source, sd15.generator.timesteps, sd15.dmd.real_guidance_scale, sd15.generator.lr, sd15.fake_score.lr, sd15.ttur.ratio], ["prompts", [999], 1.75, 1e-5, 1e-5, 10]);
  assert.deepEqual([sd15.gan.enabled, sd15.gan.generator_weight, sd15.gan.discriminator_weight, sd15.optim.warmup_steps, sd15.optim.grad_clip, sd15.optim.weight_decay], [true, 1e-3, 1e-2, 500, 10, 0.01]);
  const sdxl = loadRecipe(path.join(dir, "sdxl-4step.yaml"), { cwd: tmp, cpuCount: 2, overrides: fakeTextPipeline(path.join(tmp, "sdxl-settings"), "StableDiffusionXLPipeline") });
  assert.deepEqual([sdxl.data.source, sdxl.generator.timesteps, sdxl.dmd.real_guidance_scale, sdxl.generator.lr, sdxl.fake_score.lr, sdxl.ttur.ratio], ["prompts", [999, 749, 499, 249], 8, 5e-7, 5e-7, 5]);
  assert.deepEqual([sdxl.gan.generator_weight, sdxl.gan.discriminator_weight], [5e-3, 1e-2]);
  assert.equal(sdxl.generator.lora.rank, null);
  // the LoRA variant: the same settings but the generator's LoRA adapters and learning rate
  const lora = loadRecipe(path.join(dir, "sdxl-4step-lora.yaml"), { cwd: tmp, cpuCount: 2, overrides: fakeTextPipeline(path.join(tmp, "sdxl-lora-settings"), "StableDiffusionXLPipeline") });
  for (const group of ["dmd", "gan", "ttur", "optim", "train", "roles", "diffusion"] as const) assert.deepEqual(lora[group], sdxl[group], group);
  assert.deepEqual({ ...lora.generator, lr: sdxl.generator.lr, lora: sdxl.generator.lora }, sdxl.generator);
  assert.deepEqual([lora.generator.lr, lora.generator.lora.rank, lora.generator.lora.alpha, lora.generator.lora.target_modules?.length], [5e-5, 64, 8, 10]); // the authors' LoRA rank, alpha and lr (issue 23)
  // as shipped (nothing filled in), each names the three paths to fill in, one line each
  const lines = issuesOf(() => loadRecipe(path.join(dir, "sd15-1step.yaml"), { cwd: tmp, cpuCount: 2 }));
  assert.deepEqual(lines.map((l) => / (teacher\.path|data\.prompts\.file|data\.prompts\.images): /.exec(l)?.[1]).sort(), ["data.prompts.file", "data.prompts.images", "teacher.path"]);
});
