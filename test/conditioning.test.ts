// teacher.family and teacher.conditioning: derived from the teacher folder and the data when the recipe is
// resolved (src/recipe/conditioning.ts), so that the step plan reads no file.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { loadRecipe } from "../src/recipe/load.js";
import { planStep } from "../src/schedule/stepPlan.js";
import { fakeTeacher, fakeTextPipeline, issuesOf, projectRoot, scratchDir } from "./helpers.js";

const tinyFile = path.join(projectRoot, "recipes", "tiny.yaml");
const load = (overrides: string[]) => loadRecipe(tinyFile, { cwd: "/tmp", cpuCount: 2, overrides });

test("the resolved recipe names the teacher's family: builtin, unet2d, or the text family", () => {
  const dir = scratchDir("dmd2-family-");
  mkdirSync(path.join(dir, "classes", "zero"), { recursive: true });
  const unet = fakeTeacher(path.join(dir, "unet"), {});
  assert.equal(load([]).teacher.family, "builtin");
  assert.equal(load(["data.source=folder", `data.folder.path=${path.join(dir, "classes")}`, "teacher.source=diffusers", `teacher.path=${unet}`]).teacher.family, "unet2d");
  for (const [family, cls] of [["sd15", "StableDiffusionPipeline"], ["sdxl", "StableDiffusionXLPipeline"]] as const) {
    const r = load(["data.source=prompts", "teacher.source=diffusers", ...fakeTextPipeline(path.join(dir, family), cls)]);
    assert.equal(r.teacher.family, family);
    assert.deepEqual(planStep(0, r)[0]![0]!.outputs.slice(0, -3), r.teacher.conditioning, "generate makes the resolved conditioning tensors");
  }
});

test("a resolved recipe given back resolves the same; a written family or conditioning that differs is one line naming the key", () => {
  const r = load([]);
  assert.deepEqual(load(["teacher.family=builtin", "teacher.conditioning=[cond]"]), r);
  assert.deepEqual(issuesOf(() => load(["teacher.family=sdxl"])), ["--set: teacher.family: sdxl differs from the built-in teacher, whose family is builtin: drop the key (dmd2 derives it)"]);
  assert.deepEqual(issuesOf(() => load(["teacher.conditioning=[cond_hidden]"])), ["--set: teacher.conditioning: [cond_hidden] differs from [cond], what the built-in teacher takes with data.source gmm: drop the key (dmd2 derives it)"]);
  assert.match(issuesOf(() => load(["teacher.family=SD 1.5"]))[0]!, /^--set: teacher\.family: "SD 1\.5" is not allowed/);
});

test("the step plan reads the resolved conditioning, not the disk", () => {
  const dir = scratchDir("dmd2-pure-");
  mkdirSync(path.join(dir, "flat"), { recursive: true });
  writeFileSync(path.join(dir, "flat", "0.png"), "");
  const r = load(["data.source=folder", `data.folder.path=${path.join(dir, "flat")}`, "teacher.source=diffusers", `teacher.path=${fakeTeacher(path.join(dir, "unet"), {})}`]);
  assert.deepEqual(r.teacher.conditioning, []);
  mkdirSync(path.join(dir, "flat", "now-a-class")); // the folder changes after the recipe was resolved
  assert.ok(planStep(0, r).flat().every((c) => !c.inputs.includes("cond") && !c.outputs.includes("cond")));
  assert.deepEqual(planStep(0, { ...r, teacher: { ...r.teacher, conditioning: ["cond"] } })[0]![0]!.outputs, ["cond", "x_gen", "t_dmd", "x_t_dmd"]);
});
