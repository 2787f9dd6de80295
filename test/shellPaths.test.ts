// Paths as a shell user expects (docs/recipe.md "Paths"): --set paths relative to the current directory, `~`
// expanded, a Hub id in teacher.path read from the local Hugging Face cache (its real layout, faked here with a
// folder), otherwise one line saying how to download it; and `dmd2 plan` with no recipe from any folder.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { RecipeError } from "../src/errors.js";
import { loadRecipe } from "../src/recipe/load.js";
import { cliEntry, fakeTeacher, projectRoot, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-paths-");
const digits = path.join(projectRoot, "recipes", "digits.yaml"); // teacher.source: diffusers
const teacher = fakeTeacher(path.join(work, "teacher"), {});

test("--set paths are relative to the current directory; ~ is expanded", () => {
  const r = loadRecipe(digits, { overrides: ["teacher.path=teacher", "run_dir=out/run"], cwd: work });
  assert.equal(r.teacher.path, teacher);
  assert.equal(r.run_dir, path.join(work, "out", "run"));
  // with process.cwd() too (what the CLI passes)
  const before = process.cwd();
  process.chdir(work);
  try {
    assert.equal(loadRecipe(digits, { overrides: ["teacher.path=./teacher"] }).teacher.path, teacher);
  } finally {
    process.chdir(before);
  }
  const home = process.env.HOME;
  process.env.HOME = work;
  try {
    assert.equal(loadRecipe(digits, { overrides: ["teacher.path=~/teacher"] }).teacher.path, teacher);
    const inFile = path.join(work, "home-recipe.yaml");
    writeFileSync(inFile, `teacher:\n  source: diffusers\n  path: ~/teacher\ndata:\n  source: gmm\n`);
    assert.equal(loadRecipe(inFile, { cwd: "/" }).teacher.path, teacher);
  } finally {
    process.env.HOME = home;
  }
});

function fakeHubCache(root: string, id: string, commit: string): string {
  const repo = path.join(root, `models--${id.replace("/", "--")}`);
  mkdirSync(path.join(repo, "refs"), { recursive: true });
  mkdirSync(path.join(repo, "blobs"), { recursive: true });
  writeFileSync(path.join(repo, "refs", "main"), commit);
  return fakeTeacher(path.join(repo, "snapshots", commit), {});
}

test("teacher.path as a Hub id: the cached snapshot (HF_HUB_CACHE, HF_HOME); not cached: how to download it", () => {
  const snapshot = fakeHubCache(path.join(work, "hub-cache"), "some-org/tiny-ddpm", "0123456789abcdef0123456789abcdef01234567");
  const viaHubCache = loadRecipe(digits, { overrides: ["teacher.path=some-org/tiny-ddpm"], cwd: work, env: { HF_HUB_CACHE: path.join(work, "hub-cache") } });
  assert.equal(viaHubCache.teacher.path, snapshot);
  const home = path.join(work, "hf-home");
  const snap2 = fakeHubCache(path.join(home, "hub"), "some-org/tiny-ddpm", "fedcba");
  assert.equal(loadRecipe(digits, { overrides: ["teacher.path=some-org/tiny-ddpm"], cwd: work, env: { HF_HOME: home } }).teacher.path, snap2);

  const err = (() => {
    try {
      loadRecipe(digits, { overrides: ["teacher.path=other-org/not-there"], cwd: work, env: { HF_HUB_CACHE: path.join(work, "hub-cache") } });
    } catch (e) {
      return e;
    }
    return null;
  })();
  assert.ok(err instanceof RecipeError);
  assert.equal(err.issues.length, 1);
  assert.equal(err.issues[0]!.path, "teacher.path");
  assert.equal(
    err.issues[0]!.message,
    `"other-org/not-there" is neither a folder nor a model in the Hugging Face cache (${path.join(work, "hub-cache")}); dmd2 downloads nothing: run huggingface-cli download other-org/not-there --local-dir teachers/not-there and set teacher.path: teachers/not-there (or download it into the cache, without --local-dir)`,
  );
  // an existing folder of that name wins over the cache
  const local = fakeTeacher(path.join(work, "some-org", "tiny-ddpm"), {});
  assert.equal(loadRecipe(digits, { overrides: ["teacher.path=some-org/tiny-ddpm"], cwd: work, env: { HF_HUB_CACHE: path.join(work, "hub-cache") } }).teacher.path, local);
});

test("dmd2 plan with no recipe works outside the project folder (the project's recipes/tiny.yaml)", async () => {
  const r = await execa("node", [cliEntry, "plan", "--json"], { cwd: work, reject: false, env: { NO_COLOR: "1", DMD2_CACHE: work } });
  assert.equal(r.exitCode, 0, r.stderr);
  const plan = JSON.parse(r.stdout) as { recipe: { file: string; name: string } };
  assert.equal(plan.recipe.file, path.join(projectRoot, "recipes", "tiny.yaml"));
  assert.equal(plan.recipe.name, "tiny");
});
