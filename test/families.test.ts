// The teacher family registry (python-worker/dmd2_worker/families.json, docs/adapters.md "Adding a family"): the
// TypeScript reader checks the file at load (a malformed registry is one line naming the file and the key), and it
// reads the same families, pipelines, step tensors and plan components as the Python reader.

import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { DmdError } from "../src/errors.js";
import { familyRegistry, loadFamilyRegistry, REGISTRY_FILE } from "../src/families.js";
import { projectPython, projectRoot, scratchDir } from "./helpers.js";

type Json = Record<string, any>;
const original = (): Json => JSON.parse(readFileSync(REGISTRY_FILE, "utf8")) as Json;

function problemOf(edit: (r: Json) => void): string {
  const r = original();
  edit(r);
  const file = path.join(scratchDir("dmd2-families-"), "families.json");
  writeFileSync(file, JSON.stringify(r));
  try {
    loadFamilyRegistry(file);
  } catch (e) {
    assert.ok(e instanceof DmdError && e.code === "FAMILY_REGISTRY", String(e));
    assert.ok(e.message.startsWith(`${file}: `), e.message);
    assert.ok(!e.message.includes("\n"), e.message);
    return e.message.slice(file.length + 2);
  }
  throw new Error("the registry was accepted");
}

test("the shipped registry loads, and its file sits in the Python package", () => {
  const reg = familyRegistry();
  assert.equal(reg.file, path.join(projectRoot, "python-worker", "dmd2_worker", "families.json"));
  assert.ok(reg.families.size >= 1);
  for (const f of reg.families.values()) assert.ok(f.stepTensors.every((t) => t.shape[0] === "B"), f.name);
});

test("a malformed registry is one line naming the file and the key", () => {
  const first = (r: Json) => Object.values(r.families as Json)[0] as Json;
  const name = Object.keys(original().families as Json)[0]!;
  assert.equal(problemOf((r) => { r.version = 99; }), `format: expected format "dmd2-families" version 1`);
  assert.equal(problemOf((r) => { delete first(r).pipeline_classes; }), `families.${name}.pipeline_classes: missing`);
  assert.equal(problemOf((r) => { first(r).conditioning = "audio"; }), `families.${name}.conditioning: "audio" is not one of class_label, text`);
  assert.match(problemOf((r) => { first(r).step_tensors[0].shape = ["B", "nope"]; }), new RegExp(`^families\\.${name}\\.step_tensors\\[0\\]\\.shape: "nope" is neither B`));
  assert.equal(problemOf((r) => { first(r).step_tensors[0].shape = [3]; }), `families.${name}.step_tensors[0].shape: must start with B (step tensors are batch-major)`);
  const names = Object.keys(original().families as Json);
  assert.match(problemOf((r) => { (r.families as Json)[names[1]!].pipeline_classes = first(r).pipeline_classes; }), /pipeline_classes: \S+ is already read by /);
  const file = path.join(scratchDir("dmd2-families-"), "families.json");
  writeFileSync(file, "{ not json");
  assert.throws(() => loadFamilyRegistry(file), (e: Error) => e.message.startsWith(`${file}: (file): cannot read the teacher family registry`));
});

test("the transformer fields are checked: backbone layout and packing, plan buffers, dims plus and value", () => {
  const first = (r: Json) => Object.values(r.families as Json)[0] as Json;
  const name = Object.keys(original().families as Json)[0]!;
  const withDims = Object.entries(original().families as Json).find(([, f]) => Object.keys((f as Json).dims).length > 0)![0];
  const dims = (r: Json) => (r.families as Json)[withDims].dims as Json;
  assert.equal(problemOf((r) => { first(r).backbone.layout = "conv"; }), `families.${name}.backbone.layout: "conv" is not one of unet, transformer`);
  assert.equal(problemOf((r) => { first(r).backbone.packing = 0; }), `families.${name}.backbone.packing: expected a positive whole number, got 0`);
  assert.match(problemOf((r) => { first(r).plan.buffers = [3]; }), new RegExp(`^families\\.${name}\\.plan\\.buffers: expected a list of names`));
  assert.equal(problemOf((r) => { dims(r).seq_len = { value: 0 }; }), `families.${withDims}.dims.seq_len.value: expected a positive whole number, got 0`);
  assert.equal(problemOf((r) => { dims(r).seq_len = { file: "a.json", key: "n", plus: "x" }; }), `families.${withDims}.dims.seq_len.plus: expected a whole number, got "x"`);
});

test("both languages read the same families from the one file", async () => {
  const code = [
    "import json",
    "from dmd2_worker.families import registry",
    "r = registry()",
    "print(json.dumps({f.name: {'pipelines': list(f.pipeline_classes), 'tensors': f.step_tensor_names, 'text': f.is_text,",
    "  'frozen': [list(p) for p in f.plan_frozen], 'export': f.export.pipeline, 'lora': list(f.lora_targets),",
    "  'backbone': [f.backbone_subfolder, f.backbone_class, f.backbone_layout, f.backbone_packing], 'buffers': list(f.plan_buffers),",
    "  'parametrisation': f.parametrisation} for f in r.families.values()}))",
  ].join("\n");
  const py = await execa(projectPython, ["-c", code], { env: { PYTHONPATH: path.join(projectRoot, "python-worker") } });
  const ts = Object.fromEntries([...familyRegistry().families.values()].map((f) => [f.name, {
    pipelines: f.pipelineClasses, tensors: f.stepTensors.map((t) => t.name), text: f.conditioning === "text",
    frozen: f.planFrozen, export: f.export.pipeline, lora: f.loraTargets, backbone: [f.backbone.subfolder, f.backbone.className, f.backbone.layout, f.backbone.packing],
    buffers: f.planBuffers, parametrisation: f.parametrisation,
  }]));
  assert.deepEqual(JSON.parse(py.stdout), ts);
});
