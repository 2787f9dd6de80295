// End to end: `dmd2 export` of a run whose teacher is a UNet2DModel folder (what `dmd2 train-teacher` writes, the
// digits benchmark's kind): a 20-step digits teacher, a 4-step `dmd2 distill` of recipes/digits.yaml, then the export
// loaded by stock diffusers code in a Python child: DiffusionPipeline.from_pretrained gives a DDPMPipeline with an
// LCMScheduler, and the model card's Python block, run as it stands (unet -> scheduler.step at the card's timesteps
// with one torch.Generator), gives `dmd2 sample`'s images for the same seed and classes. A class-conditional UNet2DModel
// has no stock pipeline that takes class labels (DDPMPipeline takes none), hence the documented loop. Then every
// bad-input case is one line and exit 2, and nothing half-written is left. SD pipelines: test/text2image.test.ts.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { loadRecipe } from "../src/recipe/load.js";
import { cliEntry, projectPython, projectRoot, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-export-");
const env = { DMD2_CACHE: path.join(work, "cache"), HF_HUB_OFFLINE: "1", NO_COLOR: "1" };
const teacher = path.join(work, "teacher");
const runDir = path.join(work, "run");

async function dmd2(args: string[]) {
  const r = await execa("node", [cliEntry, ...args], { cwd: work, reject: false, env, timeout: 300_000 });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a Python snippet with the project's interpreter; returns its last stdout line parsed as JSON. */
async function python(code: string, args: string[]): Promise<Record<string, unknown>> {
  const r = await execa(projectPython, ["-c", code, ...args], { reject: false, env: { ...env, PYTHONWARNINGS: "ignore" }, timeout: 120_000 });
  assert.equal(r.exitCode, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as Record<string, unknown>;
}

let distilled: Promise<void> | null = null;
/** A 20-step digits teacher and a 4-step distillation of it (recipes/digits.yaml: [599, 449, 299, 149], EMA kept), once. */
function distill(): Promise<void> {
  distilled ??= (async () => {
    const teacherRecipe = path.join(work, "tiny-teacher.yaml");
    writeFileSync(teacherRecipe, ["name: tiny-teacher", "torch_threads: 1", "data: { source: digits }", "model: { block_out_channels: [8, 16], norm_num_groups: 4 }", "train: { steps: 20, batch_size: 32, warmup_steps: 5, log_every: 10 }", ""].join("\n"));
    const t = await dmd2(["train-teacher", teacherRecipe, "--out", teacher]);
    assert.equal(t.exitCode, 0, t.stderr);
    const sets = [`teacher.path=${teacher}`, `run_dir=${runDir}`, "placement=colocated", "torch_threads=1", "train.steps=4", "train.batch_size=8", "train.log_every=2", "train.checkpoint_every=2", "train.sample_every=4", "sample.num=4", "ttur.ratio=2"];
    const d = await dmd2(["distill", path.join(projectRoot, "recipes", "digits.yaml"), ...sets.flatMap((s) => ["--set", s])]);
    assert.equal(d.exitCode, 0, d.stderr);
  })();
  return distilled;
}

// The model card's Python block, run as it stands (its folder filled in), against dmd2 sample's samples.safetensors
const COMPARE = `
import json, re, sys, torch
from diffusers import DiffusionPipeline, UNet2DModel
from safetensors.torch import load_file
out, sampled, ema_file = sys.argv[1], sys.argv[2], sys.argv[3]
pipe = DiffusionPipeline.from_pretrained(out)
card = open(out + "/README.md").read()
ts = json.loads(re.search(r"timesteps (\\[[0-9, ]+\\])", card).group(1))
code = re.search(r"\`\`\`python\\n(.*?)\`\`\`", card, re.S).group(1).replace("<this folder>", out)
card_vars = {}
exec(code, card_vars)
ours = load_file(sampled + "/samples.safetensors")
want = (ours["samples"].clamp(-1, 1) + 1) / 2
unet = UNet2DModel.from_pretrained(out, subfolder="unet")
ema = {k[len("unet."):]: v for k, v in load_file(ema_file).items()}
same_as_ema = all(torch.equal(v, ema[k]) for k, v in unet.state_dict().items())
print(json.dumps({"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__, "card_timesteps": ts,
                  "diff": float((card_vars["images"] - want).abs().max()), "spread": float(want.std()),
                  "labels": ours["labels"].tolist(), "same_as_ema": same_as_ema}))
`;

test("export of a UNet2DModel-teacher run: a diffusers folder whose model card snippet gives dmd2 sample's images", async () => {
  await distill();
  const ckpt = path.join(runDir, "checkpoints", "step-00000004");
  assert.ok(existsSync(path.join(ckpt, "generator.ema.safetensors")), "recipes/digits.yaml keeps an EMA");
  const sampled = path.join(work, "sampled");
  // what the model card's snippet draws: 16 images, seed 0, classes i mod 10 (sample's default)
  const s = await dmd2(["sample", runDir, "--num", "16", "--seed", "0", "--out", sampled]);
  assert.equal(s.exitCode, 0, s.stderr);

  const out = path.join(work, "exports", "digits-4step");
  const ex = await dmd2(["export", runDir, "--out", out]);
  assert.equal(ex.exitCode, 0, ex.stderr);
  assert.match(ex.stderr, /exported to \S+digits-4step: timesteps \[599, 449, 299, 149\]/);
  assert.deepEqual(readdirSync(path.join(work, "exports")), ["digits-4step"], "no temporary folder left beside --out");
  for (const f of ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "README.md", "dmd2_student.json"]) {
    assert.ok(existsSync(path.join(out, f)), `${f} missing`);
  }
  const student = JSON.parse(readFileSync(path.join(out, "dmd2_student.json"), "utf8"));
  assert.deepEqual([student.timesteps, student.checkpoint, student.ema], [[599, 449, 299, 149], "step-00000004", true]);
  const card = readFileSync(path.join(out, "README.md"), "utf8");
  assert.match(card, /4-step student distilled with dmd2/);
  assert.match(card, /timesteps \[599, 449, 299, 149\]/);
  assert.match(card, /```python\n[\s\S]*scheduler\.step\([\s\S]*```/);
  // the teacher's own folder is untouched: its scheduler stays a DDPMScheduler
  assert.equal(JSON.parse(readFileSync(path.join(teacher, "model_index.json"), "utf8")).scheduler[1], "DDPMScheduler");

  const r = await python(COMPARE, [out, sampled, path.join(ckpt, "generator.ema.safetensors")]);
  assert.equal(r.pipeline, "DDPMPipeline");
  assert.equal(r.scheduler, "LCMScheduler");
  assert.deepEqual(r.card_timesteps, [599, 449, 299, 149]);
  assert.equal(r.same_as_ema, true, "the export's UNet is the EMA weights");
  assert.deepEqual(r.labels, Array.from({ length: 16 }, (_, i) => i % 10));
  assert.ok((r.diff as number) < 1e-5, `max |model card's images - dmd2 sample's| = ${r.diff}`);
  assert.ok((r.spread as number) > 0.05, `images are not blank: std ${r.spread}`);

  // an older checkpoint by step number, into an existing empty folder
  const empty = path.join(work, "exports", "empty");
  mkdirSync(empty);
  const older = await dmd2(["export", runDir, "--out", empty, "--checkpoint", "2", "--json"]);
  assert.equal(older.exitCode, 0, older.stderr);
  const result = JSON.parse(older.stdout.trim().split("\n").pop()!);
  assert.deepEqual(result.timesteps, [599, 449, 299, 149]);
  assert.equal(JSON.parse(readFileSync(path.join(empty, "dmd2_student.json"), "utf8")).checkpoint, "step-00000002");
});

test("export: bad input is one line, exit 2, and leaves no half-written folder", async () => {
  await distill();
  const one = async (args: string[], expected: RegExp | string) => {
    const r = await dmd2(["export", ...args]);
    assert.equal(r.exitCode, 2, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n"); // the error, and for a usage error commander's "(run with --help ...)"
    assert.ok(lines.length === 1 || (lines.length === 2 && lines[1] === "(run with --help for usage)"), r.stderr);
    if (typeof expected === "string") assert.equal(lines[0], `error: ${expected}`);
    else assert.match(lines[0]!, expected);
  };
  const out = path.join(work, "bad-out");
  await one([path.join(work, "nope"), "--out", out], `run folder ${path.join(work, "nope")} does not exist (give the run_dir of a dmd2 distill run, e.g. runs/tiny)`);
  mkdirSync(path.join(work, "fresh-run"));
  writeFileSync(path.join(work, "fresh-run", "recipe.resolved.json"), readFileSync(path.join(runDir, "recipe.resolved.json")));
  await one([path.join(work, "fresh-run"), "--out", out], /^error: \S+fresh-run has no complete checkpoint yet \(run dmd2 distill first/);
  // a run of the built-in teacher (recipes/tiny.yaml): its network is not a diffusers model
  const builtin = path.join(work, "builtin-run");
  mkdirSync(builtin);
  writeFileSync(path.join(builtin, "recipe.resolved.json"), JSON.stringify(loadRecipe(path.join(projectRoot, "recipes", "tiny.yaml"), { cwd: work, overrides: [`run_dir=${builtin}`] })));
  await one([builtin, "--out", out], `${builtin}: its teacher is the built-in network, not a diffusers model; export needs a run whose teacher.source is diffusers (a UNet2DModel or Stable Diffusion folder)`);
  await one([runDir, "--out", out, "--lora"], `--lora: ${runDir} trained the whole network (generator.lora.rank is null); drop --lora for a full export`);
  await one([runDir, "--out", out, "--checkpoint", "7"], `--checkpoint 7: no such complete checkpoint in ${runDir} (available: step-00000002, step-00000004)`);
  await one([runDir], "required option '--out <dir>' not specified");
  const full = path.join(work, "full");
  mkdirSync(full);
  writeFileSync(path.join(full, "keep.txt"), "mine");
  await one([runDir, "--out", full], `--out ${full} exists and is not empty (add --force to replace it, or give another folder)`);
  assert.equal(readFileSync(path.join(full, "keep.txt"), "utf8"), "mine");
  // the teacher folder moved away: the Python side says so, in one line
  renameSync(teacher, teacher + "-moved");
  try {
    await one([runDir, "--out", out], /^error: the run's teacher folder \S+teacher does not exist \(teacher\.path of \S+recipe\.resolved\.json; put the teacher back there\)$/);
  } finally {
    renameSync(teacher + "-moved", teacher);
  }
  assert.equal(existsSync(out), false);
  assert.deepEqual(readdirSync(work).filter((f) => f.includes("partial")), [], "no temporary folder left");
  // --force replaces a non-empty folder
  const forced = await dmd2(["export", runDir, "--out", full, "--force"]);
  assert.equal(forced.exitCode, 0, forced.stderr);
  assert.equal(existsSync(path.join(full, "keep.txt")), false);
  assert.ok(existsSync(path.join(full, "unet", "diffusion_pytorch_model.safetensors")));
});
