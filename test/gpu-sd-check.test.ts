// scripts/gpu-sd-check.sh (the GPU check for SD-sized models, docs/adapters.md) as a dry run on the CPU: the tiny
// test pipelines instead of the published sizes, 2 steps of each SD recipe, per role; every line of the report is
// there and each run reached its last step. 45-60 s on 2 cores.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { projectPython, projectRoot, scratchDir } from "./helpers.js";

test("gpu-sd-check.sh: the CPU dry run builds both pipelines and reports every recipe's steps, memory and losses", async () => {
  const work = path.join(scratchDir("dmd2-gpu-sd-"), "check");
  const r = await execa("bash", [path.join(projectRoot, "scripts", "gpu-sd-check.sh"), "2"], {
    cwd: projectRoot,
    reject: false,
    all: true,
    env: { DMD2_CHECK_DEVICE: "cpu", DMD2_PYTHON: projectPython, DMD2_CHECK_DIR: work },
    timeout: 300_000,
  });
  assert.equal(r.exitCode, 0, r.all);
  const out = r.all ?? "";
  assert.match(out, /^sd15 \(tiny, fp16 on disk\): unet 0\.8M/m, out);
  assert.match(out, /^sdxl \(tiny, fp16 on disk\): unet 0\.8M, text_encoder 0\.0M, text_encoder_2 0\.0M/m, out);
  const runs = ["sd15-1step", "sdxl-4step", "sdxl-4step-lora"].filter((n) => existsSync(path.join(projectRoot, "recipes", `${n}.yaml`)));
  for (const name of runs) {
    // name, batch, median over the steps after warm-up, then the end-of-run checkpoint the script stops on purpose
    assert.match(out, new RegExp(`^${name} +batch 2  median \\d+ ms over steps 2-2 \\[.*\\(end-of-run checkpoint skipped, as intended\\)$`, "m"), out);
    const rows = readFileSync(path.join(work, "runs", name, "metrics.jsonl"), "utf8").trim().split("\n");
    assert.equal(rows.length, 2, name);
    const resolved = JSON.parse(readFileSync(path.join(work, "runs", name, "recipe.resolved.json"), "utf8"));
    assert.equal(resolved.precision, "bf16");
    assert.equal(resolved.placement, "per_role");
    assert.equal(resolved.teacher.path, path.join(work, name.startsWith("sd15") ? "sd15-tiny" : "sdxl-tiny"));
    assert.ok(!existsSync(path.join(work, "runs", name, "checkpoints", "step-00000002")), `${name}: no checkpoint`);
  }
  assert.equal(out.match(/peak CUDA MiB: - \(no CUDA\)  \| loss_dmd \S+ loss_fake \S+ loss_gan_d \S+ loss_gan_g \S+$/gm)?.length, runs.length, out);
  assert.doesNotMatch(out, /FAILED/);
  assert.match(out, /^== done in \d+ s$/m);
});
